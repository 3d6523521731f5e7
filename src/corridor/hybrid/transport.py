"""Byte transports for a hybrid handshake: whole messages over anything that carries bytes.

:class:`ByteTransport` is the seam: ``send(message)`` and ``recv() -> message`` move one
whole message (the session protocol needs nothing else). Two implementations:

- :func:`memory_pair`: two connected in-process endpoints (tests, benchmarks);
- :class:`SocketTransport`: any connected stream socket (TCP, ``socket.socketpair()``),
  each message framed as a 4-byte big-endian length and the message, at most
  :data:`MAX_FRAME_BYTES`.

The transport is not trusted: the handshake authenticates what it carries (key
confirmation), so a transport only has to deliver bytes or fail with
:class:`~corridor.hybrid.errors.TransportError`.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
from typing import Protocol

from corridor.hybrid.errors import TransportError

MAX_FRAME_BYTES = 65_536
"""The largest message a transport accepts (a hello is about 1.3 KB)."""

_LENGTH = struct.Struct(">I")


class ByteTransport(Protocol):
    """Carries whole messages between the two SAEs of a session."""

    def send(self, message: bytes) -> None:
        """Send one message."""

    def recv(self) -> bytes:
        """The next message; :class:`TransportError` when closed or timed out."""

    def close(self) -> None:
        """Close this end."""


_CLOSED = object()


class MemoryTransport:
    """One end of an in-process pair (:func:`memory_pair`)."""

    def __init__(self, inbox: queue.SimpleQueue[object], outbox: queue.SimpleQueue[object],
                 timeout_s: float | None) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._timeout_s = timeout_s
        self._closed = False

    def send(self, message: bytes) -> None:
        if self._closed:
            raise TransportError("send on a closed transport", "transport_closed")
        if len(message) > MAX_FRAME_BYTES:
            raise TransportError(f"message of {len(message)} bytes exceeds the "
                                 f"{MAX_FRAME_BYTES}-byte frame limit", "frame_too_large")
        self._outbox.put(bytes(message))

    def recv(self) -> bytes:
        if self._closed:
            raise TransportError("receive on a closed transport", "transport_closed")
        try:
            item = self._inbox.get(timeout=self._timeout_s)
        except queue.Empty:
            raise TransportError(f"no message within {self._timeout_s:g} s",
                                 "transport_timeout") from None
        if item is _CLOSED:
            self._closed = True
            raise TransportError("the peer closed the transport", "transport_closed")
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put(_CLOSED)

    def __repr__(self) -> str:
        return f"MemoryTransport(closed={self._closed})"


def memory_pair(timeout_s: float | None = 10.0) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-process ends; ``recv`` waits at most ``timeout_s``."""
    # SimpleQueue: the C queue, one lock per message instead of queue.Queue's Python
    # condition variables (a handshake crosses the queues four times).
    a_to_b: queue.SimpleQueue[object] = queue.SimpleQueue()
    b_to_a: queue.SimpleQueue[object] = queue.SimpleQueue()
    return MemoryTransport(b_to_a, a_to_b, timeout_s), MemoryTransport(a_to_b, b_to_a, timeout_s)


class SocketTransport:
    """Length-prefixed messages over a connected stream socket (takes ownership of it)."""

    def __init__(self, sock: socket.socket, timeout_s: float | None = 10.0) -> None:
        self._sock = sock
        sock.settimeout(timeout_s)
        self._timeout_s = timeout_s
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Handshake messages are small and latency-bound: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect(cls, host: str, port: int, timeout_s: float | None = 10.0) -> SocketTransport:
        """Connect to a listening peer over TCP."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                                 "transport_unreachable") from None
        return cls(sock, timeout_s)

    def send(self, message: bytes) -> None:
        if len(message) > MAX_FRAME_BYTES:
            raise TransportError(f"message of {len(message)} bytes exceeds the "
                                 f"{MAX_FRAME_BYTES}-byte frame limit", "frame_too_large")
        try:
            self._sock.sendall(_LENGTH.pack(len(message)) + message)
        except OSError as exc:
            raise TransportError(f"send failed: {type(exc).__name__}",
                                 "transport_closed") from None

    def _exact(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            try:
                chunk = self._sock.recv(count - len(chunks))
            except TimeoutError:
                raise TransportError(f"no message within {self._timeout_s:g} s",
                                     "transport_timeout") from None
            except OSError as exc:
                raise TransportError(f"receive failed: {type(exc).__name__}",
                                     "transport_closed") from None
            if not chunk:
                raise TransportError("the peer closed the transport", "transport_closed")
            chunks += chunk
        return bytes(chunks)

    def recv(self) -> bytes:
        (length,) = _LENGTH.unpack(self._exact(_LENGTH.size))
        if length > MAX_FRAME_BYTES:
            raise TransportError(f"the peer announced a {length}-byte message, over the "
                                 f"{MAX_FRAME_BYTES}-byte frame limit", "frame_too_large")
        return self._exact(length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __repr__(self) -> str:
        return f"SocketTransport(fd={self._sock.fileno()})"


__all__ = ["MAX_FRAME_BYTES", "ByteTransport", "MemoryTransport", "SocketTransport",
           "memory_pair"]
