"""``QrngRandomSource``: a ``RandomSource`` whose bytes mix QRNG and OS CSPRNG output.

Every output block of 64 bytes is ``SHA3-512(domain || counter || os || qrng)`` over 64
fresh OS CSPRNG bytes and 64 QRNG bytes that passed the SP 800-90B continuous health
tests. A hash, not XOR: with XOR, a hostile QRNG that can see or predict the OS bytes
(a compromised appliance next to a weak VM, a replayed stream) can choose its own
bytes to cancel them, and a stuck QRNG XORed with itself-correlated data gives away
structure; through a hash (modelled as a random oracle) the output is at least as
unpredictable as the OS input alone, whatever the QRNG sends, and at least as
unpredictable as the QRNG input when the OS CSPRNG is the weak one.

When the QRNG is unreachable or fails a health test, :meth:`QrngRandomSource.bytes`
never falls back silently: with ``fail_closed=True`` (the default) it raises
:class:`QrngFailure`; with ``fail_closed=False`` it serves OS CSPRNG bytes alone. In
both cases the ``on_event`` callback is called (``callable(event, **public_fields)``,
e.g. an audit log's ``emit``) and the failure is counted.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import secrets
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.random import Generator, SeedSequence
from prometheus_client import CollectorRegistry, Counter

from corridor.entropy.health import APT_WINDOW_NON_BINARY, HealthTestFailed, HealthTests
from corridor.entropy.qrng import QrngReader, QrngUnavailable
from corridor.errors import CorridorError, ParameterError
from corridor.randomness import RandomSource

MIX_DOMAIN = b"corridor/entropy/mix/v1"
BLOCK_BYTES = 64  # SHA3-512 output
DEFAULT_MIN_ENTROPY_BITS_PER_BYTE = 6.0
DEFAULT_BATCH_BYTES = 4096
# SP 800-90B section 4.3 (start-up tests): at least 1024 samples are tested before any
# output is used; a batch is tested whole before any byte of it is used.
MIN_BATCH_BYTES = 1024

EVENT_HEALTH_FAILURE = "entropy_qrng_health_failure"
EVENT_UNAVAILABLE = "entropy_qrng_unavailable"
EVENT_OS_ONLY = "entropy_os_only"

EventCallback = Callable[..., None]


class QrngFailure(CorridorError):
    """Fail closed: the QRNG gave no health-tested bytes, so no random bytes were made."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"entropy source {source} failed ({reason}); no bytes served "
                         "(fail_closed=True)")


