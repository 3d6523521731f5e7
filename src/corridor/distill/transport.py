"""The TCP transport of the classical channel: Alice and Bob in two OS processes.

This module owns :class:`TcpEndpoint` (a :class:`~corridor.distill.channel.ChannelEndpoint`
over one TCP connection), :func:`listen` (wait for one peer), :class:`TcpListener` (a
bound port that accepts one peer after another, for a party that reconnects),
:func:`connect` (reach it, retrying while it is not up yet) and :func:`parse_host_port`
for ``HOST:PORT`` options. It moves bytes only; authenticity comes from wrapping the endpoint in
:class:`~corridor.distill.auth.AuthenticatedChannel`, which is what the distillation
stages always do.

Wire format (one frame per message, all integers big-endian)::

    u32  body length B = 1 + K + P   (at most ``max_frame_bytes``)
    u8   K, the type length (1..255)
    K    the type, ASCII
    P    the payload

A frame longer than the cap is refused before anything is allocated. Every failure is
a :class:`~corridor.errors.ProtocolAbort` with a reason: ``connection_refused``,
``connection_failed``, ``listen_failed``, ``channel_timeout``, ``peer_closed``,
``frame_too_large``, ``malformed_frame``, ``unexpected_message``, ``channel_broken``
(any use after a failure that may have left the byte stream out of step), and
``peer_aborted`` (the peer's best-effort, unauthenticated ``session.abort`` frame arrived
where another message was expected; its detail carries the peer's stated reason, which
:func:`peer_abort_reason` reads back).

:data:`CONNECTION_LOSS_REASONS` names the reasons that only say the connection is gone
(refused, reset, closed, silent): a caller may reconnect after them. They never cover a
frame that arrived altered: that fails the authenticated channel above this one.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable

from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelStats, Payload
from corridor.errors import ParameterError, ProtocolAbort

#: Largest frame body accepted or sent unless the caller says otherwise.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")
_MAX_KIND_BYTES = 255

#: The frame type of a peer's best-effort notice that it stops the session (sent raw,
#: unauthenticated, by ``corridor.distill.pipeline``).
PEER_ABORT_KIND = "session.abort"
_PEER_ABORT_PREFIX = "the peer stopped the session: "

CONNECTION_LOSS_REASONS = frozenset({
    "peer_closed", "channel_timeout", "connection_refused", "connection_failed",
    "listen_failed",
})
"""Transport failures that mean only "the connection is gone or not up yet"."""


def peer_abort_reason(exc: ProtocolAbort) -> str | None:
    """The reason a ``peer_aborted`` failure carries (the peer's own word, unauthenticated:
    anyone on the path could have written it), or None for any other failure."""
    if exc.reason != "peer_aborted" or _PEER_ABORT_PREFIX not in exc.detail:
        return None
    stated = exc.detail.split(_PEER_ABORT_PREFIX, 1)[1].strip()
    return stated if stated.isidentifier() and len(stated) <= 64 else "unreadable"


def _check_port(field: str, port: object, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(port, int) or isinstance(port, bool) or not low <= port <= 65535:
        raise ParameterError(field, port, f"must be an integer from {low} to 65535")
    return port


def _check_positive(field: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ParameterError(field, value, "must be a positive number of seconds")
    return float(value)


def parse_host_port(text: str, field: str = "address", allow_zero: bool = False) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) into its parts, or ParameterError."""
    if not isinstance(text, str) or ":" not in text:
        raise ParameterError(field, text, "must look like HOST:PORT, e.g. 127.0.0.1:7700")
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port_text.isdigit():
        raise ParameterError(field, text, "must look like HOST:PORT, e.g. 127.0.0.1:7700")
    return host, _check_port(field, int(port_text), allow_zero)


