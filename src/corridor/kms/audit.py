"""The tamper-evident audit trail of a KME: append, verify, export.

This module owns the audit log format and its checks. :class:`AuditLog` is an
:class:`~corridor.kms.interface.EventSink`: every key delivery, reservation, link event
and alarm becomes one line of JSON (JSON Lines)::

    {"seq":1,"time":"2026-11-23T07:47:56.123456Z","event":"keys_delivered",
     "fields":{"kme_id":"kme-a","count":1,...},"prev":"000...0","mac":"9f2c..."}

Chain: ``mac`` is HMAC-SHA256, under the *audit key*, of the canonical JSON (sorted
keys, no spaces, ASCII) of the entry without ``mac``; ``prev`` is the previous entry's
``mac`` (64 zeros for the first), and ``seq`` counts from 1 without gaps. So an edited
entry fails its MAC, and a deleted, inserted, duplicated or reordered entry breaks
``seq`` or ``prev``. The audit key is HKDF-SHA256 of the KME's key-encryption key
(info ``"corridor audit v1"``, no salt, 32 bytes): whoever can edit the file but does
not hold the KEK cannot recompute a single MAC, and the KEK never touches the file.

Head file (``<log>.head``): the last ``seq`` and ``mac`` with their own HMAC, one
256-byte record overwritten in place (a single ``pwrite``) after every append. A log
cut short at the tail no longer reaches the head's ``seq``; a head cannot be forged
for the shorter log without the key.
A log *ahead* of its head by valid entries is the crash window between the two writes
and is accepted with a warning; it cannot be forged either. What this cannot detect on
its own is a rollback of both files to an older copy of both, or deleting both:
ship the export to a SIEM (or keep the head's MAC elsewhere) to anchor the chain.

Key material is refused, fail closed: every field must pass the public field rule of
:mod:`corridor.logs` (no bytes values, no field named like key/secret/kek/material
unless it is an ``..._id(s)`` string or a ``..._size/_bits/_count`` number); an event
that breaks it raises :class:`~corridor.logs.KeyMaterialRefused` and is not written.
Field names must match ``[A-Za-z][A-Za-z0-9_]{0,63}`` and event names
``[a-z][a-z0-9_]{0,31}`` so that every export format can carry them (syslog shortens
field names over 32 characters, see :func:`syslog_param_name`).

Concurrency: appends are serialised by a thread lock and an exclusive ``flock`` on the
log file, so threads and processes (several API workers) may share one log. Under the
lock an appender re-reads the tail if another process wrote, so the chain stays linear.

Durability (fsync policy): every append is one ``write`` of the whole line on an
``O_APPEND`` descriptor before ``emit`` returns, so it survives the process being
killed. With ``fsync_interval_s = 0`` (the default) ``append`` returns only once its line
and a head file that covers it are fsync'ed (and the directory entry of a new head), so
it survives power loss. Appends that arrive while an fsync runs share the next one
(group commit): the log is fsync'ed up to everything written so far, then the head is
written for that last entry and fsync'ed, and every caller it covered returns. The log
reaches the disk before the head names it, so a power loss leaves the head at most
behind the log (the crash window below), never ahead.
With ``fsync_interval_s > 0`` they are fsync'ed at most once per interval (on the first
append after it expires, and on :meth:`AuditLog.close`): a power loss can then lose the
last interval's entries (and the kernel's writeback, at most ~30 s by default, covers
appends followed by silence). A write cut short by a crash leaves an incomplete last
line; the next append or open truncates it and records an ``audit_tail_repaired`` entry.
"""

from __future__ import annotations

import collections
import datetime as dt
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import corridor
from corridor.errors import CorridorError, ParameterError
from corridor.kms.crypto import KEK_BYTES
from corridor.logs import check_public_fields, to_public_json

AUDIT_KEY_INFO = b"corridor audit v1"
GENESIS_MAC = "0" * 64
EXPORT_FORMATS = ("jsonl", "cef", "syslog")
ENTRY_KEYS = ("seq", "time", "event", "fields", "prev", "mac")

_ENTRY_DOMAIN = b"corridor audit entry v1\n"
_HEAD_DOMAIN = b"corridor audit head v1\n"
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_MAC_HEX = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 65536
_HEAD_RECORD_BYTES = 256


class AuditLogError(CorridorError):
    """The audit log cannot be appended to safely (tampered, wrong key, unreadable)."""


