"""QrngRandomSource: mixing, fail-closed and OS-only policies, alarms, counters, reprs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from corridor.entropy import source as source_module
from corridor.entropy.qrng import QrngUnavailable
from corridor.entropy.source import (
    EVENT_HEALTH_FAILURE,
    EVENT_OS_ONLY,
    EVENT_UNAVAILABLE,
    MIX_DOMAIN,
    QrngFailure,
    QrngRandomSource,
)
from corridor.errors import ParameterError
from corridor.randomness import RandomSource
from tests.entropy.conftest import ClientTls
from tests.entropy.qrng_server import QrngServer
from tests.kms.test_manager import RecordingSink


class ScriptedReader:
    """A QRNG whose behaviour the test switches: 'good', 'stuck', 'biased' or 'down'."""

    label = "fake://qrng"

    def __init__(self, mode: str = "good") -> None:
        self.mode = mode
        self.reads = 0
        self.closed = False

    def read(self, size_bytes: int) -> bytes:
        self.reads += 1
        if self.mode == "down":
            raise QrngUnavailable(self.label, "connection_refused", "ConnectError")
        if self.mode == "stuck":
            return b"\x00" * size_bytes
        if self.mode == "biased":
            body = bytearray((i % 255) + 1 for i in range(size_bytes))
            body[::8] = bytes(len(body[::8]))
            return bytes(body)
        return os.urandom(size_bytes)

    def close(self) -> None:
        self.closed = True


def _source(reader: ScriptedReader, **options: object) -> QrngRandomSource:
    return QrngRandomSource(reader, **options)  # type: ignore[arg-type]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_is_a_cryptographic_random_source_with_working_generator() -> None:
    rng = _source(ScriptedReader())
    assert isinstance(rng, RandomSource) and rng.cryptographic
    assert 0.0 <= rng.generator.random() < 1.0
    bits = rng.bits(100)
    assert bits.shape == (100,) and set(np.unique(bits)) <= {0, 1}
    assert len(rng.bytes(1)) == 1 and len(rng.bytes(200)) == 200 and rng.bytes(0) == b""
    assert rng.bytes(32) != rng.bytes(32)
    assert rng.state == "ok"


def test_output_is_sha3_512_over_os_then_qrng_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = _source(ScriptedReader())
    os_bytes = bytes(range(128))
    qrng_bytes = os.urandom(4096)

    monkeypatch.setattr(source_module.secrets, "token_bytes", lambda n: os_bytes[:n])
    monkeypatch.setattr(rng._shared.reader, "read", lambda n: qrng_bytes[:n])
    rng._shared.buffer.clear()
    out = rng.bytes(100)
    expected = b"".join(
        hashlib.sha3_512(MIX_DOMAIN + i.to_bytes(4, "big") + os_bytes[64 * i:64 * i + 64]
                         + qrng_bytes[64 * i:64 * i + 64]).digest() for i in range(2))
    assert out == expected[:100]
    # the next draw uses the next QRNG bytes, never the same ones again
    assert rng.bytes(64) == hashlib.sha3_512(MIX_DOMAIN + (0).to_bytes(4, "big")
                                             + os_bytes[:64] + qrng_bytes[128:192]).digest()


@settings(max_examples=25, deadline=None)
@given(os_bytes=st.binary(min_size=128, max_size=128))
def test_a_qrng_that_echoes_the_os_bytes_cannot_cancel_them(os_bytes: bytes) -> None:
    # A hostile QRNG that sees the OS bytes and sends them back would zero an XOR mix;
    # here the output is the hash of both, different from zero and from the OS bytes.
    rng = _source(ScriptedReader())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(source_module.secrets, "token_bytes", lambda n: os_bytes[:n])
        patch.setattr(rng._shared.reader, "read", lambda n: (os_bytes * 64)[:n])
        patch.setattr(rng._shared.tests, "feed", lambda data: None)  # let the echo through
        rng._shared.buffer.clear()
        out = rng.bytes(128)
    assert out != bytes(128) and out != os_bytes
    assert out[:64] == hashlib.sha3_512(MIX_DOMAIN + (0).to_bytes(4, "big") + os_bytes[:64]
                                        + os_bytes[:64]).digest()


def test_a_constant_qrng_still_gives_fresh_output(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever the QRNG sends (here the same healthy block every time), each draw
    # carries fresh OS bytes.
    rng = _source(ScriptedReader())
    block = os.urandom(64) * 64  # the same 64 QRNG bytes under every output block
    monkeypatch.setattr(rng._shared.reader, "read", lambda n: block[:n])
    rng._shared.buffer.clear()
    monkeypatch.setattr(rng._shared.tests, "feed", lambda data: None)
    assert len({rng.bytes(64) for _ in range(50)}) == 50


def test_health_failure_fails_closed_alarms_and_counts() -> None:
    sink, registry = RecordingSink(), CollectorRegistry()
    reader = ScriptedReader()
    rng = _source(reader, on_event=sink.emit, registry=registry, batch_bytes=1024)
    rng._shared.buffer.clear()
    reader.mode = "stuck"
    with pytest.raises(QrngFailure, match="repetition_count") as info:
        rng.bytes(32)
    assert "fail_closed=True" in str(info.value)
    events = sink.named(EVENT_HEALTH_FAILURE)
    assert events == [{"source": "fake://qrng", "fail_closed": True,
                       "test": "repetition_count", "count": 5, "cutoff": 5,
                       "sample_index": events[0]["sample_index"]}]
    assert rng.state == "repetition_count"
    assert rng.counts()["failures"] == 1
    assert rng.counts()["failure_reasons"] == {"repetition_count": 1}
    assert _value(registry, "corridor_entropy_failures_total", reason="repetition_count") == 1
    assert not sink.named(EVENT_OS_ONLY)


def test_biased_qrng_fails_the_apt_and_os_only_policy_still_serves() -> None:
    sink, registry = RecordingSink(), CollectorRegistry()
    reader = ScriptedReader()
    rng = _source(reader, on_event=sink.emit, registry=registry, fail_closed=False)
    rng._shared.buffer.clear()
    reader.mode = "biased"
    out = rng.bytes(48)
    assert len(out) == 48
    assert [e["test"] for e in sink.named(EVENT_HEALTH_FAILURE)] == ["adaptive_proportion"]
    assert sink.named(EVENT_OS_ONLY) == [{"source": "fake://qrng", "fail_closed": False,
                                          "size_bytes": 48}]
    assert rng.counts()["bytes_os_only"] == 48
    assert _value(registry, "corridor_entropy_bytes_total", mode="os_only") == 48
    assert rng.state == "adaptive_proportion"


def test_failed_batch_is_discarded_and_recovery_is_recorded() -> None:
    reader = ScriptedReader()
    rng = _source(reader, batch_bytes=1024)
    reader.mode = "down"
    with pytest.raises(QrngFailure, match="connection_refused"):
        rng.bytes(2000)  # more than the buffer holds: needs a read
    assert len(rng._shared.buffer) < 2000
    reader.mode = "good"
    assert len(rng.bytes(2000)) == 2000 and rng.state == "ok"


def test_construction_fails_closed_when_the_qrng_is_down() -> None:
    sink = RecordingSink()
    with pytest.raises(QrngFailure):
        _source(ScriptedReader("down"), on_event=sink.emit)
    assert sink.named(EVENT_UNAVAILABLE)[0]["reason"] == "connection_refused"


def test_spawned_child_shares_the_qrng_and_its_counts() -> None:
    rng = _source(ScriptedReader())
    child = rng.spawn()
    assert isinstance(child, QrngRandomSource)
    before = rng.counts()["bytes_qrng_mixed"]
    child.bytes(64)
    assert rng.counts()["bytes_qrng_mixed"] == before + 64
    assert child.generator.random() != rng.generator.random()


def test_repr_and_errors_show_source_and_state_only(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = ScriptedReader()
    rng = _source(reader)
    drawn = rng.bytes(32)
    text = repr(rng)
    assert text == "QrngRandomSource(fake://qrng, state=ok, fail-closed, H=6)"
    reader.mode = "stuck"
    rng._shared.buffer.clear()
    with pytest.raises(QrngFailure) as info:
        rng.bytes(32)
    for shown in (repr(rng), str(info.value)):
        assert drawn.hex() not in shown and "\\x" not in shown


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_length_is_refused(bad: object) -> None:
    rng = _source(ScriptedReader())
    with pytest.raises(ParameterError, match="length"):
        rng.bytes(bad)  # type: ignore[arg-type]


def test_batch_below_the_startup_minimum_is_refused() -> None:
    with pytest.raises(ParameterError, match="batch_bytes"):
        _source(ScriptedReader(), batch_bytes=512)


# -- against the HTTPS test endpoint -----------------------------------------------

def _qrng(server: QrngServer, tls: ClientTls, path: str, **options: object) -> RandomSource:
    return RandomSource.qrng(server.url(path), ca=tls.ca, cert=tls.cert, key=tls.key,
                             timeout_s=5, **options)


@pytest.mark.parametrize("path", ["/raw", "/anu", "/qrypt"])
def test_https_endpoint_feeds_the_source(qrng_server: QrngServer, tls: ClientTls,
                                         path: str) -> None:
    registry = CollectorRegistry()
    rng = _qrng(qrng_server, tls, path, registry=registry)
    assert isinstance(rng, QrngRandomSource)
    for _ in range(200):
        assert len(rng.bytes(64)) == 64
    assert rng.counts()["failures"] == 0
    assert _value(registry, "corridor_entropy_bytes_total", mode="qrng_mixed") == 200 * 64 + 32
    assert _value(registry, "corridor_entropy_qrng_bytes_total") >= 200 * 64
    assert repr(rng).startswith(f"QrngRandomSource({qrng_server.url(path)}, state=ok")
    rng.close()


@pytest.mark.parametrize(("path", "event", "reason"), [
    ("/stuck", EVENT_HEALTH_FAILURE, "repetition_count"),
    ("/biased", EVENT_HEALTH_FAILURE, "adaptive_proportion"),
    ("/unavailable", EVENT_UNAVAILABLE, "http_status"),
    ("/short", EVENT_UNAVAILABLE, "short_read"),
])
@pytest.mark.parametrize("fail_closed", [True, False])
def test_https_failures_under_both_policies(qrng_server: QrngServer, tls: ClientTls, path: str,
                                            event: str, reason: str, fail_closed: bool) -> None:
    sink = RecordingSink()
    make: Callable[[], RandomSource] = lambda: _qrng(  # noqa: E731
        qrng_server, tls, path, on_event=sink.emit, fail_closed=fail_closed)
    if fail_closed:
        with pytest.raises(QrngFailure, match=reason):
            make()
        assert not sink.named(EVENT_OS_ONLY)
    else:
        rng = make()
        assert len(rng.bytes(32)) == 32
        assert len(sink.named(EVENT_OS_ONLY)) == 2  # the generator seed, then these 32
        assert rng.state == reason  # type: ignore[attr-defined]
    recorded = sink.named(event)
    assert recorded and recorded[0]["source"] == qrng_server.url(path)
    assert reason in (recorded[0].get("test"), recorded[0].get("reason"))


def test_endpoint_going_away_mid_use(qrng_server: QrngServer, tls: ClientTls,
                                     refused_url: str) -> None:
    sink = RecordingSink()
    rng = RandomSource.qrng(refused_url, ca=tls.ca, cert=tls.cert, key=tls.key,
                            on_event=sink.emit, fail_closed=False)
    assert rng.state == "connection_refused"  # type: ignore[attr-defined]
    assert sink.named(EVENT_UNAVAILABLE)[0]["reason"] == "connection_refused"


def test_failure_events_go_into_the_audit_log(tmp_path: Path) -> None:
    from corridor.kms.audit import AuditLog

    reader = ScriptedReader()
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, b"k" * 32) as log:
        rng = _source(reader, on_event=log.emit)
        rng._shared.buffer.clear()
        reader.mode = "stuck"
        with pytest.raises(QrngFailure):
            rng.bytes(16)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert any(EVENT_HEALTH_FAILURE in json.dumps(entry) for entry in entries)
