"""The fleet back end: signs, numbers and seals commands, and reads the acknowledgements.

This module owns the back end's side. A :class:`FleetBackend` is one *channel* to one
depot: at :meth:`~FleetBackend.start` it runs the hybrid handshake as the *initiator*
SAE over MQTT (fresh QKD key from its KME with ETSI 014 ``enc_keys``, X-Wing, CatKDF,
key confirmation; :mod:`corridor.hybrid.session`), then re-keys by
:class:`~corridor.hybrid.rotation.RekeyLimits` (a fresh QKD key and KEM each time).
:meth:`~FleetBackend.send` numbers a command (:class:`SequenceStore`: per sender and
vehicle, strictly increasing, persisted when given a file so that separate ``corridor
fleet send`` processes never reuse a number), time-limits it, signs it with the sender's
ML-DSA-44 + Ed25519 key and seals it under the session's b2d key. Acknowledgements come
back sealed under the d2b key; the back end checks the vehicle's signatures itself (the
depot cannot forge an ack) and hands them out as :class:`AckRecord` s.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corridor.hybrid.policy import DecisionRecorder, Policy
from corridor.hybrid.qkd import QkdKeySource
from corridor.hybrid.rotation import RekeyLimits, RotatingInitiator
from corridor.hybrid.session import Initiator, SessionRecord
from corridor.hybrid.suites import SUITE_XWING, KemSuite
from corridor.mobility.fleet.commands import DEFAULT_LIFETIME_S, new_command, now_ms
from corridor.mobility.fleet.errors import (
    MISADDRESSED,
    UNKNOWN_SENDER,
    UNKNOWN_SESSION,
    FleetError,
    FleetRefusal,
)
from corridor.mobility.fleet.keys import FleetDirectory, Sender
from corridor.mobility.fleet.sealing import backend_leg_key, new_nonce, open_sealed, seal, wipe
from corridor.mobility.fleet.signing import CONTEXT_ACK, CONTEXT_COMMAND
from corridor.mobility.fleet.transport import (
    MqttByteTransport,
    MqttLink,
    ack_topic,
    command_topic,
    handshake_topics,
)
from corridor.mobility.fleet.wire import (
    DIRECTION_TO_BACKEND,
    DIRECTION_TO_DEPOT,
    MAGIC_DEPOT_NOTICE,
    MAGIC_SIGNED_ACK,
    MAGIC_SIGNED_COMMAND,
    Ack,
    BackendEnvelope,
    Command,
    DepotNotice,
    Signed,
)

ACKS_KEPT = 10_000
"""Acknowledgements kept for :meth:`FleetBackend.wait_ack` and :attr:`FleetBackend.acks`."""
DEFAULT_REKEY = RekeyLimits(after_bytes=16 << 20, after_s=600.0)
"""Re-key the back end-depot session after 16 MiB of commands or 10 minutes."""


class SequenceStore:
    """The last sequence number used per (sender, vehicle); with ``path``, a JSON file
    updated under an exclusive lock, so that concurrent processes never reuse a number."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: dict[str, int] = {}

    def next(self, sender_id: str, vehicle_id: str) -> int:
        name = f"{sender_id}/{vehicle_id}"
        with self._lock:
            if self.path is None:
                self._memory[name] = self._memory.get(name, 0) + 1
                return self._memory[name]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                with os.fdopen(os.dup(fd), "r+") as file:
                    text = file.read()
                    data = json.loads(text) if text.strip() else {}
                    data[name] = int(data.get(name, 0)) + 1
                    file.seek(0)
                    file.truncate()
                    json.dump(data, file, sort_keys=True)
                    file.flush()
                    os.fsync(file.fileno())
                return int(data[name])
            finally:
                os.close(fd)


