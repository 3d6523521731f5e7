"""High availability of one KME site: several API workers on one PostgreSQL store.

This module owns what lets two or more ``corridor kme serve --worker NAME`` processes of
the same KME run side by side behind one address (docs/ha.md):

- worker names and the files each worker keeps for itself in the KME's state directory:
  its audit chain ``audit-<worker>.jsonl`` (:func:`worker_audit_path`) and the lock file
  that refuses a second process under the same name (:func:`hold_worker_lock`, on
  :func:`hold_pid_lock`, which also keeps a second ``corridor up`` off a working
  directory);
- the anti-rollback marks of the *other* workers' chains (:func:`observe_sibling_chains`):
  the store is shared, so it must be at least as far as every chain says;
- :class:`FeederLease`: one writer per link end across workers, a PostgreSQL session
  advisory lock (``pg_try_advisory_lock`` on :func:`lease_lock_id`) held on a dedicated
  connection; it is released by PostgreSQL when that connection ends, so when the
  holder dies (``kill -9``, machine gone, TCP keepalives time out) another worker's
  next attempt takes it;
- :class:`FeederLeases`: the thread that tries every lease about once a second, runs
  the link's feeder while its lease is held, stops it when the lease is lost, and
  audits and logs every gain and loss (``feeder_lease_gained``, ``feeder_lease_lost``).

What stays per process (not shared, not taken over): the peer-outage state of the
KME-to-KME links, the LinkMonitor's alarms and the connection limits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.audit import HighWaterMarks, verify_audit_log
from corridor.kms.interface import EventSink
from corridor.kms.sources.feeder import LinkFeeder

_log = logging.getLogger(__name__)

WORKER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
PENDING_GRACE_S = 60.0
"""A restarting worker discards only master reservations older than this: every
request that reserves finishes well within it (the peer call times out after 5 s), so
a younger pending row may be another worker's request in flight."""
LEASE_RETRY_S = 1.0
"""How often a worker that does not hold a lease tries it again (and a holder checks
that its lease connection is alive)."""
FEEDER_STOP_TIMEOUT_S = 15.0
FAILED_FEEDER_BACKOFF_ROUNDS = 10
"""After its feeder stopped with an error, a worker hands the lease back and waits this
many rounds before trying it again (another worker may feed meanwhile)."""


def check_worker(worker: str) -> str:
    """``worker`` if it is a usable worker name (it names files), else ParameterError."""
    if not isinstance(worker, str) or not WORKER_PATTERN.match(worker):
        raise ParameterError("--worker", worker, "must be 1 to 32 letters, digits, '-' or "
                             "'_', starting with a letter or digit")
    return worker


def require_shared_store(kme_id: str, store: str | None) -> None:
    """Refuse workers on anything but PostgreSQL: an SQLite file serves one process."""
    if not (store or "").startswith(("postgresql://", "postgres://")):
        raise ParameterError(f"kmes.{kme_id}.store", store or "(SQLite default)",
                             "must be postgresql://... to run several workers of a KME "
                             "(--worker); an SQLite store serves one process")


def worker_audit_path(state_dir: Path, worker: str) -> Path:
    """The audit chain of one worker of a KME (each worker appends to its own)."""
    return state_dir / f"audit-{check_worker(worker)}.jsonl"


def sibling_audit_paths(state_dir: Path, own: Path) -> list[Path]:
    """The other audit chains of this KME in ``state_dir``: the other workers' and the
    single-process ``audit.jsonl`` of a KME that ran without workers before."""
    found = [state_dir / "audit.jsonl", *sorted(state_dir.glob("audit-*.jsonl"))]
    return [path for path in found if path.is_file() and path.resolve() != own.resolve()]


def observe_sibling_chains(paths: Iterable[Path], kek: bytes,
                           marks: HighWaterMarks) -> list[str]:
    """Feed the verified entries of the other workers' chains into ``marks``; returns a
    warning per chain that does not verify (its worker refuses to start on it; here its
    entries up to the fault still count, as they are authentic).

    Only the marks are taken: another worker's unfinished deliveries are its own to
    resolve when it restarts (it may be serving them right now)."""
    warnings = []
    for path in paths:
        result = verify_audit_log(path, kek, on_entry=marks.observe)
        if not result.ok:
            warnings.append(f"audit chain {path.name} of another worker does not verify at "
                            f"seq {result.first_bad_seq}: {result.reason}")
    return warnings


