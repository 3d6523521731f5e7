"""The classical channel: the only thing Alice and Bob share during distillation.

A :class:`ChannelEndpoint` sends and receives typed messages (a short ASCII type and
a bytes payload) and counts what it moves. ``in_process_pair`` gives two connected
endpoints backed by queues (Alice and Bob then run in two threads). The TCP
transport and the Wegman-Carter authentication wrapper live in ``transport`` and
``auth``; all of them satisfy the same protocol, so the stages never know which one
they hold.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from corridor.errors import ProtocolAbort

DEFAULT_TIMEOUT_S = 120.0

#: What a message's payload may be: bytes, or a read-only view that nobody writes again.
Payload = bytes | memoryview

#: Payloads at least this long are assembled in numpy memory (see :func:`join_buffers`).
LARGE_PAYLOAD_BYTES = 1 << 16


def join_buffers(parts: Iterable[bytes | memoryview]) -> Payload:
    """Concatenate bytes-like parts with one copy: ``bytes`` when short, else a read-only
    ``memoryview`` of a fresh numpy buffer.

    Why not always ``bytes``: a block's sifting message runs to megabytes, and a fresh
    ``bytes`` object that large is first touched page by 4 KiB page, several times
    slower than the copy itself; numpy asks the kernel for huge pages for large
    buffers. A payload built here is never written again, so the view can be handed
    on without another copy (:class:`QueueEndpoint` keeps read-only views as they are).
    """
    views = [memoryview(part).cast("B") for part in parts]
    total = sum(len(v) for v in views)
    if total < LARGE_PAYLOAD_BYTES:
        return b"".join(views)
    buffer = np.empty(total, dtype=np.uint8)
    at = 0
    for v in views:
        buffer[at:at + len(v)] = np.frombuffer(v, dtype=np.uint8)
        at += len(v)
    return buffer.data.toreadonly()


@dataclass
class ChannelStats:
    """What one endpoint has moved."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: int = 0
    _last_was_send: bool = False

    def on_send(self, size: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += size
        self._last_was_send = True

    def on_receive(self, size: int) -> None:
        if self._last_was_send:
            self.round_trips += 1
        self.messages_received += 1
        self.bytes_received += size
        self._last_was_send = False

    def as_dict(self) -> dict[str, int]:
        return {"messages_sent": self.messages_sent, "messages_received": self.messages_received,
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "round_trips": self.round_trips}


class ChannelEndpoint(Protocol):
    """One side of the classical channel."""

    stats: ChannelStats

    def send(self, kind: str, payload: Payload) -> None:
        """Send one message of type ``kind`` (the payload is not written afterwards)."""
        ...

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Receive the next message, which must be of type ``kind``; else ProtocolAbort."""
        ...

    def close(self) -> None:
        """Release the transport."""
        ...


class QueueEndpoint:
    """An in-process endpoint: messages go through a pair of thread-safe queues."""

    def __init__(self, outbox: queue.Queue[tuple[str, Payload]],
                 inbox: queue.Queue[tuple[str, Payload]], name: str) -> None:
        self._outbox = outbox
        self._inbox = inbox
        self.name = name
        self.stats = ChannelStats()

    def send(self, kind: str, payload: Payload) -> None:
        # bytes and read-only byte views (join_buffers) are not written again: passed on
        # uncopied. Anything else is copied, so that the sender may reuse its buffer.
        if not isinstance(payload, bytes) and not (
                isinstance(payload, memoryview) and payload.readonly
                and payload.format == "B" and payload.c_contiguous):
            payload = bytes(payload)
        self._outbox.put((kind, payload))
        self.stats.on_send(len(payload) + len(kind))

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        payload = self._take(kind, timeout_s)
        return payload if isinstance(payload, bytes) else bytes(payload)

    def recv_view(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> memoryview:
        """Like :meth:`recv`, as a read-only view of the payload (never a copy)."""
        return memoryview(self._take(kind, timeout_s)).toreadonly()

    def _take(self, kind: str, timeout_s: float) -> Payload:
        try:
            got_kind, payload = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            raise ProtocolAbort("channel_timeout",
                                f"{self.name}: no {kind!r} message within {timeout_s} s") from None
        self.stats.on_receive(len(payload) + len(got_kind))
        if got_kind != kind:
            raise ProtocolAbort("unexpected_message",
                                f"{self.name}: expected {kind!r}, got {got_kind!r}")
        return payload

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"QueueEndpoint({self.name})"


def receive_view(channel: ChannelEndpoint, kind: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> memoryview:
    """The next message's payload as a read-only view, without copying it when the
    endpoint can hand it over that way (``AuthenticatedChannel.recv_view``)."""
    recv_view = getattr(channel, "recv_view", None)
    if recv_view is not None:
        view = recv_view(kind, timeout_s)
        assert isinstance(view, memoryview)
        return view
    return memoryview(channel.recv(kind, timeout_s)).toreadonly()


def in_process_pair() -> tuple[QueueEndpoint, QueueEndpoint]:
    """Two connected endpoints (Alice's, Bob's)."""
    a_to_b: queue.Queue[tuple[str, Payload]] = queue.Queue()
    b_to_a: queue.Queue[tuple[str, Payload]] = queue.Queue()
    return QueueEndpoint(a_to_b, b_to_a, "alice"), QueueEndpoint(b_to_a, a_to_b, "bob")