@dataclass(frozen=True)
class AckRecord:
    """An acknowledgement the back end verified (``source`` ``vehicle``), or a depot's
    refusal notice (``source`` ``depot``)."""

    command_id: str
    source: str
    status: str
    reason: str
    vehicle_id: str | None = None
    sender_id: str | None = None
    sequence: int | None = None
    result: dict[str, str] = field(default_factory=dict)
    acked_at_ms: int | None = None
    received_at_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FleetBackend:
    """One back-end channel to one depot (module docstring).

    Args:
        backend_sae_id, depot_sae_id: the two SAEs of the corridor (initiator, responder).
        depot_id: the depot's fleet ID.
        hybrid_policy: the pair's hybrid policy (``both-required`` by default).
        qkd: the back end's QKD key source (its KME, ``enc_keys``); None: no QKD input.
        directory: public keys (to verify vehicles' acknowledgements).
        link: this channel's MQTT client.
        channel: the channel name (default: random).
    """

    def __init__(self, backend_sae_id: str, depot_sae_id: str, depot_id: str,
                 qkd: QkdKeySource | None, directory: FleetDirectory, link: MqttLink, *,
                 hybrid_policy: Policy | str = "both-required",
                 suite: KemSuite | str = SUITE_XWING, recorder: DecisionRecorder | None = None,
                 rekey: RekeyLimits = DEFAULT_REKEY, sequences: SequenceStore | None = None,
                 channel: str | None = None, handshake_timeout_s: float = 30.0) -> None:
        self.backend_sae_id = backend_sae_id
        self.depot_sae_id = depot_sae_id
        self.depot_id = depot_id
        self.directory = directory
        self.link = link
        self.channel = channel or os.urandom(8).hex()
        self.sequences = sequences or SequenceStore()
        up, self._down = handshake_topics(depot_id, self.channel)
        self.transport = MqttByteTransport(link, up, timeout_s=handshake_timeout_s)
        self.initiator = Initiator(backend_sae_id, depot_sae_id, hybrid_policy, qkd=qkd,
                                   recorder=recorder, suite=suite)
        self.records: list[SessionRecord] = []
        self.session = RotatingInitiator(self.initiator, self.transport, rekey,
                                         on_record=self.records.append)
        # Every ack, for a watcher (the oldest dropped beyond ACKS_KEPT), and the recent
        # ones by command ID for wait_ack (an ack may arrive before anyone waits).
        self.acks: queue.Queue[AckRecord] = queue.Queue(maxsize=ACKS_KEPT)
        self._by_command: collections.OrderedDict[str, AckRecord] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self.sent = 0
        self.acks_received = 0
        self.acks_refused: dict[str, int] = {}
        self.on_ack: Callable[[AckRecord], None] | None = None

    def __repr__(self) -> str:
        return (f"FleetBackend({self.backend_sae_id!r} -> {self.depot_sae_id!r}, "
                f"channel={self.channel!r})")

    def start(self) -> SessionRecord:
        """Subscribe, run the first handshake; the session's record."""
        self.link.subscribe(self._down, self.transport.deliver)
        self.link.subscribe(ack_topic(self.depot_id, self.channel), self._on_ack)
        with self._send_lock:
            return self.session.start().record

    def seal_signed(self, signed: bytes) -> bytes:
        """``signed`` (an ``FS01`` command) in an ``FB01`` envelope under the current
        session key (re-keying first when due)."""
        key = self.session.use(len(signed))
        session_id, generation = self.session.session_id, self.session.generation
        leg_key = backend_leg_key(key.key, DIRECTION_TO_DEPOT, session_id, generation)
        nonce = new_nonce()
        envelope = BackendEnvelope(DIRECTION_TO_DEPOT, self.backend_sae_id, self.depot_sae_id,
                                   session_id, generation, nonce, b"")
        try:
            ciphertext = seal(leg_key, nonce, signed, envelope.header())
        finally:
            wipe(leg_key)
        return BackendEnvelope(DIRECTION_TO_DEPOT, self.backend_sae_id, self.depot_sae_id,
                               session_id, generation, nonce, ciphertext).encode()

    def sign(self, sender: Sender, command: Command) -> bytes:
        return sender.signing_key.sign(command.encode(), CONTEXT_COMMAND).encode(
            MAGIC_SIGNED_COMMAND)

    def publish(self, envelope: bytes, *, wait: bool = True) -> None:
        self.link.publish(command_topic(self.depot_id, self.channel), envelope, wait=wait)

    def send(self, sender: Sender, vehicle_id: str, command_type: str,
             params: Mapping[str, str] | None = None, *,
             lifetime_s: float = DEFAULT_LIFETIME_S, wait: bool = True) -> Command:
        """Number, sign, seal and publish one command; returns it (its ID awaits the ack)."""
        command = new_command(sender_id=sender.sender_id, depot_id=self.depot_id,
                              vehicle_id=vehicle_id,
                              sequence=self.sequences.next(sender.sender_id, vehicle_id),
                              command_type=command_type, params=params, lifetime_s=lifetime_s)
        signed = self.sign(sender, command)
        with self._send_lock:
            envelope = self.seal_signed(signed)
            self.publish(envelope, wait=wait)
            self.sent += 1
        return command

    def wait_ack(self, command_id: bytes | str, timeout_s: float = 10.0) -> AckRecord:
        """The ack (or depot notice) of ``command_id``; :class:`FleetError` on timeout."""
        cid = command_id.hex() if isinstance(command_id, bytes) else command_id
        with self._arrived:
            if not self._arrived.wait_for(lambda: cid in self._by_command, timeout_s):
                raise FleetError(f"no acknowledgement of command {cid} within "
                                 f"{timeout_s:g} s")
            return self._by_command.pop(cid)

    def _refuse(self, reason: str) -> None:
        with self._lock:
            self.acks_refused[reason] = self.acks_refused.get(reason, 0) + 1

    def _on_ack(self, topic: str, payload: bytes) -> None:
        try:
            record = self.open_ack(payload)
        except FleetRefusal as exc:
            self._refuse(exc.reason)
            return
        with self._arrived:
            self.acks_received += 1
            self._by_command[record.command_id] = record
            while len(self._by_command) > ACKS_KEPT:
                self._by_command.popitem(last=False)
            self._arrived.notify_all()
        while True:
            try:
                self.acks.put_nowait(record)
                break
            except queue.Full:  # nobody reads them: keep the newest
                with contextlib.suppress(queue.Empty):
                    self.acks.get_nowait()
        if self.on_ack is not None:
            self.on_ack(record)

    def open_ack(self, payload: bytes) -> AckRecord:
        """Open and verify one ``FB01`` d2b envelope (a signed ack or a depot notice)."""
        envelope = BackendEnvelope.decode(payload)
        if envelope.direction != DIRECTION_TO_BACKEND or \
                envelope.backend_sae_id != self.backend_sae_id or \
                envelope.depot_sae_id != self.depot_sae_id:
            raise FleetRefusal(MISADDRESSED, "ack envelope for another pair of SAEs")
        key = self.session.holder.current
        if key is None or envelope.session_id != self.session.session_id or \
                envelope.generation != self.session.generation:
            raise FleetRefusal(UNKNOWN_SESSION, f"ack under session "
                               f"{envelope.session_id.hex()} generation {envelope.generation}")
        try:
            leg_key = backend_leg_key(key.key, DIRECTION_TO_BACKEND, envelope.session_id,
                                      envelope.generation)
        except Exception:  # wiped by a concurrent re-key
            raise FleetRefusal(UNKNOWN_SESSION, "session key replaced") from None
        try:
            plain = open_sealed(leg_key, envelope.nonce, envelope.ciphertext,
                                envelope.header(), "ack from the depot")
        finally:
            wipe(leg_key)
        if plain[:4] == MAGIC_DEPOT_NOTICE:
            notice = DepotNotice.decode(plain)
            return AckRecord(notice.command_id.hex(), "depot", "refused", notice.reason,
                             result={"detail": notice.detail}, received_at_ms=now_ms())
        signed = Signed.decode(plain, MAGIC_SIGNED_ACK, "signed ack")
        ack = Ack.decode(signed.body)
        vehicle = self.directory.vehicles.get(ack.vehicle_id)
        if vehicle is None:
            raise FleetRefusal(UNKNOWN_SENDER, f"ack from unregistered vehicle {ack.vehicle_id}")
        vehicle.verify_key.verify(signed, CONTEXT_ACK, f"vehicle {ack.vehicle_id}")
        return AckRecord(ack.command_id.hex(), "vehicle", ack.status, ack.reason,
                         ack.vehicle_id, ack.sender_id, ack.sequence, dict(ack.result),
                         ack.acked_at_ms, now_ms())

    def status(self) -> dict[str, Any]:
        last = self.records[-1] if self.records else None
        with self._lock:
            return {"backend_sae_id": self.backend_sae_id, "depot_sae_id": self.depot_sae_id,
                    "channel": self.channel, "sent": self.sent,
                    "acks_received": self.acks_received, "acks_refused": dict(self.acks_refused),
                    "generation": self.session.generation, "rotations": self.session.rotations,
                    "inputs": list(last.inputs) if last else [],
                    "missing": list(last.missing) if last else [],
                    "key_id": last.key_id if last else None}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()


__all__ = ["ACKS_KEPT", "DEFAULT_REKEY", "AckRecord", "FleetBackend", "SequenceStore"]
