"""The checks every command passes before anyone acts on it, and the record of refusals.

This module owns :class:`CommandGuard`, run by the depot gateway (before forwarding) and
again by each vehicle (before executing). In this order, the first failure wins:

1. the signed command parses (``malformed``);
2. its sender has registered keys (``unknown_sender``);
3. both signatures verify, ML-DSA-44 and Ed25519 (``bad_signature``);
4. it is addressed to this depot (and, at a vehicle, to this vehicle) (``misaddressed``);
5. the role policy lets the sender's role send this type to this vehicle (``unauthorised``);
6. its command ID was not accepted before (``replayed``);
7. its sequence number is above the last one accepted for (sender, vehicle)
   (``reordered``: an older command that arrives after a newer one is refused, so a
   delayed "route change" can never undo a later one; gaps are allowed, because a
   command may expire before it is delivered);
8. now is before ``expires_at`` (``expired``), ``issued_at`` is at most ``clock_skew_s``
   ahead (``not_yet_valid``), and the lifetime is at most ``max_lifetime_s``
   (``lifetime_too_long``).

With ``state_path``, the last accepted sequence number of every (sender, vehicle) is
kept in a JSON file (written to a temporary file, fsync'ed, renamed, before the command
is acted on), so a restarted depot or vehicle still refuses an old command: a replay
across a restart is refused as ``reordered`` (the command IDs seen are not kept).

Envelope-level refusals (``tampered``, ``unknown_session``, ``misaddressed`` envelope)
are recorded through :meth:`CommandGuard.refuse`. Every decision is one audit event
(``fleet_command_accepted`` / ``fleet_command_refused`` with the reason and public IDs)
on the party's :class:`~corridor.kms.interface.EventSink` (a hash-chained
:class:`~corridor.kms.audit.AuditLog` in the CLI and in ``corridor up``) and one count.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corridor.kms.interface import EventSink, NullEventSink
from corridor.mobility.fleet.commands import now_ms
from corridor.mobility.fleet.errors import (
    EXPIRED,
    LIFETIME_TOO_LONG,
    MISADDRESSED,
    NOT_YET_VALID,
    REORDERED,
    REPLAYED,
    UNKNOWN_SENDER,
    FleetRefusal,
)
from corridor.mobility.fleet.keys import FleetDirectory
from corridor.mobility.fleet.policy import FleetPolicy
from corridor.mobility.fleet.signing import CONTEXT_COMMAND
from corridor.mobility.fleet.wire import MAGIC_SIGNED_COMMAND, Command, Signed

SEEN_LIMIT = 100_000
"""Command IDs remembered for ``replayed``; expired ones are dropped first."""


class CommandGuard:
    """Accepts or refuses commands for one party (module docstring).

    Args:
        party: who checks (``depot:depot-north``, ``vehicle:v-001``), in every audit entry.
        directory: registered public keys.
        policy: the role policy.
        events: where decisions are audited (None: nowhere).
        clock_ms: wall clock in ms (tests pass a fake one).
        state_path: where the last sequence numbers survive a restart (None: memory).
    """

    def __init__(self, party: str, directory: FleetDirectory, policy: FleetPolicy, *,
                 events: EventSink | None = None,
                 clock_ms: Callable[[], int] = now_ms, state_path: Path | None = None) -> None:
        self.party = party
        self.directory = directory
        self.policy = policy
        self.events: EventSink = events if events is not None else NullEventSink()
        self.clock_ms = clock_ms
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._seen: dict[bytes, int] = {}
        self._last_sequence: dict[tuple[str, str], int] = {}
        self.state_path = state_path
        if state_path is not None and state_path.exists():
            try:
                saved = json.loads(state_path.read_text())
                self._last_sequence = {tuple(name.split("/", 1)): int(value)
                                       for name, value in saved["last_sequence"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                from corridor.errors import ParameterError

                raise ParameterError("state_path", str(state_path), "a readable guard state "
                                     "file (JSON with last_sequence)") from None

    def __repr__(self) -> str:
        return f"CommandGuard({self.party!r}, accepted={self.accepted})"

    def refuse(self, reason: str, detail: str, command: Command | None = None,
               **fields: Any) -> FleetRefusal:
        """Count and audit a refusal; returns the error for the caller to raise."""
        refusal = FleetRefusal(reason, detail)
        refusal.command = command
        ids: dict[str, Any] = {}
        if command is not None:
            ids = {"command_id": command.command_id.hex(), "sender_id": command.sender_id,
                   "vehicle_id": command.vehicle_id, "depot_id": command.depot_id,
                   "sequence": command.sequence, "command_type": command.command_type}
        with self._lock:
            self.refused[reason] += 1
        self.events.emit("fleet_command_refused", party=self.party, reason=reason,
                         detail=detail, **{**ids, **fields})
        return refusal

    def check(self, signed_bytes: bytes, *, depot_id: str,
              vehicle_id: str | None = None) -> Command:
        """The command if it passes every check; else :class:`FleetRefusal`, counted and
        audited."""
        command: Command | None = None
        try:
            signed = Signed.decode(signed_bytes, MAGIC_SIGNED_COMMAND, "signed command")
            command = Command.decode(signed.body)
            key = self.directory.senders.get(command.sender_id)
            if key is None:
                raise FleetRefusal(UNKNOWN_SENDER, f"{command.label}: no registered keys")
            key.verify(signed, CONTEXT_COMMAND, f"sender {command.sender_id}")
            if command.depot_id != depot_id or (vehicle_id is not None
                                                and command.vehicle_id != vehicle_id):
                raise FleetRefusal(MISADDRESSED, f"{command.label}: addressed to depot "
                                   f"{command.depot_id}, received by {self.party}")
            self.policy.authorise(command)
            self._check_fresh(command)
        except FleetRefusal as exc:
            raise self.refuse(exc.reason, exc.detail, command) from None
        with self._lock:
            self.accepted += 1
        self.events.emit("fleet_command_accepted", party=self.party,
                         command_id=command.command_id.hex(), sender_id=command.sender_id,
                         vehicle_id=command.vehicle_id, depot_id=command.depot_id,
                         sequence=command.sequence, command_type=command.command_type)
        return command

    def _check_fresh(self, command: Command) -> None:
        now = self.clock_ms()
        stream = (command.sender_id, command.vehicle_id)
        with self._lock:
            if command.command_id in self._seen:
                raise FleetRefusal(REPLAYED, f"{command.label}: already accepted")
            last = self._last_sequence.get(stream, 0)
            if command.sequence <= last:
                raise FleetRefusal(REORDERED, f"{command.label}: sequence not above the last "
                                   f"accepted, {last}")
            if now >= command.expires_at_ms:
                raise FleetRefusal(EXPIRED, f"{command.label}: expired "
                                   f"{(now - command.expires_at_ms) / 1000:.3f} s ago")
            skew_ms = round(self.policy.clock_skew_s * 1000)
            if command.issued_at_ms > now + skew_ms:
                raise FleetRefusal(NOT_YET_VALID, f"{command.label}: issued "
                                   f"{(command.issued_at_ms - now) / 1000:.3f} s in the future")
            lifetime_ms = command.expires_at_ms - command.issued_at_ms
            if lifetime_ms > self.policy.max_lifetime_s * 1000:
                raise FleetRefusal(LIFETIME_TOO_LONG, f"{command.label}: valid for "
                                   f"{lifetime_ms / 1000:g} s, at most "
                                   f"{self.policy.max_lifetime_s:g} s allowed")
            if len(self._seen) >= SEEN_LIMIT:
                self._seen = {cid: exp for cid, exp in self._seen.items() if exp > now}
                while len(self._seen) >= SEEN_LIMIT:  # all still valid: drop the oldest
                    self._seen.pop(next(iter(self._seen)))
            self._seen[command.command_id] = command.expires_at_ms
            self._last_sequence[stream] = command.sequence
            if self.state_path is not None:
                self._save()

    def _save(self) -> None:
        assert self.state_path is not None
        data = {"last_sequence": {f"{sender}/{vehicle}": seq for (sender, vehicle), seq
                                  in sorted(self._last_sequence.items())}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(temporary, "w") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.state_path)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"party": self.party, "accepted": self.accepted,
                    "refused": dict(self.refused)}


__all__ = ["SEEN_LIMIT", "CommandGuard"]