class LockHeldError(Exception):
    """Another process holds a lock file (:func:`hold_pid_lock`); ``holder`` is its pid
    as it wrote it (``?`` if unreadable)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by pid {holder}")
        self.holder = holder


def hold_pid_lock(path: Path) -> int:
    """Lock ``path`` exclusively for this process and write its pid there; the lock is
    released when the process ends, however it ends. Returns the descriptor to close;
    :class:`LockHeldError` when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise LockHeldError(path, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def hold_worker_lock(state_dir: Path, worker: str) -> int:
    """Lock ``worker-<worker>.lock`` for this process (:func:`hold_pid_lock`); two
    processes under one worker name would append to one chain and each resolve the
    other's deliveries in flight. Returns the descriptor to close."""
    try:
        return hold_pid_lock(state_dir / f"worker-{check_worker(worker)}.lock")
    except LockHeldError as exc:
        raise ParameterError("--worker", worker, f"is already running in {state_dir} (pid "
                             f"{exc.holder}); give each worker of a KME its own name") from None


def lease_lock_id(kme_id: str, link_id: str) -> int:
    """The advisory lock key of the feeder of ``link_id`` at ``kme_id``: the first 8
    bytes of SHA-256 over both IDs, as PostgreSQL's signed 64-bit key. Stable across
    processes, versions and machines (Python's ``hash`` is not)."""
    digest = hashlib.sha256(f"corridor-feeder-lease\0{kme_id}\0{link_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class FeederLease:
    """One worker's claim on the feeder of one link end, held as a PostgreSQL session
    advisory lock on a connection of its own (never a pooled store connection, whose
    session outlives the request that used it).

    Args:
        conninfo: the KME's PostgreSQL store URL or libpq string (the lock lives in
            its database).
        kme_id, link_id: the link end.
        application_name: shown in ``pg_stat_activity`` (who holds what).
        connect_timeout_s: how long one connection attempt may take.

    Both ends of the connection send TCP keepalives (5 s idle, 3 probes 2 s apart), so
    a holder whose machine vanishes loses the lock within about 15 s instead of the
    kernel's two hours.
    """

    def __init__(self, conninfo: str, kme_id: str, link_id: str, *,
                 application_name: str = "corridor-feeder-lease",
                 connect_timeout_s: float = 5.0) -> None:
        self.conninfo = conninfo
        self.kme_id = kme_id
        self.link_id = link_id
        self.lock_id = lease_lock_id(kme_id, link_id)
        self.application_name = application_name[:63]
        self.connect_timeout_s = connect_timeout_s
        self.held = False
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.conninfo, autocommit=True,
                               connect_timeout=max(1, round(self.connect_timeout_s)),
                               application_name=self.application_name, keepalives=1,
                               keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        for setting in ("tcp_keepalives_idle = 5", "tcp_keepalives_interval = 2",
                        "tcp_keepalives_count = 3"):
            conn.execute(f"SET {setting}")
        return conn

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (True), or say that another session does
        (False, also when PostgreSQL cannot be reached). True again while held."""
        import psycopg

        if self.held:
            return self.check()
        try:
            if self._conn is None:
                self._conn = self._connect()
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (self.lock_id,)).fetchone()
        except psycopg.Error as exc:
            _log.debug("feeder lease of %s at %s: PostgreSQL error %s", self.link_id,
                       self.kme_id, type(exc).__name__)
            self._drop()
            return False
        self.held = bool(row and row[0])
        return self.held

    def check(self) -> bool:
        """True while the lock is held: its session is alive (a session lock lasts
        until it is unlocked or the session ends)."""
        import psycopg

        if not self.held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken connection must not raise here
                _log.debug("closing a lease connection: %s", type(exc).__name__)

    def release(self) -> None:
        """Unlock (if held) and close the connection."""
        import psycopg

        if self.held and self._conn is not None:
            # On an error the session is ending anyway, and the lock with it.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,))
        self._drop()

    def __repr__(self) -> str:
        return (f"FeederLease(kme_id={self.kme_id!r}, link_id={self.link_id!r}, "
                f"held={self.held})")


class FeederLeases:
    """Runs this worker's feeders only while it holds their leases (module docstring).

    Args:
        conninfo: the KME's PostgreSQL store.
        kme_id, worker: this KME and this worker's name.
        factories: per link ID, how to build a fresh (unstarted) feeder of this KME's
            side of the link; a feeder starts once, so every gain builds a new one.
        events: the KME's events (audited, counted).
        on_change: called with the feeders running here after each gain or loss
            (the operator's AlarmDesk).
        retry_s: seconds between rounds.
        lease_factory: builds a lease (tests pass their own connection settings).
    """

    def __init__(self, conninfo: str, kme_id: str, worker: str,
                 factories: Mapping[str, Callable[[], LinkFeeder]], events: EventSink, *,
                 on_change: Callable[[Mapping[str, LinkFeeder]], None] | None = None,
                 retry_s: float = LEASE_RETRY_S,
                 lease_factory: Callable[[str, str, str], FeederLease] | None = None) -> None:
        self.kme_id = kme_id
        self.worker = check_worker(worker)
        self.events = events
        self.retry_s = float(retry_s)
        self._factories = dict(factories)
        make = lease_factory or (lambda url, kme, link: FeederLease(
            url, kme, link, application_name=f"corridor-feeder-{kme}-{worker}"))
        self.leases = {link_id: make(conninfo, kme_id, link_id) for link_id in factories}
        self.feeders: dict[str, LinkFeeder] = {}
        self._on_change = on_change
        self._tries: dict[str, int] = dict.fromkeys(factories, 0)
        self._backoff: dict[str, int] = dict.fromkeys(factories, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """First round now (a worker that can take a lease feeds at once), then every
        ``retry_s`` in a thread."""
        self.run_round()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"corridor-leases-{self.kme_id}-{self.worker}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                self.run_round()
            except Exception as exc:  # a bug must not end the thread silently
                _log.error("feeder leases of KME %s worker %s: %s", self.kme_id,
                           self.worker, type(exc).__name__)

    def run_round(self) -> None:
        """Check every held lease (and its feeder), try every other one."""
        with self._lock:
            if self._stop.is_set():
                return
            for link_id, lease in self.leases.items():
                feeder = self.feeders.get(link_id)
                if lease.held:
                    if not lease.check():
                        self._lost(link_id, "lease_connection_lost")
                    elif feeder is not None and not feeder.running and \
                            feeder.error is not None:
                        # Fail closed here, and let a worker that can feed the link do it
                        # (e.g. a late writer of the same block after a takeover).
                        self._lost(link_id, "feeder_error")
                        self._backoff[link_id] = FAILED_FEEDER_BACKOFF_ROUNDS
                elif self._backoff[link_id] > 0:
                    self._backoff[link_id] -= 1
                elif lease.try_acquire():
                    self._gained(link_id)
                else:
                    self._tries[link_id] += 1

    @property
    def held(self) -> list[str]:
        """The links whose feeder this worker runs."""
        return sorted(link_id for link_id, lease in self.leases.items() if lease.held)

    def _fields(self, link_id: str) -> dict[str, Any]:
        return {"kme_id": self.kme_id, "worker": self.worker, "link_id": link_id,
                "lock_id": self.leases[link_id].lock_id}

    def _gained(self, link_id: str) -> None:
        takeover = self._tries[link_id] > 0
        self._tries[link_id] = 0
        try:
            feeder = self._factories[link_id]()
            feeder.start()
        except Exception as exc:
            # Let another worker try: this one cannot feed the link now.
            _log.error("KME %s worker %s holds the feeder lease of link %s but its feeder "
                       "did not start (%s); lease released", self.kme_id, self.worker,
                       link_id, type(exc).__name__)
            self.leases[link_id].release()
            self._backoff[link_id] = FAILED_FEEDER_BACKOFF_ROUNDS
            self.events.emit("feeder_lease_lost", **self._fields(link_id),
                             reason="feeder_failed_to_start")
            return
        self.feeders[link_id] = feeder
        self.events.emit("feeder_lease_gained", **self._fields(link_id),
                         takeover=takeover, pid=os.getpid())
        if takeover:
            _log.warning("KME %s worker %s took over the feeder of link %s (its previous "
                         "holder is gone)", self.kme_id, self.worker, link_id)
        else:
            _log.info("KME %s worker %s feeds link %s", self.kme_id, self.worker, link_id)
        self._changed()

    def _lost(self, link_id: str, reason: str) -> None:
        feeder = self.feeders.pop(link_id, None)
        if feeder is not None:
            try:
                feeder.stop(FEEDER_STOP_TIMEOUT_S)
            except Exception as exc:
                _log.error("stopping the feeder of link %s: %s", link_id, type(exc).__name__)
        self.leases[link_id].release()
        self.events.emit("feeder_lease_lost", **self._fields(link_id), reason=reason)
        log = _log.info if reason == "worker_stopped" else _log.warning
        log("KME %s worker %s no longer feeds link %s (%s)", self.kme_id, self.worker,
            link_id, reason)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(dict(self.feeders))

    def close(self) -> None:
        """Stop the thread, stop every feeder running here, release every lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(FEEDER_STOP_TIMEOUT_S + 5.0)
        with self._lock:
            for link_id, lease in self.leases.items():
                if lease.held:
                    self._lost(link_id, "worker_stopped")
                else:
                    lease.release()

    def __repr__(self) -> str:
        return (f"FeederLeases(kme_id={self.kme_id!r}, worker={self.worker!r}, "
                f"held={self.held})")


__all__ = [
    "PENDING_GRACE_S",
    "FeederLease",
    "FeederLeases",
    "LockHeldError",
    "check_worker",
    "hold_pid_lock",
    "hold_worker_lock",
    "lease_lock_id",
    "observe_sibling_chains",
    "require_shared_store",
    "sibling_audit_paths",
    "worker_audit_path",
]