class EntropyMetrics:
    """Prometheus counters of a QRNG source (in the registry given)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes_served = Counter(
            "corridor_entropy_bytes", "Random bytes served, by how they were made "
            "(qrng_mixed: QRNG and OS mixed; os_only: OS CSPRNG alone after a failure).",
            ["mode"], registry=registry)
        self.qrng_bytes = Counter(
            "corridor_entropy_qrng_bytes", "Raw QRNG bytes read and health-tested.",
            registry=registry)
        self.failures = Counter(
            "corridor_entropy_failures", "QRNG failures (health tests, unreachable, bad "
            "answers), by reason.", ["reason"], registry=registry)


class _Shared:
    """State shared by a source and its spawned children: one reader, one test state."""

    def __init__(self, reader: QrngReader, tests: HealthTests, batch_bytes: int,
                 fail_closed: bool, on_event: EventCallback | None,
                 metrics: EntropyMetrics | None) -> None:
        self.reader = reader
        self.tests = tests
        self.batch_bytes = batch_bytes
        self.fail_closed = fail_closed
        self.on_event = on_event
        self.metrics = metrics
        self.lock = threading.Lock()
        self.buffer = bytearray()
        self.state = "untested"
        self.counts: dict[str, int] = {"bytes_qrng_mixed": 0, "bytes_os_only": 0,
                                       "qrng_bytes_read": 0, "failures": 0}
        self.failure_reasons: dict[str, int] = {}


class QrngRandomSource(RandomSource):
    """A cryptographic ``RandomSource`` fed by a QRNG and the OS CSPRNG together.

    Args:
        reader: where the raw QRNG bytes come from (``corridor.entropy.qrng``).
        min_entropy_bits_per_byte: the min-entropy per QRNG byte claimed for the source
            (its vendor's SP 800-90B assessment); sets the health-test cutoffs.
        fail_closed: on a QRNG failure, raise :class:`QrngFailure` (True, default) or
            serve OS CSPRNG bytes alone (False); both raise an alarm through ``on_event``.
        on_event: ``callable(event_name, **public_fields)``, e.g. ``AuditLog.emit``.
        registry: Prometheus registry for :class:`EntropyMetrics` (optional).
        batch_bytes: QRNG bytes fetched and tested at a time (at least 1024).

    The numpy ``generator`` is PCG64 seeded from 32 mixed bytes drawn at construction,
    so constructing the source already needs the QRNG (or raises, when fail closed).
    """

    def __init__(self, reader: QrngReader, *,
                 min_entropy_bits_per_byte: float = DEFAULT_MIN_ENTROPY_BITS_PER_BYTE,
                 fail_closed: bool = True, on_event: EventCallback | None = None,
                 registry: CollectorRegistry | None = None,
                 batch_bytes: int = DEFAULT_BATCH_BYTES,
                 apt_window: int = APT_WINDOW_NON_BINARY) -> None:
        if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) \
                or batch_bytes < MIN_BATCH_BYTES:
            raise ParameterError("batch_bytes", batch_bytes,
                                 f"an integer of at least {MIN_BATCH_BYTES}")
        tests = HealthTests(min_entropy_bits_per_byte, window=apt_window)
        metrics = EntropyMetrics(registry) if registry is not None else None
        self._shared = _Shared(reader, tests, batch_bytes, bool(fail_closed), on_event,
                               metrics)
        label = f"qrng:{reader.label}"
        seed = int.from_bytes(self.bytes(32), "big")
        super().__init__(Generator(np.random.PCG64(SeedSequence(seed))), cryptographic=True,
                         label=label)

    # -- the RandomSource interface -------------------------------------------------

    def bytes(self, length: int) -> bytes:
        """``length`` bytes: SHA3-512 blocks over OS || QRNG bytes (module docstring)."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ParameterError("length", length, "a non-negative integer")
        if length == 0:
            return b""
        blocks = -(-length // BLOCK_BYTES)
        shared = self._shared
        with shared.lock:
            try:
                qrng = self._take(blocks * BLOCK_BYTES)
            except QrngUnavailable as exc:
                self._failed(exc.reason, EVENT_UNAVAILABLE, {"reason": exc.reason,
                                                             "detail": exc.detail})
                qrng = None
            except HealthTestFailed as exc:
                f = exc.failure
                self._failed(f.test, EVENT_HEALTH_FAILURE, {
                    "test": f.test, "count": f.count, "cutoff": f.cutoff,
                    "sample_index": f.sample_index})
                qrng = None
            if qrng is None:
                if shared.fail_closed:
                    raise QrngFailure(shared.reader.label, shared.state)
                self._emit(EVENT_OS_ONLY, {"size_bytes": length})
                self._count_served("os_only", length)
                return secrets.token_bytes(length)
            shared.state = "ok"
        os_bytes = secrets.token_bytes(blocks * BLOCK_BYTES)
        out = bytearray()
        for i in range(blocks):
            part = slice(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES)
            out += hashlib.sha3_512(MIX_DOMAIN + i.to_bytes(4, "big") + os_bytes[part]
                                    + qrng[part]).digest()
        with shared.lock:
            self._count_served("qrng_mixed", length)
        return bytes(out[:length])

    def spawn(self) -> QrngRandomSource:
        """A child with its own numpy stream that shares this source's QRNG and tests."""
        child = copy.copy(self)
        seq = self.generator.bit_generator.seed_seq.spawn(1)[0]  # type: ignore[attr-defined]
        child.generator = Generator(np.random.PCG64(seq))
        child._label = f"{self._label}/child"
        return child

    # -- state, for operators -------------------------------------------------------

    @property
    def state(self) -> str:
        """``untested``, ``ok``, or the reason of the last failure."""
        return self._shared.state

    @property
    def fail_closed(self) -> bool:
        return self._shared.fail_closed

    @property
    def health(self) -> HealthTests:
        """The health tests (cutoffs and counters)."""
        return self._shared.tests

    def counts(self) -> dict[str, Any]:
        """Bytes served by mode, raw QRNG bytes read, failures (total and by reason)."""
        shared = self._shared
        with shared.lock:
            return {**shared.counts, "failure_reasons": dict(shared.failure_reasons)}

    def close(self) -> None:
        """Close the reader and drop buffered QRNG bytes."""
        with self._shared.lock:
            self._shared.buffer.clear()
            self._shared.reader.close()

    def __repr__(self) -> str:
        shared = self._shared
        mode = "fail-closed" if shared.fail_closed else "os-only-on-failure"
        return (f"QrngRandomSource({shared.reader.label}, state={shared.state}, {mode}, "
                f"H={shared.tests.min_entropy_bits_per_sample:g})")

    # -- internals (called with the lock held) ---------------------------------------

    def _take(self, size_bytes: int) -> builtins.bytes:
        shared = self._shared
        while len(shared.buffer) < size_bytes:
            batch = shared.reader.read(max(shared.batch_bytes, size_bytes - len(shared.buffer)))
            shared.counts["qrng_bytes_read"] += len(batch)
            if shared.metrics is not None:
                shared.metrics.qrng_bytes.inc(len(batch))
            failure = shared.tests.feed(batch)
            if failure is not None:
                # SP 800-90B section 4.3: nothing from a failed source is used, so the
                # buffered bytes tested before the failure go too.
                shared.buffer.clear()
                raise HealthTestFailed(failure)
            shared.buffer += batch
        taken = bytes(shared.buffer[:size_bytes])
        del shared.buffer[:size_bytes]
        return taken

    def _failed(self, reason: str, event: str, fields: dict[str, Any]) -> None:
        shared = self._shared
        shared.state = reason
        shared.counts["failures"] += 1
        shared.failure_reasons[reason] = shared.failure_reasons.get(reason, 0) + 1
        if shared.metrics is not None:
            shared.metrics.failures.labels(reason=reason).inc()
        self._emit(event, fields)

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        shared = self._shared
        if shared.on_event is not None:
            shared.on_event(event, source=shared.reader.label,
                            fail_closed=shared.fail_closed, **fields)

    def _count_served(self, mode: str, length: int) -> None:
        shared = self._shared
        shared.counts[f"bytes_{mode}"] += length
        if shared.metrics is not None:
            shared.metrics.bytes_served.labels(mode=mode).inc(length)
