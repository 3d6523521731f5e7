"""A simulated vehicle: receives commands from its depot, checks, executes, acknowledges.

This module owns the vehicle's side. For each ``FV01`` envelope on its command topic it:

1. refuses an envelope for another vehicle or depot (``misaddressed``) or one that does
   not parse (``malformed``);
2. decapsulates the ML-KEM-768 ciphertext with its private key, derives the command key
   and the acknowledgement key (:func:`~corridor.mobility.fleet.sealing.vehicle_leg_keys`)
   and opens the AES-256-GCM ciphertext (``tampered`` if the tag fails);
3. runs every check of :class:`~corridor.mobility.fleet.guard.CommandGuard` (signatures,
   addressing, role policy, replay, order, expiry);
4. executes an accepted command on its :class:`~corridor.mobility.fleet.commands.VehicleState`;
5. acknowledges: an ``FA01`` ack (``executed`` with a result, or ``refused`` with the
   reason) signed with its own ML-DSA-44 + Ed25519 key, sealed under the command's
   acknowledgement key in an ``FW01`` envelope to the depot. A command that cannot be
   opened (tampered, misaddressed) gets no ack: there is nothing authentic to answer.

Every decision is audited on the vehicle's event sink and counted (:meth:`status`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corridor.kms.interface import EventSink
from corridor.mobility.fleet.commands import VehicleState, execute, now_ms
from corridor.mobility.fleet.errors import MISADDRESSED, FleetRefusal
from corridor.mobility.fleet.guard import CommandGuard
from corridor.mobility.fleet.keys import FleetDirectory, VehicleIdentity
from corridor.mobility.fleet.policy import FleetPolicy
from corridor.mobility.fleet.sealing import new_nonce, open_sealed, seal, vehicle_leg_keys, wipe
from corridor.mobility.fleet.signing import CONTEXT_ACK
from corridor.mobility.fleet.transport import MqttLink, vehicle_ack_topic, vehicle_command_topic
from corridor.mobility.fleet.wire import (
    ACK_EXECUTED,
    ACK_REFUSED,
    MAGIC_SIGNED_ACK,
    Ack,
    AckEnvelope,
    Command,
    VehicleEnvelope,
)

RECENT = 20


class SimulatedVehicle:
    """One vehicle of a depot (module docstring).

    Args:
        identity: its private keys.
        depot_id: its depot.
        directory, policy: what it checks commands against.
        link: its MQTT client (None: call :meth:`handle` directly, as unit tests do).
        events: where its decisions are audited.
        state_path: where its last sequence numbers survive a restart.
    """

    def __init__(self, identity: VehicleIdentity, depot_id: str, directory: FleetDirectory,
                 policy: FleetPolicy, link: MqttLink | None = None, *,
                 events: EventSink | None = None,
                 clock_ms: Callable[[], int] = now_ms, state_path: Path | None = None) -> None:
        self.identity = identity
        self.vehicle_id = identity.vehicle_id
        self.depot_id = depot_id
        self.link = link
        self.clock_ms = clock_ms
        self.guard = CommandGuard(f"vehicle:{self.vehicle_id}", directory, policy,
                                  events=events, clock_ms=clock_ms, state_path=state_path)
        self.state = VehicleState()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.acks_sent = 0
        self._lock = threading.Lock()
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    def __repr__(self) -> str:
        return f"SimulatedVehicle({self.vehicle_id!r}, depot={self.depot_id!r})"

    def start(self) -> None:
        """Subscribe to this vehicle's command topic."""
        assert self.link is not None
        self.link.subscribe(vehicle_command_topic(self.depot_id, self.vehicle_id),
                            self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        ack = self.handle(payload)
        if ack is not None and self.link is not None:
            self.link.publish(vehicle_ack_topic(self.depot_id, self.vehicle_id), ack)
            with self._lock:
                self.acks_sent += 1

    def _note(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.recent.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def handle(self, payload: bytes) -> bytes | None:
        """Process one ``FV01`` envelope; the ``FW01`` acknowledgement to publish, if any."""
        try:
            envelope = VehicleEnvelope.decode(payload)
        except FleetRefusal as exc:
            self.guard.refuse(exc.reason, exc.detail)
            self._note({"outcome": "refused", "reason": exc.reason})
            return None
        if envelope.vehicle_id != self.vehicle_id or envelope.depot_id != self.depot_id:
            self.guard.refuse(MISADDRESSED, f"envelope for vehicle {envelope.vehicle_id} of "
                              f"depot {envelope.depot_id}")
            self._note({"outcome": "refused", "reason": MISADDRESSED})
            return None
        shared = self.identity.kem_key.decapsulate(envelope.kem_ciphertext)
        command_key, ack_key, ack_handle = vehicle_leg_keys(shared, self.depot_id, self.vehicle_id,
                                                envelope.kem_ciphertext)
        del shared
        try:
            try:
                signed = open_sealed(command_key, envelope.nonce, envelope.ciphertext,
                                     envelope.header(), f"command to {self.vehicle_id}")
            except FleetRefusal as exc:
                self.guard.refuse(exc.reason, exc.detail)
                self._note({"outcome": "refused", "reason": exc.reason})
                return None
            try:
                command = self.guard.check(signed, depot_id=self.depot_id,
                                           vehicle_id=self.vehicle_id)
            except FleetRefusal as exc:
                refused = exc.command if isinstance(exc.command, Command) else None
                self._note({"outcome": "refused", "reason": exc.reason,
                            "command_id": refused.command_id.hex() if refused else None,
                            "command_type": refused.command_type if refused else None,
                            "sender_id": refused.sender_id if refused else None})
                if refused is None:
                    return None
                return self._ack(ack_key, ack_handle, refused, ACK_REFUSED, exc.reason, ())
            result = execute(self.state, command)
            self._note({"outcome": "executed", "command_id": command.command_id.hex(),
                        "command_type": command.command_type, "sender_id": command.sender_id,
                        "sequence": command.sequence})
            return self._ack(ack_key, ack_handle, command, ACK_EXECUTED, "", result)
        finally:
            wipe(command_key)
            wipe(ack_key)

    def _ack(self, ack_key: bytearray, ack_handle: bytes, command: Command, status: str,
             reason: str,
             result: tuple[tuple[str, str], ...]) -> bytes:
        ack = Ack(command.command_id, self.vehicle_id, command.sender_id, command.sequence,
                  status, reason, result, self.clock_ms())
        signed = self.identity.signing_key.sign(ack.encode(), CONTEXT_ACK).encode(
            MAGIC_SIGNED_ACK)
        nonce = new_nonce()
        header = AckEnvelope(self.vehicle_id, self.depot_id, ack_handle, nonce, b"").header()
        return AckEnvelope(self.vehicle_id, self.depot_id, ack_handle, nonce,
                           seal(ack_key, nonce, signed, header)).encode()

    def status(self) -> dict[str, Any]:
        with self._lock:
            recent = list(self.recent)
            acks = self.acks_sent
        return {"vehicle_id": self.vehicle_id, "depot_id": self.depot_id,
                "state": self.state.as_dict(), "acks_sent": acks, **{
                    k: v for k, v in self.guard.status().items() if k != "party"},
                "recent": recent}


__all__ = ["SimulatedVehicle"]