def derive_audit_key(kek: bytes) -> bytes:
    """The 32-byte audit key: HKDF-SHA256(kek, info="corridor audit v1")."""
    if not isinstance(kek, bytes | bytearray):
        raise ParameterError("key", f"({type(kek).__name__}, not shown)",
                             "bytes (the KME's key-encryption key)")
    if len(kek) != KEK_BYTES:
        raise ParameterError("key", f"({len(kek)} bytes, not shown)",
                             f"a key-encryption key of {KEK_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=AUDIT_KEY_INFO).derive(bytes(kek))


_SEPARATORS = (",", ":")
# The bytes json.dumps(..., ensure_ascii=True) writes as they are: printable ASCII but
# the quote and the backslash.
_UNESCAPED = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _dump_value(value: Any, sort_keys: bool) -> str:
    """``json.dumps(value, sort_keys=sort_keys)`` compact and ASCII, with a fast path for
    the common long field, a list of plain strings (key IDs): when no item needs an
    escape (printable ASCII without quote or backslash) the list is joined in C."""
    if type(value) is list and value and set(map(type, value)) == {str}:
        joined = "".join(value)
        if joined.isascii() and not joined.encode("ascii").translate(None, _UNESCAPED):
            return '["' + '","'.join(value) + '"]'
    return json.dumps(value, sort_keys=sort_keys, separators=_SEPARATORS, ensure_ascii=True,
                      allow_nan=False)


def _dump_fields(fields: Mapping[str, Any], sort_keys: bool) -> str:
    """``json.dumps(fields, sort_keys=sort_keys)`` compact and ASCII (the same text;
    tests/kms/test_audit.py compares them), each value through :func:`_dump_value`."""
    names = sorted(fields) if sort_keys else list(fields)
    return "{" + ",".join(json.dumps(name, ensure_ascii=True) + ":"
                          + _dump_value(fields[name], sort_keys) for name in names) + "}"


def _canonical_text(entry: Mapping[str, Any], fields_text: str) -> str:
    # The keys of the body (ENTRY_KEYS without "mac") in sorted order.
    return (f'{{"event":{json.dumps(entry["event"])},"fields":{fields_text},'
            f'"prev":{json.dumps(entry["prev"])},"seq":{json.dumps(entry["seq"])},'
            f'"time":{json.dumps(entry["time"])}}}')


def _line_text(entry: Mapping[str, Any], fields_text: str) -> str:
    # The keys in ENTRY_KEYS order.
    return (f'{{"seq":{json.dumps(entry["seq"])},"time":{json.dumps(entry["time"])},'
            f'"event":{json.dumps(entry["event"])},"fields":{fields_text},'
            f'"prev":{json.dumps(entry["prev"])},"mac":{json.dumps(entry["mac"])}}}\n')


def _canonical(entry: Mapping[str, Any]) -> bytes:
    """What an entry's MAC covers: its body without ``mac``, keys sorted at every level,
    compact, ASCII (``json.dumps(body, sort_keys=True)``)."""
    return _canonical_text(entry, _dump_fields(entry["fields"], True)).encode("ascii")


def _serialize(entry: Mapping[str, Any]) -> bytes:
    """The line an entry is written as (keys in ENTRY_KEYS order, its fields in their
    own order, compact, ASCII)."""
    return _line_text(entry, _dump_fields(entry["fields"], False)).encode("ascii")


def _entry_mac(audit_key: bytes, entry: Mapping[str, Any]) -> str:
    return hmac.new(audit_key, _ENTRY_DOMAIN + _canonical(entry), hashlib.sha256).hexdigest()


def _head_mac(audit_key: bytes, seq: int, mac: str) -> str:
    return hmac.new(audit_key, _HEAD_DOMAIN + f"{seq}:{mac}".encode("ascii"),
                    hashlib.sha256).hexdigest()


def head_path(path: str | os.PathLike[str]) -> Path:
    """Where the head file of the log at ``path`` lives (``<log>.head``)."""
    path = Path(path)
    return path.with_name(path.name + ".head")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def looks_like_audit_log(path: str | Path, *, lines: int = 64) -> bool:
    """Whether ``path`` is an audit log at all, however damaged: its head file exists,
    or one of its first ``lines`` lines has an entry's shape. A file that is neither
    (a corridor-up.json, an inventory) is the wrong file, not a broken chain; an empty
    file counts as a log (a new one)."""
    if head_path(Path(path)).exists() or not Path(path).is_file():
        return True  # (a missing file is verify_audit_log's to report)
    with open(path, "rb") as handle:
        first = [handle.readline() for _ in range(lines)]
    first = [line for line in first if line.strip()]
    return not first or any(_parse_entry(line) is not None for line in first)


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """The entry on ``line`` if it has the right shape and types, else ``None``."""
    try:
        entry = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or sorted(entry) != sorted(ENTRY_KEYS):
        return None
    seq, prev, mac = entry["seq"], entry["prev"], entry["mac"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1
            and isinstance(entry["time"], str) and isinstance(entry["event"], str)
            and isinstance(entry["fields"], dict)
            and isinstance(prev, str) and _MAC_HEX.fullmatch(prev)
            and isinstance(mac, str) and _MAC_HEX.fullmatch(mac)):
        return None
    return entry


@dataclass(frozen=True)
class _Head:
    seq: int
    mac: str
    authentic: bool


def _read_head(audit_key: bytes, path: Path) -> _Head | None:
    """The head file, or ``None`` when it does not exist; ``authentic`` says if its MAC holds."""
    try:
        raw = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    return _parse_head(audit_key, raw)


def _parse_head(audit_key: bytes, raw: bytes) -> _Head:
    """A head record's fields; ``authentic`` says if its MAC holds."""
    try:
        data = json.loads(raw)
        seq, mac, tag = data["seq"], data["mac"], data["head_mac"]
        if not (isinstance(seq, int) and seq >= 0 and isinstance(mac, str)
                and isinstance(tag, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _Head(-1, "", False)
    authentic = hmac.compare_digest(_head_mac(audit_key, seq, mac).encode(), tag.encode())
    return _Head(seq, mac, authentic)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_OPEN_LOGS: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at fork time; that thread does not
    # exist in the child, so the child starts with fresh locks (and reopens the file).
    for log in list(_OPEN_LOGS):
        log._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AuditLog:
    """Append-only, HMAC-chained JSON Lines audit log of one KME (an ``EventSink``).

    Args:
        path: the log file (created with mode 0600 if missing; its head file is
            ``<path>.head``).
        key: the KME's key-encryption key; the audit key is derived from it by HKDF.
        fsync_interval_s: 0 to fsync on every append, else at most once per interval
            (module docstring, "Durability").

    Raises :class:`AuditLogError` when an existing log does not end where its head says,
    or its last entry does not verify under ``key``: appending would hide the damage.
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes, *,
                 fsync_interval_s: float = 0.0) -> None:
        if (isinstance(fsync_interval_s, bool) or not isinstance(fsync_interval_s, int | float)
                or not fsync_interval_s >= 0):
            raise ParameterError("fsync_interval_s", fsync_interval_s, "a number >= 0")
        self.path = Path(path)
        self.fsync_interval_s = float(fsync_interval_s)
        self._audit_key = derive_audit_key(key)
        self._lock = threading.Lock()
        self._fd = -1
        self._head_fd = -1
        self._head_new = False
        self._pid = -1
        self._size = 0
        self._seq = 0
        self._mac = GENESIS_MAC
        self._last_fsync = time.monotonic()
        self._unsynced = False
        # Group commit (fsync_interval_s = 0): appenders that write while one fsync runs
        # share the next one (module docstring, "Durability").
        self._sync_cond = threading.Condition()
        self._synced_seq = 0
        self._syncing = False
        with self._lock:
            self._open()
            try:
                with self._file_lock():
                    self._load_state()
            except BaseException:
                os.close(self._fd)
                if self._head_fd >= 0:
                    os.close(self._head_fd)
                raise
        _OPEN_LOGS.add(self)

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self.path)!r}, seq={self._seq})"

    # -- public API -----------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """Append ``event`` with public ``fields`` (EventSink). Refuses key material."""
        self.append(event, fields)

    def append(self, event: str, fields: Mapping[str, Any]) -> int:
        """Append one entry and return its ``seq``.

        Raises :class:`~corridor.logs.KeyMaterialRefused` if a field could be key
        material, :class:`ParameterError` for a malformed event or field name.
        """
        if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
            raise ParameterError("event", event, "a name matching [a-z][a-z0-9_]{0,31}")
        for name in fields:
            if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                raise ParameterError("field name", name,
                                     "a name matching [A-Za-z][A-Za-z0-9_]{0,63}")
        check_public_fields(fields)
        public = {name: to_public_json(value) for name, value in fields.items()}
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not share the parent's open file description:
                # flock locks belong to it, so the two would not exclude each other.
                self._open()
            with self._file_lock():
                self._catch_up()
                seq = self._write_entry(event, public)
        if self.fsync_interval_s == 0:
            self._wait_durable(seq)
        return seq

    @property
    def seq(self) -> int:
        """The ``seq`` of the last entry this process knows of (0 for an empty log)."""
        return self._seq

    def sync(self) -> None:
        """Force the log and head file to stable storage now."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._fsync()

    def close(self) -> None:
        """fsync and close the log (appending afterwards reopens it)."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._fsync()
                os.close(self._fd)
                if self._head_fd >= 0:
                    os.close(self._head_fd)
            self._fd = -1
            self._head_fd = -1
            self._pid = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._head_fd = -1
        self._pid = os.getpid()

    def _file_lock(self) -> _FileLock:
        return _FileLock(self._fd)

    def _load_state(self) -> None:
        """Find the last entry and check it against the head (called under both locks)."""
        size = os.fstat(self._fd).st_size
        dropped = self._repair_torn_tail(size)
        size = os.fstat(self._fd).st_size
        head = _read_head(self._audit_key, self.path)
        last = self._last_entry(size)
        if last is None:
            if size:
                raise AuditLogError(f"{self.path}: the last line is not a valid audit entry")
            seq, mac = 0, GENESIS_MAC
        else:
            if not hmac.compare_digest(_entry_mac(self._audit_key, last).encode(),
                                       str(last["mac"]).encode()):
                raise AuditLogError(f"{self.path}: the last entry (seq {last['seq']}) does not "
                                    "verify: wrong key-encryption key, or the log was edited")
            seq, mac = int(last["seq"]), str(last["mac"])
        if head is None:
            if seq:
                raise AuditLogError(f"{self.path}: head file {head_path(self.path)} is missing; "
                                    "the tail may have been cut (run `corridor audit verify`)")
        elif not head.authentic:
            raise AuditLogError(f"{self.path}: head file does not verify: wrong key-encryption "
                                "key, or the head was edited")
        elif head.seq > seq or (head.seq == seq and head.mac != mac):
            raise AuditLogError(f"{self.path}: log ends at seq {seq} but its head says "
                                f"{head.seq}: entries were removed (run `corridor audit verify`)")
        self._size, self._seq, self._mac = size, seq, mac
        if head is None or head.seq != seq:
            self._write_head(sync=True)
        if dropped:
            self._write_entry("audit_tail_repaired", {"dropped_bytes": dropped})

    def _catch_up(self) -> None:
        """Pick up entries other processes appended since we last looked (under both locks)."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        if size < self._size:
            raise AuditLogError(f"{self.path}: shrank from {self._size} to {size} bytes while "
                                "open: entries were removed")
        dropped = self._repair_torn_tail(size)
        size = os.fstat(self._fd).st_size
        last = self._last_entry(size)
        if last is None or not hmac.compare_digest(
                _entry_mac(self._audit_key, last).encode(), str(last["mac"]).encode()):
            raise AuditLogError(f"{self.path}: an entry appended by another writer does not "
                                "verify")
        self._size, self._seq, self._mac = size, int(last["seq"]), str(last["mac"])
        if dropped:
            self._write_entry("audit_tail_repaired", {"dropped_bytes": dropped})

    def _repair_torn_tail(self, size: int) -> int:
        """Cut an incomplete last line (a write interrupted by a crash); bytes dropped."""
        if size == 0:
            return 0
        if os.pread(self._fd, 1, size - 1) == b"\n":
            return 0
        start = self._line_start(size)
        os.ftruncate(self._fd, start)
        os.fsync(self._fd)
        return size - start

    def _line_start(self, end: int) -> int:
        """Offset just after the last newline before ``end`` (0 if none)."""
        position = end
        while position > 0:
            chunk_start = max(0, position - _TAIL_CHUNK)
            chunk = os.pread(self._fd, position - chunk_start, chunk_start)
            index = chunk.rfind(b"\n")
            if index >= 0:
                return chunk_start + index + 1
            position = chunk_start
        return 0

    def _last_entry(self, size: int) -> dict[str, Any] | None:
        if size == 0:
            return None
        start = self._line_start(size - 1)
        return _parse_entry(os.pread(self._fd, size - start, start))

    def _write_entry(self, event: str, fields: dict[str, Any]) -> int:
        entry: dict[str, Any] = {"seq": self._seq + 1, "time": _utc_now(), "event": event,
                                 "fields": fields, "prev": self._mac}
        # The fields are written sorted at every level, so one text serves both the MAC
        # (the canonical form) and the line (which _serialize of the parsed line
        # reproduces, as verification demands): one encoding of the key-ID lists
        # instead of two.
        fields_text = _dump_fields(fields, True)
        entry["mac"] = hmac.new(self._audit_key, _ENTRY_DOMAIN + _canonical_text(
            entry, fields_text).encode("ascii"), hashlib.sha256).hexdigest()
        line = _line_text(entry, fields_text).encode("ascii")
        written = os.write(self._fd, line)  # one write: a line is never interleaved
        if written != len(line):
            os.ftruncate(self._fd, self._size)
            raise AuditLogError(f"{self.path}: short write ({written} of {len(line)} bytes; "
                                f"disk full?)")
        self._size += written
        self._seq, self._mac = entry["seq"], entry["mac"]
        self._unsynced = True
        if self.fsync_interval_s == 0:
            return int(entry["seq"])  # made durable, with the head, by _wait_durable
        sync = time.monotonic() - self._last_fsync >= self.fsync_interval_s
        if sync:
            os.fsync(self._fd)
        self._write_head(sync=sync)
        if sync:
            self._last_fsync = time.monotonic()
            self._unsynced = False
        return int(entry["seq"])

    def _wait_durable(self, seq: int) -> None:
        """Return once entry ``seq`` and a head at least that far are on stable storage.

        Group commit: one caller at a time fsyncs the log up to what has been written
        so far, then writes and fsyncs the head for it; callers whose entries it covered
        return without an fsync of their own, the others wait for the next one. The log
        is fsynced before the head names its entries, so after a power loss the head is
        never ahead of the log (at most behind it: the crash window).
        """
        with self._sync_cond:
            while self._synced_seq < seq:
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync_cond.wait()
            else:
                return
        done = 0
        try:
            with self._lock:
                target, target_mac, fd = self._seq, self._mac, self._fd
            os.fsync(fd)
            with self._lock:
                if self._fd == fd:  # not closed or reopened meanwhile
                    self._advance_head(target, target_mac)
                    if target == self._seq:
                        self._unsynced = False
                    self._last_fsync = time.monotonic()
            done = target
        finally:
            with self._sync_cond:
                self._syncing = False
                self._synced_seq = max(self._synced_seq, done)
                self._sync_cond.notify_all()

    def _write_head(self, *, sync: bool, seq: int | None = None, mac: str | None = None
                    ) -> None:
        """Overwrite the head record with entry ``seq``/``mac`` (default: the last one)."""
        seq = self._seq if seq is None else seq
        mac = self._mac if mac is None else mac
        head = json.dumps({"seq": seq, "mac": mac,
                           "head_mac": _head_mac(self._audit_key, seq, mac)})
        # One fixed-size record overwritten in place: a single pwrite of less than a
        # sector, so a killed process never leaves half a head (and no rename, which
        # ext4 turns into a flush costing about a millisecond per append).
        record = head.encode("ascii").ljust(_HEAD_RECORD_BYTES - 1) + b"\n"
        if self._head_fd < 0:
            self._head_fd = os.open(head_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o600)
            self._head_new = True
        os.pwrite(self._head_fd, record, 0)
        if sync:
            os.fsync(self._head_fd)
            if self._head_new:
                _fsync_dir(self.path.parent)
                self._head_new = False

    def _advance_head(self, seq: int, mac: str) -> None:
        """Make the head name entry ``seq`` (already fsynced), durably, unless another
        process sharing the log has made it name a later one meanwhile: under the log's
        file lock, so two processes never move the head back (one of them fsyncs up to
        entry 449 while the other, already at 450, wrote its head first)."""
        with self._file_lock():
            current = self._named_in_head()
            if current is not None and current >= seq:
                # A later entry is named; its writer fsynced the log before naming it.
                if self._head_fd >= 0:
                    os.fsync(self._head_fd)
                return
            self._write_head(sync=True, seq=seq, mac=mac)

    def _named_in_head(self) -> int | None:
        """The seq the head file names now, if it is authentic (read through the open
        head descriptor: opening the file by name per durable wait cost 0.2 ms here)."""
        if self._head_fd < 0:
            try:
                self._head_fd = os.open(head_path(self.path), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        head = _parse_head(self._audit_key, os.pread(self._head_fd, _HEAD_RECORD_BYTES, 0))
        return head.seq if head.authentic else None

    def _fsync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._advance_head(self._seq, self._mac)
            self._unsynced = False
        self._last_fsync = time.monotonic()


class _FileLock:
    """Exclusive ``flock`` on a descriptor, retried across signals."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                return
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            except OSError as exc:  # pragma: no cover
                if exc.errno != errno.EINTR:
                    raise

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


# --- verification ------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_audit_log`.

    Attributes:
        ok: the whole chain and the head verify.
        entries: entries that verified before the first failure (all of them when ok).
        first_bad_seq: the ``seq`` position where the chain breaks (``None`` when ok).
        reason: why it breaks (``None`` when ok).
        line: the line number of the first bad entry, when the fault is in the log.
        head_seq: the ``seq`` recorded in the head file (``None`` if unreadable).
        warnings: facts that are not tampering (the crash window, a torn last line).
    """

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None
    line: int | None = None
    head_seq: int | None = None
    warnings: tuple[str, ...] = ()


def verify_audit_log(path: str | os.PathLike[str], key: bytes, *,
                     on_entry: Callable[[dict[str, Any]], None] | None = None) -> VerifyResult:
    """Check every entry's MAC, ``seq`` and ``prev``, then the head file.

    ``key`` is the KME's key-encryption key (the audit key is derived as in
    :class:`AuditLog`). Reads the file once, line by line; never raises for a damaged
    log (the result says what is wrong), only :class:`ParameterError` for a missing file.
    ``on_entry`` sees each entry once it verified (e.g. :meth:`DeliveryJournal.observe`).
    """
    path = Path(path)
    audit_key = derive_audit_key(key)
    if not path.is_file():
        raise ParameterError("FILE", str(path), "an existing audit log file")
    head = _read_head(audit_key, path)
    head_seq = head.seq if head is not None and head.authentic else None
    warnings: list[str] = []
    expected, prev_mac, head_entry_mac = 1, GENESIS_MAC, GENESIS_MAC

    def broken(reason: str, line: int | None) -> VerifyResult:
        return VerifyResult(False, expected - 1, expected, reason, line, head_seq,
                            tuple(warnings))

    with path.open("rb") as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.endswith(b"\n"):
                warnings.append(f"line {line_no} is incomplete (a write cut short by a crash; "
                                "the next append removes it)")
                break
            entry = _parse_entry(line)
            if entry is None:
                return broken("not a well-formed audit entry (edited or corrupted)", line_no)
            if _serialize(entry) != line:
                # The MAC covers the parsed values; demanding the exact bytes as well means
                # no byte of the file can change unnoticed (e.g. "\u00e9" -> "\u00E9").
                return broken("not in canonical form: the line was edited", line_no)
            if not hmac.compare_digest(_entry_mac(audit_key, entry).encode(),
                                       str(entry["mac"]).encode()):
                reason = ("MAC does not verify: wrong key-encryption key, or the entry was "
                          "edited" if expected == 1 else "MAC does not verify: the entry was "
                          "edited")
                return broken(reason, line_no)
            if entry["seq"] != expected:
                what = ("entries before it were deleted, or entries were reordered"
                        if entry["seq"] > expected
                        else "an entry was inserted, duplicated or reordered")
                return broken(f"found seq {entry['seq']} where {expected} was expected: {what}",
                              line_no)
            if not hmac.compare_digest(str(entry["prev"]).encode(), prev_mac.encode()):
                return broken("prev does not match the previous entry's mac: the chain was "
                              "spliced", line_no)
            prev_mac = str(entry["mac"])
            if on_entry is not None:
                on_entry(entry)
            if head is not None and entry["seq"] == head.seq:
                head_entry_mac = prev_mac
            expected += 1
    last = expected - 1
    if head is None:
        return broken(f"head file {head_path(path)} is missing: the tail may have been cut",
                      None)
    if not head.authentic:
        return broken("head file does not verify: wrong key-encryption key, or the head "
                      "was edited", None)
    if head.seq > last:
        return broken(f"the log ends at seq {last} but its head says {head.seq}: entries "
                      "were removed from the end", None)
    if not hmac.compare_digest(head.mac.encode(), head_entry_mac.encode()):
        return broken(f"the head's mac does not match entry {head.seq}", None)
    if head.seq < last:
        warnings.append(f"the head file is {last - head.seq} entr"
                        f"{'y' if last - head.seq == 1 else 'ies'} behind (a crash between "
                        "appending and updating the head; the next open updates it)")
    return VerifyResult(True, last, None, None, None, head.seq, tuple(warnings))


class DeliveryJournal:
    """Finds deliveries whose write-ahead intent has no outcome in the audit trail.

    The KeyManager writes ``keys_reserving`` / ``keys_delivering`` with a
    ``delivery_id`` before it touches the store, and every outcome of that delivery
    carries the same ID (:mod:`corridor.kms.manager`). Feed it every entry in order
    (``verify_audit_log(..., on_entry=journal.observe)``); :attr:`unfinished` lists the
    intents left open, as ``{"event", "seq", "fields", "reserved"}``.
    """

    INTENTS = frozenset({"keys_reserving", "keys_delivering"})
    OUTCOMES = frozenset({"keys_delivered", "reservations_discarded", "request_rejected",
                          "delivery_resolved"})

    def __init__(self) -> None:
        self._open: dict[str, dict[str, Any]] = {}

    def observe(self, entry: Mapping[str, Any]) -> None:
        """Take one audit entry (in log order)."""
        fields = entry.get("fields")
        if not isinstance(fields, dict) or "delivery_id" not in fields:
            return
        delivery_id = str(fields["delivery_id"])
        event = entry.get("event")
        if event in self.INTENTS:
            self._open[delivery_id] = {"event": event, "seq": entry.get("seq"),
                                       "fields": fields, "reserved": False}
        elif event == "keys_reserved" and delivery_id in self._open:
            self._open[delivery_id]["reserved"] = True
        elif event in self.OUTCOMES:
            self._open.pop(delivery_id, None)

    @property
    def unfinished(self) -> list[dict[str, Any]]:
        """Intents without an outcome, oldest first."""
        return sorted(self._open.values(), key=lambda item: int(item["seq"] or 0))


class HighWaterMarks:
    """The furthest this KME's audit trail says its store had come, per link: the last
    block ingested and, per pool it masters, the end of the last range it cut; and the
    keys it delivered to slave SAEs (the most recent ``MAX_DELIVERIES``).

    Feed it every entry in order (as :class:`DeliveryJournal`). A store restored from
    an older copy is behind these marks; :meth:`KeyManager.check_store_against`
    refuses to serve from it, because it would cut the same key bytes again under
    new key IDs.
    """

    #: Slave deliveries remembered for the check (the most recent ones: a store copy
    #: older than these is also behind the block marks unless the link stood still).
    MAX_DELIVERIES = 100_000

    def __init__(self) -> None:
        self.last_block_id: dict[str, int] = {}
        self.cut_end: dict[tuple[str, str], int] = {}
        self.seq_of: dict[tuple[str, ...], int] = {}
        self.delivered: collections.deque[tuple[str, str, int]] = collections.deque(
            maxlen=self.MAX_DELIVERIES)

    def observe(self, entry: Mapping[str, Any]) -> None:
        """Take one audit entry (in log order)."""
        fields = entry.get("fields")
        if not isinstance(fields, dict):
            return
        event, seq = entry.get("event"), int(entry.get("seq") or 0)
        try:
            if event == "block_ingested":
                link, block_id = str(fields["link_id"]), int(fields["block_id"])
                if block_id > self.last_block_id.get(link, -1):
                    self.last_block_id[link] = block_id
                    self.seq_of[(link,)] = seq
            elif event == "keys_delivered" and fields.get("role") == "slave":
                sae = str(fields["sae_id"])
                self.delivered.extend((sae, str(key_id), seq) for key_id in fields["key_ids"])
            elif event == "keys_reserved":
                pool = (str(fields["link_id"]), str(fields["direction"]))
                size = int(fields["size_bits"]) // 8
                end = max(int(o) for o in fields["byte_offsets"]) + size
                if end > self.cut_end.get(pool, 0):
                    self.cut_end[pool] = end
                    self.seq_of[pool] = seq
        except (KeyError, TypeError, ValueError):
            return  # not an entry this version wrote; the chain check stands on its own


# --- export --------------------------------------------------------------------------

# Severities for the SIEM: CEF 0-10, syslog 0 (emergency) - 7 (debug).
_CEF_SEVERITY = {"link_alarm_raised": 8, "link_quarantined": 8, "audit_tail_repaired": 7,
                 "pool_full": 5, "link_recovered": 5, "link_cleared": 5,
                 "request_rejected": 4}
_SYSLOG_SEVERITY = {"link_alarm_raised": 4, "link_quarantined": 4, "audit_tail_repaired": 4,
                    "pool_full": 5, "link_recovered": 5, "link_cleared": 5,
                    "request_rejected": 5}
SYSLOG_FACILITY_LOG_AUDIT = 13
SYSLOG_ENTERPRISE_ID = 32473
"""RFC 5424 SD-IDs need an IANA private enterprise number; Corridor has none and uses
32473, the number RFC 5612 reserves for documentation and examples."""


def _iter_entries(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise ParameterError("FILE", str(path), "an existing audit log file")
    with path.open("rb") as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.endswith(b"\n"):
                return  # an incomplete last line is not an entry yet
            entry = _parse_entry(line)
            if entry is None:
                raise AuditLogError(f"{path}: line {line_no} is not a well-formed audit entry "
                                    "(run `corridor audit verify`)")
            yield line.decode("ascii").rstrip("\n"), entry


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(not isinstance(v, list | dict) for v in value):
        return ",".join(_field_text(v) for v in value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def cef_escape_header(text: str) -> str:
    """Escape a CEF header field: backslash and pipe; line breaks become spaces."""
    return (text.replace("\\", "\\\\").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def cef_escape_value(text: str) -> str:
    r"""Escape a CEF extension value: backslash, equals sign, and \n \r as escapes."""
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r"))


def _cef_key(field_name: str) -> str:
    # ArcSight's advice for vendor keys: vendorProductKeyName, one alphanumeric word.
    return "corridor" + "".join(part[:1].upper() + part[1:] for part in field_name.split("_"))


def _epoch_ms(time_text: str) -> int:
    when = dt.datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    return int(when.timestamp() * 1000)


def to_cef(entry: Mapping[str, Any]) -> str:
    """One entry as an ArcSight Common Event Format (CEF:0) line."""
    event = str(entry["event"])
    header = ["CEF:0", "Corridor", "corridor-kms", corridor.__version__, event,
              event.replace("_", " "), str(_CEF_SEVERITY.get(event, 3))]
    extension = [("rt", str(_epoch_ms(str(entry["time"])))), ("externalId", str(entry["seq"])),
                 ("cat", event), ("corridorSeq", str(entry["seq"])),
                 ("corridorPrev", str(entry["prev"])), ("corridorMac", str(entry["mac"]))]
    for name, value in entry["fields"].items():
        if value is not None:
            extension.append((_cef_key(name), _field_text(value)))
    return ("|".join(cef_escape_header(part) for part in header) + "|"
            + " ".join(f"{key}={cef_escape_value(value)}" for key, value in extension))


def syslog_escape_value(text: str) -> str:
    r"""Escape an RFC 5424 PARAM-VALUE: backslash, double quote and ``]``.

    Line breaks and tabs become the two characters ``\n``, ``\r``, ``\t`` so that one
    entry stays one line; RFC 5424 reads those back as a literal backslash and letter.
    """
    return (text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
            .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def _printable_ascii(text: str, limit: int) -> str:
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return clean or "-"


def syslog_param_name(name: str) -> str:
    """An RFC 5424 PARAM-NAME (at most 32 characters) for a field name.

    Names up to 32 characters are kept; longer ones become their first 23 characters,
    ``_`` and the first 8 hex digits of their SHA-256, so they stay distinct.
    """
    if len(name) <= 32:
        return name
    return f"{name[:23]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def to_syslog(entry: Mapping[str, Any], hostname: str) -> str:
    """One entry as an RFC 5424 line (facility log audit, structured data, no BOM)."""
    event = str(entry["event"])
    pri = SYSLOG_FACILITY_LOG_AUDIT * 8 + _SYSLOG_SEVERITY.get(event, 6)
    chain = (f'[corridorAudit@{SYSLOG_ENTERPRISE_ID} seq="{entry["seq"]}" '
             f'prev="{entry["prev"]}" mac="{entry["mac"]}"]')
    params = " ".join(f'{syslog_param_name(name)}="{syslog_escape_value(_field_text(value))}"'
                      for name, value in entry["fields"].items() if value is not None)
    fields = f"[corridorEvent@{SYSLOG_ENTERPRISE_ID}{' ' + params if params else ''}]"
    return (f"<{pri}>1 {entry['time']} {_printable_ascii(hostname, 255)} corridor - "
            f"{_printable_ascii(event, 32)} {chain}{fields} {event} seq={entry['seq']}")


def export(path: str | os.PathLike[str], format: str = "jsonl", *,
           hostname: str | None = None) -> Iterator[str]:
    """The log's entries as lines (no newline) in ``format``: jsonl, cef or syslog.

    Does not verify the chain (run :func:`verify_audit_log` for that); each exported
    line carries ``seq``, ``prev`` and ``mac`` so the SIEM can keep the chain.
    ``hostname`` (syslog only) defaults to this machine's name.
    """
    if format not in EXPORT_FORMATS:
        raise ParameterError("format", format, f"one of {', '.join(EXPORT_FORMATS)}")
    host = hostname if hostname is not None else socket.gethostname()
    for line, entry in _iter_entries(Path(path)):
        if format == "jsonl":
            yield line
        elif format == "cef":
            yield to_cef(entry)
        else:
            yield to_syslog(entry, host)
