"""Shared pieces of the session tests: an in-memory QKD key source, an event sink that
keeps what it is given, a man in the middle, and a runner for both sides of a handshake."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from corridor.hybrid.policy import DecisionRecorder
from corridor.hybrid.qkd import QkdKeyMissing
from corridor.hybrid.session import SessionKey
from corridor.hybrid.transport import ByteTransport, memory_pair
from corridor.kms.interface import DeliveredKey
from corridor.logs import KeyMaterialRefused, public_field_violation


class SharedPool:
    """Both KMEs of a link in one dict: what ``new_key`` hands out, ``key_by_id`` finds."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.issued: list[str] = []


class FakeQkd:
    """A QkdKeySource over a :class:`SharedPool`; ``fail`` makes every call miss with
    that reason (``pool_empty``, ``kme_unreachable``, ...)."""

    key_size_bits = 256

    def __init__(self, pool: SharedPool, fail: str | None = None) -> None:
        self.pool = pool
        self.fail = fail

    def new_key(self, slave_sae_id: str) -> DeliveredKey:
        if self.fail:
            raise QkdKeyMissing(self.fail)
        key = DeliveredKey(str(uuid.uuid4()), os.urandom(32))
        self.pool.keys[key.key_id] = key.key
        self.pool.issued.append(key.key_id)
        return key

    def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
        if self.fail:
            raise QkdKeyMissing(self.fail)
        if key_id not in self.pool.keys:
            raise QkdKeyMissing("key_not_found")
        return DeliveredKey(key_id, self.pool.keys.pop(key_id))


class ListSink:
    """An EventSink that keeps ``(event, fields)`` and, like the audit log, refuses a
    field that breaks the public field rule (corridor.logs)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **fields: Any) -> None:
        for name, value in fields.items():
            violation = public_field_violation(name, value)
            if violation is not None:
                raise KeyMaterialRefused(*violation)
        self.events.append((event, fields))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


def recorder() -> tuple[DecisionRecorder, ListSink]:
    sink = ListSink()
    return DecisionRecorder(sink, CollectorRegistry()), sink


def count(rec: DecisionRecorder, policy: str, inputs: str, outcome: str) -> float:
    value = rec.registry.get_sample_value("corridor_hybrid_sessions_total",
                                          {"policy": policy, "inputs": inputs,
                                           "outcome": outcome})
    return value or 0.0


class Tamper:
    """A transport end that passes messages through ``change(index, message)`` on send
    (index counts the messages this end sent)."""

    def __init__(self, inner: ByteTransport, change: Callable[[int, bytes], bytes]) -> None:
        self.inner = inner
        self.change = change
        self.sent = 0

    def send(self, message: bytes) -> None:
        changed = self.change(self.sent, message)
        self.sent += 1
        self.inner.send(changed)

    def recv(self) -> bytes:
        return self.inner.recv()

    def close(self) -> None:
        self.inner.close()


def flip(message: bytes, offset_from_end: int) -> bytes:
    data = bytearray(message)
    data[len(data) - offset_from_end] ^= 0x01
    return bytes(data)


def run_both(initiate: Callable[[ByteTransport], SessionKey],
             respond: Callable[[ByteTransport], SessionKey],
             wrap_responder: Callable[[ByteTransport], ByteTransport] | None = None,
             wrap_initiator: Callable[[ByteTransport], ByteTransport] | None = None,
             ) -> tuple[SessionKey | BaseException, SessionKey | BaseException]:
    """Run both sides on a memory pair; each result is the key or the exception."""
    a, b = memory_pair(timeout_s=5.0)
    ta: ByteTransport = wrap_initiator(a) if wrap_initiator else a
    tb: ByteTransport = wrap_responder(b) if wrap_responder else b
    results: dict[str, SessionKey | BaseException] = {}

    def side(name: str, run: Callable[[ByteTransport], SessionKey], t: ByteTransport) -> None:
        try:
            results[name] = run(t)
        except BaseException as exc:
            results[name] = exc

    thread = threading.Thread(target=side, args=("r", respond, tb))
    thread.start()
    side("i", initiate, ta)
    thread.join(timeout=10)
    return results["i"], results["r"]
