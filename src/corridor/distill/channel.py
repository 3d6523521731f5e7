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
from dataclasses import dataclass
from typing import Protocol

from corridor.errors import ProtocolAbort

DEFAULT_TIMEOUT_S = 120.0


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

    def send(self, kind: str, payload: bytes) -> None:
        """Send one message of type ``kind``."""
        ...

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Receive the next message, which must be of type ``kind``; else ProtocolAbort."""
        ...

    def close(self) -> None:
        """Release the transport."""
        ...


class QueueEndpoint:
    """An in-process endpoint: messages go through a pair of thread-safe queues."""

    def __init__(self, outbox: queue.Queue[tuple[str, bytes]],
                 inbox: queue.Queue[tuple[str, bytes]], name: str) -> None:
        self._outbox = outbox
        self._inbox = inbox
        self.name = name
        self.stats = ChannelStats()

    def send(self, kind: str, payload: bytes) -> None:
        self._outbox.put((kind, bytes(payload)))
        self.stats.on_send(len(payload) + len(kind))

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
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


def in_process_pair() -> tuple[QueueEndpoint, QueueEndpoint]:
    """Two connected endpoints (Alice's, Bob's)."""
    a_to_b: queue.Queue[tuple[str, bytes]] = queue.Queue()
    b_to_a: queue.Queue[tuple[str, bytes]] = queue.Queue()
    return QueueEndpoint(a_to_b, b_to_a, "alice"), QueueEndpoint(b_to_a, a_to_b, "bob")
