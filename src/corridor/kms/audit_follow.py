"""Following a KME's audit trail as it grows: each new entry verified, the tail kept.

This module owns :class:`AuditFollower`, what the operator's view of a running KME reads
(``GET /operator/v1/audit`` and the dashboard's audit panel). It continues the chain
check of :func:`corridor.kms.audit.verify_audit_log` incrementally: the KME seeds it with
every entry its start-up verification saw (:meth:`AuditFollower.seed`), then
:meth:`AuditFollower.poll` reads only the complete lines appended since, checking each
line's canonical form, MAC, ``seq`` and ``prev`` exactly as the full verification does.
The first failure latches: the follower reports where and why the chain broke and stops
advancing (a chain broken once stays broken until an operator looks at it). A file
that shrinks below what was verified is a break too (entries removed from the end).

The follower keeps the last ``keep`` verified entries in memory for the tail. Audit
entries hold no key material (the audit log refuses it when writing), so the tail is
public to an operator. The audit key derived from the KME's key-encryption key lives
only inside the follower and is never shown.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from corridor.kms.audit import (
    GENESIS_MAC,
    _entry_mac,
    _parse_entry,
    _serialize,
    derive_audit_key,
)

#: Entries the follower keeps for the tail.
DEFAULT_KEEP_ENTRIES = 5000
#: Most bytes one :meth:`AuditFollower.poll` reads (the rest waits for the next poll).
POLL_MAX_BYTES = 8 * 1024 * 1024


class AuditFollower:
    """Verifies a growing audit log entry by entry and keeps its tail (module docstring)."""

    def __init__(self, path: str | os.PathLike[str], kek: bytes, *,
                 keep: int = DEFAULT_KEEP_ENTRIES) -> None:
        self.path = Path(path)
        self._audit_key = derive_audit_key(kek)
        self._lock = threading.Lock()
        self._tail: deque[dict[str, Any]] = deque(maxlen=keep)
        self._offset = 0
        self._expected = 1
        self._prev = GENESIS_MAC
        self.broken_at_seq: int | None = None
        self.reason: str | None = None

    def __repr__(self) -> str:
        return f"AuditFollower(path={str(self.path)!r}, verified_seq={self.verified_seq})"

    @property
    def verified_seq(self) -> int:
        """The ``seq`` of the last entry verified (0 before the first)."""
        return self._expected - 1

    @property
    def ok(self) -> bool:
        """True while every entry read so far verifies."""
        return self.broken_at_seq is None

    def seed(self, entry: dict[str, Any]) -> None:
        """Take an entry that :func:`~corridor.kms.audit.verify_audit_log` has just
        verified, in order (the KME's start-up check), without reading it again."""
        with self._lock:
            if self.broken_at_seq is not None or entry.get("seq") != self._expected:
                return
            self._offset += len(_serialize(entry))
            self._accept(entry)

    def _accept(self, entry: dict[str, Any]) -> None:
        self._prev = str(entry["mac"])
        self._expected += 1
        self._tail.append(entry)

    def _break(self, reason: str) -> None:
        self.broken_at_seq, self.reason = self._expected, reason

    def poll(self) -> int:
        """Read and verify what was appended since the last call; returns how many
        entries verified now."""
        with self._lock:
            if self.broken_at_seq is not None:
                return 0
            try:
                with self.path.open("rb") as stream:
                    size = os.fstat(stream.fileno()).st_size
                    if size < self._offset:
                        self._break(f"the log shrank to {size} bytes below the {self._offset} "
                                    "already verified: entries were removed from the end")
                        return 0
                    stream.seek(self._offset)
                    data = stream.read(POLL_MAX_BYTES)
            except FileNotFoundError:
                self._break("the audit log file is gone")
                return 0
            except OSError as exc:
                self.reason = f"cannot read the audit log now: {exc.strerror or exc}"
                return 0
            if self.reason is not None and self.broken_at_seq is None:
                self.reason = None  # a read error that went away is not a break
            return self._verify(data)

    def _verify(self, data: bytes) -> int:
        count = 0
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break  # an incomplete last line: the writer is mid-append
            line = data[start:end + 1]
            entry = _parse_entry(line)
            if entry is None or _serialize(entry) != line:
                self._break("not a well-formed audit entry in canonical form (edited or "
                            "corrupted)")
                break
            if not hmac.compare_digest(_entry_mac(self._audit_key, entry).encode(),
                                       str(entry["mac"]).encode()):
                self._break("MAC does not verify: the entry was edited")
                break
            if entry["seq"] != self._expected:
                self._break(f"found seq {entry['seq']} where {self._expected} was expected")
                break
            if not hmac.compare_digest(str(entry["prev"]).encode(), self._prev.encode()):
                self._break("prev does not match the previous entry's mac: the chain was "
                            "spliced")
                break
            self._accept(entry)
            self._offset += len(line)
            count += 1
            start = end + 1
        return count

    def status(self) -> dict[str, Any]:
        """The chain's state: ``ok``, ``verified_seq``, and where and why it broke."""
        with self._lock:
            return {"ok": self.broken_at_seq is None, "verified_seq": self._expected - 1,
                    "broken_at_seq": self.broken_at_seq, "reason": self.reason}

    def tail(self, *, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` verified entries with ``seq > after_seq``, oldest first; with
        ``after_seq = 0`` the last ``limit`` entries."""
        with self._lock:
            if after_seq <= 0:
                return list(self._tail)[-limit:] if limit > 0 else []
            out = []
            for entry in self._tail:
                if entry["seq"] > after_seq:
                    out.append(entry)
                    if len(out) >= limit:
                        break
            return out


__all__ = ["DEFAULT_KEEP_ENTRIES", "AuditFollower"]