class TcpEndpoint:
    """One side of the classical channel over a connected TCP socket.

    Args:
        sock: a connected stream socket (the endpoint owns and closes it).
        name: a label for messages ("alice", "bob", or the peer address).
        max_frame_bytes: cap on a frame body, both directions.
        send_timeout_s: how long a send may wait for the peer to take the bytes.
    """

    def __init__(self, sock: socket.socket, name: str,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 send_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not isinstance(max_frame_bytes, int) or max_frame_bytes < 2:
            raise ParameterError("max_frame_bytes", max_frame_bytes,
                                 "must be an integer of at least 2")
        self._sock = sock
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self._send_timeout_s = _check_positive("send_timeout_s", send_timeout_s)
        self._buffer = bytearray()
        self._broken: str | None = None
        self._closed = False
        self.stats = ChannelStats()

    def _check_usable(self) -> None:
        if self._closed:
            raise ProtocolAbort("channel_closed", f"{self.name}: the endpoint was closed")
        if self._broken is not None:
            raise ProtocolAbort("channel_broken", f"{self.name}: unusable after "
                                f"an earlier failure ({self._broken})")

    def _break(self, reason: str, detail: str) -> ProtocolAbort:
        self._broken = reason
        return ProtocolAbort(reason, f"{self.name}: {detail}")

    def send(self, kind: str, payload: Payload) -> None:
        """Send one frame of type ``kind``."""
        self._check_usable()
        if not isinstance(kind, str) or not kind or not kind.isascii():
            raise ParameterError("kind", kind, "must be a non-empty ASCII string")
        kind_bytes = kind.encode("ascii")
        if len(kind_bytes) > _MAX_KIND_BYTES:
            raise ParameterError("kind", f"{len(kind_bytes)} characters", "must be at most 255")
        body_length = 1 + len(kind_bytes) + len(payload)
        if body_length > self.max_frame_bytes:
            raise ProtocolAbort("frame_too_large", f"{self.name}: a {body_length}-byte "
                                f"{kind!r} frame exceeds the cap of {self.max_frame_bytes} "
                                f"bytes")
        frame = b"".join((_LENGTH.pack(body_length), bytes((len(kind_bytes),)), kind_bytes,
                          payload))
        try:
            self._sock.settimeout(self._send_timeout_s)
            self._sock.sendall(frame)
        except TimeoutError:
            raise self._break("channel_timeout", f"peer took no data for "
                              f"{self._send_timeout_s} s") from None
        except OSError as exc:
            raise self._break("peer_closed", f"sending failed ({exc.strerror or exc})") from None
        self.stats.on_send(len(frame))

    def _read_exact(self, count: int, deadline: float, started_frame: bool) -> bytes:
        while len(self._buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            try:
                # Bounded reads: recv(n) allocates n bytes up front, whatever arrives.
                chunk = self._sock.recv(min(max(65536, count - len(self._buffer)), 1 << 20))
            except TimeoutError:
                raise
            except OSError as exc:
                raise self._break("peer_closed",
                                  f"connection lost ({exc.strerror or exc})") from None
            if not chunk:
                where = "in the middle of a frame" if started_frame or self._buffer else ""
                raise self._break("peer_closed", f"the peer closed the connection {where}"
                                  .rstrip())
            self._buffer.extend(chunk)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Receive the next frame, which must be of type ``kind``."""
        self._check_usable()
        deadline = time.monotonic() + _check_positive("timeout_s", timeout_s)
        header_read = False
        try:
            (body_length,) = _LENGTH.unpack(self._read_exact(_LENGTH.size, deadline, False))
            header_read = True
            if body_length > self.max_frame_bytes:
                raise self._break("frame_too_large", f"the peer announced a {body_length}-byte "
                                  f"frame; the cap is {self.max_frame_bytes} bytes")
            if body_length < 2:
                raise self._break("malformed_frame", f"a {body_length}-byte frame body is "
                                  f"too short for a type")
            body = self._read_exact(body_length, deadline, True)
        except TimeoutError:
            # The stream is out of step only if part of a frame has been read already.
            if header_read or self._buffer:
                self._broken = "channel_timeout"
            raise ProtocolAbort("channel_timeout", f"{self.name}: no complete {kind!r} "
                                f"message within {timeout_s} s") from None
        kind_length = body[0]
        if kind_length == 0 or 1 + kind_length > body_length:
            raise self._break("malformed_frame", f"type length {kind_length} does not fit "
                              f"a {body_length}-byte frame")
        got_kind = body[1:1 + kind_length].decode("ascii", errors="replace")
        self.stats.on_receive(_LENGTH.size + body_length)
        if got_kind == PEER_ABORT_KIND and kind != PEER_ABORT_KIND:
            # The peer's session is over: nothing more will follow on this connection.
            stated = body[1 + kind_length:][:64].decode("ascii", errors="replace")
            raise self._break("peer_aborted", f"{_PEER_ABORT_PREFIX}{stated}")
        if got_kind != kind:
            raise ProtocolAbort("unexpected_message",
                                f"{self.name}: expected {kind!r}, got {got_kind!r}")
        return body[1 + kind_length:]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):  # already gone: nothing left to tell the peer
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def __enter__(self) -> TcpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpEndpoint({self.name})"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen(host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S, *,
           max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
           on_listening: Callable[[int], None] | None = None,
           name: str | None = None, send_timeout_s: float | None = None) -> TcpEndpoint:
    """Listen on ``host:port``, accept exactly one peer, and return its endpoint.

    ``port`` 0 picks a free port; ``on_listening(port)`` is called with the bound port
    before waiting, so a caller can tell the peer where to connect. ``send_timeout_s``
    (default ``timeout_s``) is the endpoint's send timeout, for a caller that waits for
    the peer in short tries.
    """
    _check_port("port", port, allow_zero=True)
    timeout = _check_positive("timeout_s", timeout_s)
    try:
        server = socket.create_server((host, port), family=_family(host), backlog=1)
    except OSError as exc:
        raise ProtocolAbort("listen_failed", f"cannot listen on {host}:{port} "
                            f"({exc.strerror or exc})") from None
    with server:
        bound_port = int(server.getsockname()[1])
        if on_listening is not None:
            on_listening(bound_port)
        server.settimeout(timeout)
        try:
            sock, peer = server.accept()
        except TimeoutError:
            raise ProtocolAbort("channel_timeout", f"no peer connected to {host}:{bound_port} "
                                f"within {timeout_s} s") from None
    return TcpEndpoint(sock, name or f"{host}:{bound_port}<-{peer[0]}:{peer[1]}",
                       max_frame_bytes=max_frame_bytes,
                       send_timeout_s=timeout if send_timeout_s is None
                       else _check_positive("send_timeout_s", send_timeout_s))


class TcpListener:
    """A bound, listening TCP port that accepts one peer at a time, again and again.

    A party that reconnects after a lost connection keeps its port bound (the peer's
    next attempt is never refused while this side is between two sessions). Each
    :meth:`accept` returns a fresh :class:`TcpEndpoint`; the listener itself carries no
    session state.

    Args:
        host, port: where to listen (``port`` 0 picks a free port, see :attr:`port`).
        max_frame_bytes: passed to every endpoint.
        send_timeout_s: every endpoint's send timeout.
        name: a label for the endpoints.
    """

    def __init__(self, host: str, port: int, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 send_timeout_s: float = DEFAULT_TIMEOUT_S, name: str | None = None) -> None:
        _check_port("port", port, allow_zero=True)
        self._send_timeout_s = _check_positive("send_timeout_s", send_timeout_s)
        self.max_frame_bytes = max_frame_bytes
        try:
            self._server = socket.create_server((host, port), family=_family(host), backlog=1)
        except OSError as exc:
            raise ProtocolAbort("listen_failed", f"cannot listen on {host}:{port} "
                                f"({exc.strerror or exc})") from None
        self.host = host
        self.port = int(self._server.getsockname()[1])
        self.name = name or f"{host}:{self.port}"
        self._closed = False

    def accept(self, timeout_s: float) -> TcpEndpoint:
        """The next peer's endpoint, or ProtocolAbort ``channel_timeout`` within
        ``timeout_s`` (``channel_closed`` once the listener is closed)."""
        if self._closed:
            raise ProtocolAbort("channel_closed", f"{self.name}: the listener was closed")
        self._server.settimeout(_check_positive("timeout_s", timeout_s))
        try:
            sock, _peer = self._server.accept()
        except TimeoutError:
            raise ProtocolAbort("channel_timeout", f"no peer connected to {self.name} "
                                f"within {timeout_s} s") from None
        except OSError as exc:
            raise ProtocolAbort("connection_failed", f"{self.name}: accepting failed "
                                f"({exc.strerror or exc})") from None
        return TcpEndpoint(sock, self.name, max_frame_bytes=self.max_frame_bytes,
                           send_timeout_s=self._send_timeout_s)

    def close(self) -> None:
        """Stop listening (idempotent)."""
        if not self._closed:
            self._closed = True
            self._server.close()

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpListener({self.name})"


def connect(host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = 10, *,
            retry_interval_s: float = 0.2, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
            name: str | None = None) -> TcpEndpoint:
    """Connect to a listening peer, retrying ``retries`` times while it refuses."""
    _check_port("port", port, allow_zero=False)
    timeout = _check_positive("timeout_s", timeout_s)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ParameterError("retries", retries, "must be a non-negative integer")
    _check_positive("retry_interval_s", retry_interval_s)
    for attempt in range(retries + 1):
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            if attempt == retries:
                raise ProtocolAbort("connection_refused", f"{host}:{port} refused "
                                    f"{retries + 1} attempt(s); is the peer listening?") from None
            time.sleep(retry_interval_s)
        except TimeoutError:
            raise ProtocolAbort("channel_timeout", f"connecting to {host}:{port} took longer "
                                f"than {timeout_s} s") from None
        except OSError as exc:
            raise ProtocolAbort("connection_failed", f"cannot reach {host}:{port} "
                                f"({exc.strerror or exc})") from None
        else:
            return TcpEndpoint(sock, name or f"->{host}:{port}", max_frame_bytes=max_frame_bytes,
                               send_timeout_s=timeout)
    raise AssertionError("unreachable")  # pragma: no cover
