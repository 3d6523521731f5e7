"""Connection limits of a KME server: how many sockets, for how long, and who is refused.

This module owns the defence of a KME's listening socket against connection floods
(docs/kms-operations.md, "Connection floods"):

- :class:`ConnectionLimits`, the per-KME settings of a corridor file (``[kme]`` or a
  ``[[kmes]]`` entry): ``max_connections``, ``tls_handshake_timeout_s``,
  ``header_timeout_s``, ``keep_alive_s``; validated, ParameterError naming the field.
- :class:`ConnectionGuard`, which sees every accepted socket before the TLS handshake
  (:class:`GuardedListener` wraps the listening socket; asyncio's selector loop calls
  its ``accept``). It keeps at most ``max_connections`` sockets open. At the cap, the
  oldest connection still in its TLS handshake is shut down to make room (reason
  ``evicted``): whoever holds sockets without completing a handshake cannot lock out a
  client that does, and a legitimate handshake takes milliseconds. Only when every open
  connection has completed its handshake is a newcomer refused at once (``limit``,
  closed with a TCP reset, so it never holds a file descriptor).
- Refusals and timeouts (``limit``, ``evicted``, ``handshake_timeout``,
  ``handshake_failed``, ``header_timeout``) go to one callback per KME: a counter
  (``corridor_connections_refused_total{kme_id,reason}``) and a rate-limited warning
  (:class:`RefusalReporter`: the first refusal at once, then at most one line per
  ``interval_s`` with the counts).
- :func:`raise_open_file_limit` and :func:`check_file_budget`: the process's soft
  open-file limit is raised to its hard limit at start, and the connection caps of the
  KMEs in one process must leave room under it.

The TLS handshake timeout is asyncio's (``ssl_handshake_timeout`` of ``create_server``)
or, on the default post-quantum listener, :class:`~corridor.kms.tls_openssl.
OpenSSLServerProtocol`'s; the header timeout is enforced by the HTTP protocol of
:mod:`corridor.kms.tls`. ``tls_groups`` (the listener's TLS key-exchange groups) sits
here with the other per-listener settings of the corridor file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.tls_openssl import DEFAULT_TLS_GROUPS, check_tls_groups

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

_log = logging.getLogger(__name__)

REASON_LIMIT = "limit"
REASON_EVICTED = "evicted"
REASON_HANDSHAKE_TIMEOUT = "handshake_timeout"
REASON_HANDSHAKE_FAILED = "handshake_failed"
REASON_HEADER_TIMEOUT = "header_timeout"
REASONS = (REASON_LIMIT, REASON_EVICTED, REASON_HANDSHAKE_TIMEOUT, REASON_HANDSHAKE_FAILED,
           REASON_HEADER_TIMEOUT)

# File descriptors a KME process needs besides its servers' connections: stores, audit
# logs and heads, peer-link client pools, link channels, the PKI files while loading.
FILE_RESERVE = 256
DEFAULT_MAX_CONNECTIONS = 1024
_SETTINGS = ("max_connections", "tls_handshake_timeout_s", "header_timeout_s",
             "keep_alive_s", "tls_groups")


def _seconds(field: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise ParameterError(field, value, f"must be a number of seconds in [{low:g}, {high:g}]")
    return float(value)


@dataclass(frozen=True)
class ConnectionLimits:
    """One KME server's connection limits.

    Attributes:
        max_connections: most sockets open at once, handshaking or not; None sizes it
            from the open-file limit at start (:func:`check_file_budget`).
        tls_handshake_timeout_s: a connection that has not completed its TLS handshake
            by then is closed (asyncio's default is 60 s).
        header_timeout_s: a connection that has not sent a request's complete headers
            within this time of its handshake (or of its previous response) is closed
            (slow headers, or an idle connection that never asks).
        keep_alive_s: an idle connection is closed this long after its last response.
        tls_groups: the TLS key-exchange groups the listener accepts, most preferred
            first (OpenSSL 4 names, colon-separated): by default the hybrid
            post-quantum X25519MLKEM768, then X25519 for classical clients
            (:mod:`corridor.kms.tls_openssl`). ``None`` serves with Python's ``ssl``
            module instead (system OpenSSL, classical groups only).
    """

    max_connections: int | None = None
    tls_handshake_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 30.0
    tls_groups: str | None = DEFAULT_TLS_GROUPS

    def __post_init__(self) -> None:
        cap = self.max_connections
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                                or not 8 <= cap <= 1_000_000):
            raise ParameterError("max_connections", cap, "must be an integer in [8, 1000000]")
        _seconds("tls_handshake_timeout_s", self.tls_handshake_timeout_s, 0.1, 60.0)
        _seconds("header_timeout_s", self.header_timeout_s, 0.1, 300.0)
        _seconds("keep_alive_s", self.keep_alive_s, 1.0, 3600.0)
        if self.tls_groups is not None:
            check_tls_groups(self.tls_groups)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> ConnectionLimits:
        """From the connection settings of a ``[kme]``/``[[kmes]]`` table (other keys are
        ignored: they belong to :class:`~corridor.kms.config.KmeConfig`)."""
        settings = {k: v for k, v in data.items() if k in _SETTINGS}
        try:
            return cls(**settings)
        except ParameterError as exc:
            raise ParameterError(f"{where}.{exc.field}", exc.value, exc.allowed,
                                 exc.hint) from None

    def with_cap(self, max_connections: int) -> ConnectionLimits:
        """These limits with a concrete connection cap."""
        return dataclasses.replace(self, max_connections=max_connections)


SETTING_NAMES = frozenset(_SETTINGS)


def open_file_limit() -> int | None:
    """The process's soft open-file limit (None where it is unknown or unlimited)."""
    if resource is None:  # pragma: no cover
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit to the hard limit; returns the soft limit now."""
    if resource is None:  # pragma: no cover
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        # Some kernels refuse RLIM_INFINITY for NOFILE; fall back to a large number.
        for target in (hard, 1 << 20):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    return open_file_limit()


def hard_cap(max_connections: int) -> int:
    """Sockets a guard may hold at once: the cap plus as many evicted ones still closing.

    asyncio accepts a whole batch of connections before an evicted socket's transport
    sees its end and closes it, so a burst can evict up to the cap in one batch.
    """
    return 2 * max_connections


def check_file_budget(limits: Mapping[str, ConnectionLimits],
                      file_limit: int | None) -> dict[str, ConnectionLimits]:
    """Concrete caps for the KMEs of one process, checked against the open-file limit.

    A KME without ``max_connections`` gets ``min(1024, its share of the limit)``; the
    sum of every KME's :func:`hard_cap` plus :data:`FILE_RESERVE` must stay below
    ``file_limit``, else ParameterError naming the KME's ``max_connections``.
    """
    out: dict[str, ConnectionLimits] = {}
    unset = [kme for kme, lim in limits.items() if lim.max_connections is None]
    fixed = sum(hard_cap(lim.max_connections) for lim in limits.values()
                if lim.max_connections is not None)
    if file_limit is None:
        share = DEFAULT_MAX_CONNECTIONS
    else:
        free = file_limit - FILE_RESERVE - fixed
        share = math.floor(free / max(1, len(unset)) / 2) if unset else 0
        share = min(DEFAULT_MAX_CONNECTIONS, share)
    for kme_id, lim in limits.items():
        if lim.max_connections is None:
            if share < 8:
                raise ParameterError(
                    f"kmes.{kme_id}.max_connections", None,
                    f"no room under the open-file limit {file_limit} for this KME's "
                    "connections; raise `ulimit -n` or lower other KMEs' max_connections")
            lim = lim.with_cap(share)
        out[kme_id] = lim
    if file_limit is not None:
        total = sum(hard_cap(lim.max_connections or 0) for lim in out.values())
        if total + FILE_RESERVE > file_limit:
            worst = max(out, key=lambda k: out[k].max_connections or 0)
            raise ParameterError(
                f"kmes.{worst}.max_connections", out[worst].max_connections,
                f"the KMEs of this process may hold {total} sockets (twice their caps: "
                f"evicted ones still closing) and need {FILE_RESERVE} more files, over the "
                f"open-file limit {file_limit}; lower max_connections or raise `ulimit -n`")
    return out


class RefusalReporter:
    """Counts refusals and logs them at warning level, at most one line per interval.

    The first refusal after a quiet interval is logged at once; later ones are summed
    and logged, with their counts by reason, when the interval has passed (on the next
    refusal, or by :meth:`flush`, which the server calls periodically and at shutdown).
    """

    def __init__(self, kme_id: str, *, count: Callable[[str], None] | None = None,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = _log, label: str | None = None) -> None:
        self.kme_id = kme_id
        self.label = label or f"KME {kme_id}"  # who refused, as the log line names it
        self._count = count
        self.interval_s = interval_s
        self._clock = clock
        self._logger = logger
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._last_line_s: float | None = None
        self.totals: dict[str, int] = {}
        self.lines = 0

    def refused(self, reason: str, detail: str = "") -> None:
        """One refused or timed-out connection."""
        if self._count is not None:
            self._count(reason)
        with self._lock:
            self.totals[reason] = self.totals.get(reason, 0) + 1
            now = self._clock()
            if self._last_line_s is None or now - self._last_line_s >= self.interval_s:
                pending, self._pending = self._pending, {}
                pending[reason] = pending.get(reason, 0) + 1
                self._write(pending, now, detail)
            else:
                self._pending[reason] = self._pending.get(reason, 0) + 1

    def flush(self, *, force: bool = False) -> None:
        """Log what was summed, if the interval has passed (or ``force``)."""
        with self._lock:
            now = self._clock()
            if self._pending and (force or self._last_line_s is None
                                  or now - self._last_line_s >= self.interval_s):
                pending, self._pending = self._pending, {}
                self._write(pending, now, "")

    def _write(self, counts: Mapping[str, int], now: float, detail: str) -> None:
        self._last_line_s = now
        self.lines += 1
        text = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        self._logger.warning("%s refused or closed %d connection(s) (%s)%s; at most one "
                             "such line per %g s%s", self.label, sum(counts.values()), text,
                             f": {detail}" if detail else "", self.interval_s,
                             ", every one counted in corridor_connections_refused_total"
                             if self._count is not None else "")


class _Tracked:
    __slots__ = ("accepted_s", "anonymous", "established", "evicted", "fileno")

    def __init__(self, fileno: int, accepted_s: float) -> None:
        self.fileno = fileno
        self.accepted_s = accepted_s
        self.established = False
        self.anonymous = False  # handshake done without a client certificate
        self.evicted = False


class ConnectionGuard:
    """Every open connection of one KME server, from accept to close (module docstring).

    Called from the server's event loop thread (accept, handshake done, close); a lock
    keeps the counts right if a socket is closed from another thread.
    """

    def __init__(self, limits: ConnectionLimits, reporter: RefusalReporter, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limits.max_connections is None:
            raise ParameterError("max_connections", None,
                                 "must be set (check_file_budget sizes it)")
        self.limits = limits
        self.cap = limits.max_connections
        self.hard_cap = hard_cap(self.cap)
        self.reporter = reporter
        self._clock = clock
        self._lock = threading.Lock()
        # Accept order; the handshaking ones are eviction candidates, oldest first.
        self._open: OrderedDict[int, _Tracked] = OrderedDict()
        self._sockets: weakref.WeakValueDictionary[int, socket.socket] = \
            weakref.WeakValueDictionary()
        self.accepted = 0

    @property
    def open_count(self) -> int:
        """Sockets open now (handshaking, established, or evicted and closing)."""
        return len(self._open)

    @property
    def established_count(self) -> int:
        """Open sockets whose TLS handshake completed."""
        with self._lock:
            return sum(1 for t in self._open.values() if t.established)

    def admit(self, conn: socket.socket) -> bool:
        """Register an accepted socket, or refuse it (the caller resets and closes it)."""
        evict: socket.socket | None = None
        with self._lock:
            if len(self._open) >= self.cap:
                # A socket dropped without close() (never expected from asyncio) must not
                # hold a place for ever: its weak reference is gone.
                for stale in [f for f in self._open if f not in self._sockets]:
                    del self._open[stale]
            live = sum(1 for t in self._open.values() if not t.evicted) \
                if len(self._open) >= self.cap else len(self._open)
            if live >= self.cap:
                victim = next((t for t in self._open.values()
                               if not t.established and not t.evicted), None)
                if victim is None or len(self._open) >= self.hard_cap:
                    admitted = False
                else:
                    victim.evicted = True
                    evict = self._sockets.get(victim.fileno)
                    admitted = True
            else:
                admitted = True
            if admitted:
                fileno = conn.fileno()
                self._open[fileno] = _Tracked(fileno, self._clock())
                self._sockets[fileno] = conn
                self.accepted += 1
        if evict is not None:
            # Shut down, not closed: asyncio still owns the descriptor and closes it
            # once its reader sees the end of the stream (in this loop's next turn).
            with contextlib.suppress(OSError):
                evict.shutdown(socket.SHUT_RDWR)
            self.reporter.refused(REASON_EVICTED, "the oldest connection still in its TLS "
                                  f"handshake made room (cap {self.cap})")
        if not admitted:
            self.reporter.refused(REASON_LIMIT, f"{self.cap} connections open, all past "
                                  "their TLS handshake")
        return admitted

    def established(self, fileno: int) -> None:
        """The connection on ``fileno`` completed its TLS handshake."""
        with self._lock:
            tracked = self._open.get(fileno)
            if tracked is not None:
                tracked.established = True

    def anonymous(self, fileno: int) -> None:
        """The connection on ``fileno`` completed its TLS handshake without a client
        certificate: still evictable (it only ever gets a 401), but its close is no
        failed handshake (curl without ``--cert`` was counted and logged as one)."""
        with self._lock:
            tracked = self._open.get(fileno)
            if tracked is not None:
                tracked.anonymous = True

    def closed(self, fileno: int) -> None:
        """The socket on ``fileno`` is being closed."""
        with self._lock:
            tracked = self._open.pop(fileno, None)
            self._sockets.pop(fileno, None)
        if tracked is None or tracked.established or tracked.evicted or tracked.anonymous:
            return
        age_s = self._clock() - tracked.accepted_s
        if age_s >= 0.95 * self.limits.tls_handshake_timeout_s:
            self.reporter.refused(REASON_HANDSHAKE_TIMEOUT, "no TLS handshake within "
                                  f"{self.limits.tls_handshake_timeout_s:g} s")
        else:
            self.reporter.refused(REASON_HANDSHAKE_FAILED)


class _GuardedConnection(socket.socket):
    """An accepted socket that tells its guard when it closes."""

    _guard: ConnectionGuard | None = None
    _guard_fileno = -1

    def close(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.closed(self._guard_fileno)
        super().close()


class GuardedListener(socket.socket):
    """A listening socket whose ``accept`` admits connections through a guard.

    asyncio's selector event loop accepts with ``sock.accept()`` on the socket object it
    was given; a refused connection is reset and closed here and the loop goes on to
    the next one, so a flood never reaches the TLS layer or uses a descriptor for long.
    """

    guard: ConnectionGuard

    @classmethod
    def wrap(cls, sock: socket.socket, guard: ConnectionGuard) -> GuardedListener:
        """Take over ``sock`` (a bound socket; it is detached and must not be used)."""
        listener = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        listener.guard = guard
        return listener

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            fd, address = self._accept()  # type: ignore[attr-defined]
            conn = _GuardedConnection(self.family, self.type, self.proto, fileno=fd)
            if socket.getdefaulttimeout() is None and self.gettimeout():
                conn.setblocking(True)
            if self.guard.admit(conn):
                conn._guard = self.guard
                conn._guard_fileno = fd
                return conn, address
            with contextlib.suppress(OSError):
                # Linger 0: the close sends a reset and frees the descriptor at once.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
