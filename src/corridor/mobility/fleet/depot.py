"""The depot gateway: hybrid sessions with the back end, commands on to its vehicles.

This module owns the depot's side of both legs:

- **Back end leg.** The depot is the *responder* SAE of a
  :mod:`corridor.hybrid.session` handshake per back-end channel, run over MQTT
  (:class:`~corridor.mobility.fleet.transport.MqttByteTransport`): it fetches the QKD key
  by ID from its own KME (ETSI GS QKD 014 ``dec_keys``), the back end's X-Wing key is
  encapsulated to, and CatKDF combines both under the pair's hybrid policy. It keeps the
  current and the previous generation's key of each channel (commands in flight during a
  re-key still open).
- **Commands.** Each ``FB01`` envelope is opened with the session's b2d key (``tampered``,
  ``unknown_session``), checked by its :class:`~corridor.mobility.fleet.guard.CommandGuard`
  (signature, policy, replay, order, expiry: a refused command never reaches a vehicle,
  and the back end gets an ``FN01`` notice naming the reason), then re-sealed for the
  vehicle with one ML-KEM-768 encapsulation (``FV01``) and published on its topic.
- **Acknowledgements.** A vehicle's ``FW01`` is opened with the ack key kept for that
  command, its signature checked against the vehicle's registered key, and forwarded
  (``FB01`` d2b) to every live channel of the back-end SAE that sent the command, so a
  ``corridor fleet watch`` sees the acks of a ``corridor fleet send``.

The depot reads commands in plaintext (it is inside the enclave); it cannot forge one,
because vehicles check the sender's signatures.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corridor.hybrid.policy import DecisionRecorder, Policy
from corridor.hybrid.qkd import QkdKeySource
from corridor.hybrid.session import Responder, SessionKey
from corridor.kms.interface import EventSink
from corridor.mobility.fleet.commands import now_ms
from corridor.mobility.fleet.errors import (
    BAD_SIGNATURE,
    MISADDRESSED,
    REPLAYED,
    UNKNOWN_SENDER,
    UNKNOWN_SESSION,
    FleetRefusal,
)
from corridor.mobility.fleet.guard import CommandGuard
from corridor.mobility.fleet.keys import FleetDirectory
from corridor.mobility.fleet.policy import FleetPolicy
from corridor.mobility.fleet.sealing import (
    backend_leg_key,
    encapsulate,
    new_nonce,
    open_sealed,
    seal,
    vehicle_leg_keys,
    wipe,
)
from corridor.mobility.fleet.signing import CONTEXT_ACK
from corridor.mobility.fleet.transport import (
    TOPIC_ROOT,
    MqttByteTransport,
    MqttLink,
    ack_topic,
    handshake_topics,
    vehicle_command_topic,
)
from corridor.mobility.fleet.wire import (
    DIRECTION_TO_BACKEND,
    DIRECTION_TO_DEPOT,
    MAGIC_SIGNED_ACK,
    Ack,
    AckEnvelope,
    BackendEnvelope,
    DepotNotice,
    Signed,
    VehicleEnvelope,
)

MAX_CHANNELS = 64
"""Back-end channels kept at once; the oldest is closed beyond this."""
SESSION_WAIT_S = 2.0
"""How long a command under a session not yet confirmed waits for its confirmation."""
ACK_GRACE_MS = 60_000
"""How long after a command expires its ack key is kept for a late acknowledgement."""


@dataclass
class _Channel:
    name: str
    transport: MqttByteTransport
    thread: threading.Thread | None = None
    backend_sae_id: str | None = None
    keys: dict[tuple[bytes, int], SessionKey] = field(default_factory=dict)
    latest: tuple[bytes, int] | None = None


@dataclass
class _Pending:
    command_id: bytes
    vehicle_id: str
    backend_sae_id: str
    ack_key: bytearray = field(repr=False)
    keep_until_ms: int


class DepotGateway:
    """One depot (module docstring).

    Args:
        depot_id: the depot's fleet ID (topics, command addressing).
        depot_sae_id: its SAE ID in the corridor (the responder of the hybrid sessions).
        backend_policies: hybrid policy per back-end SAE it accepts sessions from.
        qkd: its QKD key source (its KME, ``dec_keys``); None: no QKD input.
        directory, policy: public keys and role policy.
        link: its MQTT client.
        events: where command decisions are audited; ``recorder`` records hybrid decisions.
        state_path: where its last sequence numbers survive a restart.
    """

    def __init__(self, depot_id: str, depot_sae_id: str,
                 backend_policies: Mapping[str, Policy | str], qkd: QkdKeySource | None,
                 directory: FleetDirectory, policy: FleetPolicy, link: MqttLink, *,
                 events: EventSink | None = None, recorder: DecisionRecorder | None = None,
                 clock_ms: Callable[[], int] = now_ms, state_path: Path | None = None) -> None:
        missing = sorted(v for v, d in policy.vehicles.items()
                         if d == depot_id and v not in directory.vehicles)
        if missing:
            from corridor.errors import ParameterError

            raise ParameterError("policy vehicles", missing, f"vehicles of depot {depot_id} "
                                 "with public keys in public.json")
        self.depot_id = depot_id
        self.depot_sae_id = depot_sae_id
        self.directory = directory
        self.link = link
        self.clock_ms = clock_ms
        self.guard = CommandGuard(f"depot:{depot_id}", directory, policy, events=events,
                                  clock_ms=clock_ms, state_path=state_path)
        self.responder = Responder(depot_sae_id, backend_policies, qkd=qkd, recorder=recorder)
        self._lock = threading.Lock()
        self._keys_changed = threading.Condition(self._lock)
        self._channels: collections.OrderedDict[str, _Channel] = collections.OrderedDict()
        self._sessions: dict[bytes, str] = {}
        self._pending: dict[bytes, _Pending] = {}
        self.forwarded = 0
        self.acks_forwarded = 0
        self.acks_refused: collections.Counter[str] = collections.Counter()
        self.handshakes = 0

    def __repr__(self) -> str:
        return f"DepotGateway({self.depot_id!r}, sae={self.depot_sae_id!r})"

    def start(self) -> None:
        base = f"{TOPIC_ROOT}/{self.depot_id}"
        self.link.subscribe(f"{base}/hs/+/up", self._on_handshake)
        self.link.subscribe(f"{base}/cmd/+", self._on_command)
        self.link.subscribe(f"{base}/vehicle/+/ack", self._on_ack)

    # -- back end leg: handshakes --------------------------------------------------

    def _on_handshake(self, topic: str, payload: bytes) -> None:
        name = topic.split("/")[-2]
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._open_channel(name)
        channel.transport.deliver(topic, payload)

    def _open_channel(self, name: str) -> _Channel:
        _, down = handshake_topics(self.depot_id, name)
        # No timeout: a channel waits for re-keys as long as it lives (MAX_CHANNELS bounds them).
        channel = _Channel(name, MqttByteTransport(self.link, down, timeout_s=None))
        thread = threading.Thread(target=self._serve, args=(channel,), daemon=True,
                                  name=f"depot-{self.depot_id}-{name}")
        channel.thread = thread
        self._channels[name] = channel
        while len(self._channels) > MAX_CHANNELS:
            _, oldest = self._channels.popitem(last=False)
            self._drop(oldest)
        thread.start()
        return channel

    def _serve(self, channel: _Channel) -> None:
        self.responder.serve(channel.transport, lambda key: self._on_key(channel, key))
        # The back end went quiet (or the channel was dropped): forget its keys.
        with self._lock:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]
            self._drop(channel)

    def _drop(self, channel: _Channel) -> None:
        channel.transport.close()
        for (session_id, _), key in list(channel.keys.items()):
            key.wipe()
            self._sessions.pop(session_id, None)
        channel.keys.clear()

    def _on_key(self, channel: _Channel, key: SessionKey) -> None:
        session_id = bytes.fromhex(key.record.session_id)
        with self._lock:
            channel.backend_sae_id = key.record.initiator_sae_id
            channel.keys[(session_id, key.record.generation)] = key
            channel.latest = (session_id, key.record.generation)
            for slot in sorted(channel.keys)[:-2]:  # keep this and the previous generation
                channel.keys.pop(slot).wipe()
            self._sessions[session_id] = channel.name
            self.handshakes += 1
            self._keys_changed.notify_all()

    def _session_key(self, session_id: bytes, generation: int) -> tuple[_Channel, SessionKey]:
        # The back end sends its first command right after its CONFIRM; the responder
        # thread may still be checking that CONFIRM: give it a moment before refusing.
        deadline = time.monotonic() + SESSION_WAIT_S
        with self._lock:
            while True:
                name = self._sessions.get(session_id)
                channel = self._channels.get(name) if name else None
                key = channel.keys.get((session_id, generation)) if channel else None
                remaining = deadline - time.monotonic()
                if key is not None or remaining <= 0:
                    break
                self._keys_changed.wait(remaining)
        if channel is None or key is None or key.wiped:
            raise FleetRefusal(UNKNOWN_SESSION, f"no hybrid session {session_id.hex()} "
                               f"generation {generation}")
        return channel, key

    # -- commands ------------------------------------------------------------------

    def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            envelope = BackendEnvelope.decode(payload)
            if envelope.direction != DIRECTION_TO_DEPOT or \
                    envelope.depot_sae_id != self.depot_sae_id:
                raise FleetRefusal(MISADDRESSED, f"envelope {envelope.direction} for SAE "
                                   f"{envelope.depot_sae_id}")
            channel, session_key = self._session_key(envelope.session_id, envelope.generation)
            if envelope.backend_sae_id != channel.backend_sae_id:
                raise FleetRefusal(MISADDRESSED, f"envelope names back end "
                                   f"{envelope.backend_sae_id}, session is "
                                   f"{channel.backend_sae_id}")
            leg_key = backend_leg_key(session_key.key, DIRECTION_TO_DEPOT,
                                      envelope.session_id, envelope.generation)
            try:
                signed = open_sealed(leg_key, envelope.nonce, envelope.ciphertext,
                                     envelope.header(), "command from the back end")
            finally:
                wipe(leg_key)
        except FleetRefusal as exc:
            self.guard.refuse(exc.reason, exc.detail)
            return
        try:
            command = self.guard.check(signed, depot_id=self.depot_id)
            vehicle = self.directory.vehicles.get(command.vehicle_id)
            if vehicle is None:
                raise self.guard.refuse(MISADDRESSED, f"{command.label}: vehicle has no "
                                        "registered keys", command)
        except FleetRefusal as exc:
            cid = getattr(exc.command, "command_id", None)
            if cid is not None:
                self._notify(channel, DepotNotice(cid, exc.reason, exc.detail[:1024]).encode())
            return
        shared, kem_ct = encapsulate(vehicle.kem_public)
        command_key, ack_key, ack_handle = vehicle_leg_keys(shared, self.depot_id,
                                                            command.vehicle_id, kem_ct)
        del shared
        nonce = new_nonce()
        header = VehicleEnvelope(self.depot_id, command.vehicle_id, kem_ct, nonce, b"").header()
        out = VehicleEnvelope(self.depot_id, command.vehicle_id, kem_ct, nonce,
                              seal(command_key, nonce, signed, header)).encode()
        wipe(command_key)
        with self._lock:
            self._prune_pending()
            self._pending[ack_handle] = _Pending(
                command.command_id, command.vehicle_id, str(channel.backend_sae_id), ack_key,
                command.expires_at_ms + ACK_GRACE_MS)
            self.forwarded += 1
        self.link.publish(vehicle_command_topic(self.depot_id, command.vehicle_id), out)

    def _prune_pending(self) -> None:
        now = self.clock_ms()
        for cid in [c for c, p in self._pending.items() if p.keep_until_ms < now]:
            wipe(self._pending.pop(cid).ack_key)

    # -- acknowledgements -----------------------------------------------------------

    def _refuse_ack(self, reason: str, detail: str, **fields: Any) -> None:
        with self._lock:
            self.acks_refused[reason] += 1
        self.guard.events.emit("fleet_ack_refused", party=self.guard.party, reason=reason,
                               detail=detail, **fields)

    def _on_ack(self, topic: str, payload: bytes) -> None:
        try:
            envelope = AckEnvelope.decode(payload)
        except FleetRefusal as exc:
            self._refuse_ack(exc.reason, exc.detail)
            return
        with self._lock:
            pending = self._pending.get(envelope.ack_handle)
        if pending is None:
            self._refuse_ack(REPLAYED, f"ack from {envelope.vehicle_id} for no pending command "
                             "(acknowledged already, or never forwarded)")
            return
        cid = pending.command_id.hex()
        if envelope.vehicle_id != pending.vehicle_id or envelope.depot_id != self.depot_id:
            self._refuse_ack(MISADDRESSED, f"ack for command {cid} from vehicle "
                             f"{envelope.vehicle_id}", command_id=cid)
            return
        try:
            plain = open_sealed(pending.ack_key, envelope.nonce, envelope.ciphertext,
                                envelope.header(), f"ack from {envelope.vehicle_id}")
            signed = Signed.decode(plain, MAGIC_SIGNED_ACK, "signed ack")
            ack = Ack.decode(signed.body)
            vehicle = self.directory.vehicles.get(ack.vehicle_id)
            if vehicle is None:
                raise FleetRefusal(UNKNOWN_SENDER, f"ack from unregistered vehicle "
                                   f"{ack.vehicle_id}")
            vehicle.verify_key.verify(signed, CONTEXT_ACK, f"vehicle {ack.vehicle_id}")
            if ack.vehicle_id != pending.vehicle_id or ack.command_id != pending.command_id:
                raise FleetRefusal(BAD_SIGNATURE, f"ack for command {cid} is signed for "
                                   "another command or vehicle")
        except FleetRefusal as exc:
            self._refuse_ack(exc.reason, exc.detail, command_id=cid)
            return
        with self._lock:
            done = self._pending.pop(envelope.ack_handle, None)
            channels = [c for c in self._channels.values()
                        if c.backend_sae_id == pending.backend_sae_id]
        if done is None:  # a duplicate delivered concurrently (QoS 1)
            return
        wipe(done.ack_key)
        self.guard.events.emit("fleet_ack_forwarded", party=self.guard.party, command_id=cid,
                               vehicle_id=ack.vehicle_id, status=ack.status,
                               reason=ack.reason or None)
        for channel in channels:
            self._notify(channel, plain)
        with self._lock:
            self.acks_forwarded += 1

    def _notify(self, channel: _Channel, payload: bytes) -> None:
        """Seal ``payload`` (a signed ack or a depot notice) to one back-end channel."""
        with self._lock:
            slot = channel.latest
            key = channel.keys.get(slot) if slot else None
            backend = channel.backend_sae_id
        if key is None or slot is None or backend is None or key.wiped:
            return
        session_id, generation = slot
        try:
            leg_key = backend_leg_key(key.key, DIRECTION_TO_BACKEND, session_id, generation)
        except Exception:  # the key was wiped by a concurrent re-key: the ack is lost
            return
        nonce = new_nonce()
        envelope = BackendEnvelope(DIRECTION_TO_BACKEND, backend, self.depot_sae_id,
                                   session_id, generation, nonce, b"")
        sealed = seal(leg_key, nonce, payload, envelope.header())
        wipe(leg_key)
        self.link.publish(ack_topic(self.depot_id, channel.name),
                          BackendEnvelope(DIRECTION_TO_BACKEND, backend, self.depot_sae_id,
                                          session_id, generation, nonce, sealed).encode())

    def status(self) -> dict[str, Any]:
        with self._lock:
            channels = [{"channel": c.name, "backend_sae_id": c.backend_sae_id,
                         "generation": c.latest[1] if c.latest else None,
                         "inputs": list(c.keys[c.latest].record.inputs)
                         if c.latest and c.latest in c.keys else []}
                        for c in self._channels.values()]
            out = {"depot_id": self.depot_id, "depot_sae_id": self.depot_sae_id,
                   "handshakes": self.handshakes, "forwarded": self.forwarded,
                   "acks_forwarded": self.acks_forwarded, "pending_acks": len(self._pending),
                   "acks_refused": dict(self.acks_refused), "channels": channels}
        guard = self.guard.status()
        out["accepted"] = guard["accepted"]
        out["refused"] = guard["refused"]
        return out

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            for channel in channels:
                self._drop(channel)
            for pending in self._pending.values():
                wipe(pending.ack_key)
            self._pending.clear()
        for channel in channels:
            if channel.thread is not None:
                channel.thread.join(timeout=5)


__all__ = ["ACK_GRACE_MS", "MAX_CHANNELS", "DepotGateway"]
