"""Tests of corridor.kms.metrics: exposition, names and labels, event mapping, no key bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from corridor.kms.alarms import LinkMonitor
from corridor.kms.audit import AuditLog, verify_audit_log
from corridor.kms.interface import FanOutEventSink
from corridor.kms.metrics import LATENCY_BUCKETS_S, KmsMetrics, MetricsEventSink, PoolSample

KEY = bytes(range(50, 82))

# The documented table (docs/kms-operations.md): name -> (type, labels).
DOCUMENTED = {
    "corridor_pool_stored_keys": ("gauge", {"kme_id", "link_id", "direction"}),
    "corridor_pool_available_bits": ("gauge", {"kme_id", "link_id", "direction"}),
    "corridor_pool_capacity_keys": ("gauge", {"kme_id", "link_id", "direction"}),
    "corridor_key_bits_produced": ("counter", {"link_id"}),
    "corridor_key_bits_stored": ("counter", {"kme_id", "link_id"}),
    "corridor_key_bits_consumed": ("counter", {"kme_id", "link_id", "direction"}),
    "corridor_pool_dropped_bits": ("counter", {"kme_id", "link_id", "direction"}),
    "corridor_keys_delivered": ("counter", {"kme_id", "role"}),
    "corridor_reservations_discarded": ("counter", {"kme_id", "reason"}),
    "corridor_key_requests_rejected": ("counter", {"kme_id", "endpoint", "reason"}),
    "corridor_link_qber_ratio": ("gauge", {"link_id"}),
    "corridor_link_secret_key_rate_bits_per_second": ("gauge", {"link_id"}),
    "corridor_link_blocks": ("counter", {"link_id", "outcome"}),
    "corridor_blocks_discarded": ("counter", {"link_id", "reason"}),
    "corridor_link_quarantined": ("gauge", {"link_id"}),
    "corridor_storage_alarm": ("gauge", {"kme_id"}),
    "corridor_link_alarms_active": ("gauge", {"link_id"}),
    "corridor_link_alarms_raised": ("counter", {"link_id", "kind"}),
    "corridor_requests": ("counter", {"endpoint", "method", "status"}),
    "corridor_request_duration_seconds": ("histogram", {"endpoint"}),
    "corridor_policy_decisions": ("counter", {"policy", "decision"}),
    "corridor_events": ("counter", {"event"}),
    "corridor_connections_refused": ("counter", {"kme_id", "reason"}),
    "corridor_connections_open": ("gauge", {"kme_id"}),
    "corridor_tls_handshakes": ("counter", {"kme_id", "group"}),
}


def _families(metrics: KmsMetrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    # The text format shows each counter's and histogram's creation time as a separate
    # ``<name>_created`` gauge; those are prometheus_client's, not ours.
    return {family.name: family for family in text_string_to_metric_families(text)
            if not family.name.endswith("_created")}


def _value(metrics: KmsMetrics, sample_name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(sample_name, labels)
    assert value is not None, (sample_name, labels)
    return value


def _exercise(metrics: KmsMetrics) -> None:
    sink = MetricsEventSink(metrics)
    monitor = LinkMonitor(sink)
    monitor.observe_block("ab", 0, aborted_reason=None, qber=0.02, secret_bits=8000,
                          duration_s=2.0)
    monitor.observe_block("ab", 1, aborted_reason="qber_above_threshold", qber=0.13,
                          secret_bits=0)
    monitor.clear("ab", operator="alice")
    metrics.observe_request("enc_keys", "POST", 200, 0.004)
    metrics.observe_request("status", "GET", 401, 0.0011)
    metrics.set_pool("ab", "a_to_b", 12, kme_id="kme-a", available_bits=3072, max_keys=1000)
    sink.emit("block_ingested", kme_id="kme-a", link_id="ab", block_id=0, length_bytes=1000,
              accepted_bytes=1000)
    sink.emit("keys_reserved", kme_id="kme-a", link_id="ab", direction="a_to_b", count=3,
              size_bits=256, key_ids=["1", "2", "3"])
    sink.emit("keys_delivered", kme_id="kme-a", role="master", count=3, size_bits=256)
    sink.emit("request_rejected", kme_id="kme-a", endpoint="enc_keys", reason="pool_short",
              status_code=503)
    sink.emit("pool_full", kme_id="kme-a", link_id="ab", direction="b_to_a", dropped_bytes=64)
    sink.emit("reservations_discarded", kme_id="kme-a", count=2, reason="peer_refused")
    sink.emit("policy_decision", policy="qkd_or_fallback", decision="fallback_ml_kem")
    sink.emit("storage_alarm_raised", kme_id="kme-a", reason="audit write: OSError")
    # Connection refusals are counted by the server's guard, not from events.
    metrics.connections_refused.labels("kme-a", "evicted").inc()
    metrics.connections_open.labels("kme-a").set_function(lambda: 7)
    metrics.tls_handshakes.labels("kme-a", "X25519MLKEM768").inc()


def test_exposition_parses_with_documented_names_types_and_labels() -> None:
    metrics = KmsMetrics()
    _exercise(metrics)
    families = _families(metrics)
    assert set(families) == set(DOCUMENTED)
    for name, (kind, labels) in DOCUMENTED.items():
        family = families[name]
        assert family.type == kind, name  # type: ignore[attr-defined]
        samples = family.samples  # type: ignore[attr-defined]
        assert samples, name
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
            if kind == "counter":
                assert sample.name == name + "_total"


def test_values_follow_the_events() -> None:
    metrics = KmsMetrics()
    _exercise(metrics)
    assert _value(metrics, "corridor_link_qber_ratio", link_id="ab") == 0.13
    assert _value(metrics, "corridor_key_bits_produced_total", link_id="ab") == 8000
    assert _value(metrics, "corridor_link_secret_key_rate_bits_per_second", link_id="ab") == 4000
    assert _value(metrics, "corridor_link_blocks_total", link_id="ab", outcome="accepted") == 1
    assert _value(metrics, "corridor_blocks_discarded_total", link_id="ab",
                  reason="qber_above_threshold") == 1
    assert _value(metrics, "corridor_link_alarms_raised_total", link_id="ab",
                  kind="block_aborted") == 1
    assert _value(metrics, "corridor_link_quarantined", link_id="ab") == 0  # cleared
    assert _value(metrics, "corridor_link_alarms_active", link_id="ab") == 0
    assert _value(metrics, "corridor_key_bits_stored_total", kme_id="kme-a", link_id="ab") == 8000
    assert _value(metrics, "corridor_key_bits_consumed_total", kme_id="kme-a", link_id="ab",
                  direction="a_to_b") == 768
    assert _value(metrics, "corridor_keys_delivered_total", kme_id="kme-a", role="master") == 3
    assert _value(metrics, "corridor_pool_dropped_bits_total", kme_id="kme-a", link_id="ab",
                  direction="b_to_a") == 512
    assert _value(metrics, "corridor_pool_stored_keys", kme_id="kme-a", link_id="ab",
                  direction="a_to_b") == 12
    assert _value(metrics, "corridor_requests_total", endpoint="status", method="GET",
                  status="401") == 1
    assert _value(metrics, "corridor_request_duration_seconds_bucket", endpoint="enc_keys",
                  le="0.005") == 1
    assert _value(metrics, "corridor_request_duration_seconds_bucket", endpoint="enc_keys",
                  le="0.003") == 0
    assert _value(metrics, "corridor_events_total", event="link_block") == 2


def test_quarantine_gauge_while_quarantined() -> None:
    metrics = KmsMetrics()
    monitor = LinkMonitor(MetricsEventSink(metrics))
    monitor.observe_block("ab", 0, aborted_reason="authentication_failed", qber=None,
                          secret_bits=0)
    monitor.observe_block("ab", 1, aborted_reason=None, qber=0.01, secret_bits=100)
    assert _value(metrics, "corridor_link_quarantined", link_id="ab") == 1
    assert _value(metrics, "corridor_link_alarms_active", link_id="ab") == 1
    assert _value(metrics, "corridor_blocks_discarded_total", link_id="ab",
                  reason="link_quarantined") == 1


def test_latency_buckets_cover_1_to_100_ms() -> None:
    inside = [b for b in LATENCY_BUCKETS_S if 0.001 <= b <= 0.1]
    assert len(inside) >= 10 and list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)


def test_bounded_labels_for_odd_input() -> None:
    metrics = KmsMetrics()
    metrics.observe_request("/api/v1/keys/x y/enc_keys", "BREW", 999, float("nan"))
    assert _value(metrics, "corridor_requests_total", endpoint="other", method="other",
                  status="invalid") == 1


def test_key_material_never_reaches_a_label() -> None:
    metrics = KmsMetrics()
    sink = MetricsEventSink(metrics)
    sink.emit("keys_delivered", kme_id=KEY, role=KEY.hex(), count=1)  # type: ignore[arg-type]
    sink.emit("request_rejected", kme_id="kme-a", endpoint="enc_keys", reason=KEY.hex())
    metrics.set_pool(KEY, "a_to_b", 1)  # type: ignore[arg-type]
    metrics.observe_block(KEY, qber=0.01, secret_bits=1)  # type: ignore[arg-type]
    text = generate_latest(metrics.registry).decode()
    assert KEY.hex() not in text and repr(KEY) not in text
    assert KEY.decode("latin-1") not in text and KEY.hex()[:16] not in text
    assert _value(metrics, "corridor_keys_delivered_total", kme_id="invalid", role="other") == 1


def test_pool_source_is_read_at_scrape_and_failures_are_skipped() -> None:
    metrics = KmsMetrics()
    stored = [5]
    metrics.add_pool_source(lambda: [PoolSample("kme-a", "ab", "a_to_b", stored[0], 1280, 100)])

    def broken() -> list[PoolSample]:
        raise RuntimeError("store busy")

    metrics.add_pool_source(broken)
    assert _value(metrics, "corridor_pool_stored_keys", kme_id="kme-a", link_id="ab",
                  direction="a_to_b") == 5
    stored[0] = 7
    assert _value(metrics, "corridor_pool_stored_keys", kme_id="kme-a", link_id="ab",
                  direction="a_to_b") == 7
    assert _value(metrics, "corridor_pool_capacity_keys", kme_id="kme-a", link_id="ab",
                  direction="a_to_b") == 100


def test_wall_clock_key_rate_without_durations() -> None:
    metrics = KmsMetrics()
    metrics.observe_block("ab", qber=0.01, secret_bits=1000)
    assert metrics.registry.get_sample_value(
        "corridor_link_secret_key_rate_bits_per_second", {"link_id": "ab"}) is None
    metrics.observe_block("ab", qber=0.01, secret_bits=1000)
    rate = _value(metrics, "corridor_link_secret_key_rate_bits_per_second", link_id="ab")
    assert rate > 0  # 1000 bits over the (positive) time between the two blocks


def test_audit_and_metrics_see_the_same_events(tmp_path: Path) -> None:
    metrics = KmsMetrics()
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, bytes(32)) as log:
        monitor = LinkMonitor(FanOutEventSink(log, MetricsEventSink(metrics)))
        for i in range(5):
            monitor.observe_block("ab", i, aborted_reason=None, qber=0.1, secret_bits=10)
    result = verify_audit_log(path, bytes(32))
    assert result.ok and result.entries == 7  # 5 blocks, one alarm, one quarantine
    assert _value(metrics, "corridor_events_total", event="link_block") == 5
    assert _value(metrics, "corridor_link_alarms_raised_total", link_id="ab",
                  kind="qber_trend") == 1


@pytest.mark.parametrize("registry_shared", [True])
def test_two_metrics_objects_need_two_registries(registry_shared: bool) -> None:
    first = KmsMetrics()
    with pytest.raises(ValueError, match="Duplicated"):
        KmsMetrics(first.registry)


def test_key_manager_events_pass_the_audit_and_feed_the_metrics(tmp_path: Path) -> None:
    from corridor.kms.config import KmeConfig, SaeDirectory
    from corridor.kms.manager import KeyManager, connect_local
    from corridor.kms.store_sqlite import SqliteKeyStore

    kek = bytes(range(32))
    metrics = KmsMetrics()
    directory = SaeDirectory({"a1": "kme-a", "b1": "kme-b"}, {"ab": ("kme-a", "kme-b")})
    logs, managers = [], []
    for kme in ("kme-a", "kme-b"):
        log = AuditLog(tmp_path / f"{kme}.jsonl", kek)
        store = SqliteKeyStore(tmp_path / f"{kme}.db", kek, kme_id=kme)
        managers.append(KeyManager(KmeConfig(kme), directory, store,
                                   events=FanOutEventSink(log, MetricsEventSink(metrics))))
        logs.append(log)
    connect_local(*managers)
    block = bytes(range(256)) * 32
    for manager in managers:
        manager.ingest_block("ab", 0, block, {"qber": 0.02, "pessimistic_key_bits": 9000})
    a, b = managers
    keys = a.enc_keys("a1", "b1", number=2)
    assert [k.key for k in b.dec_keys("b1", "a1", [k.key_id for k in keys])] == [
        k.key for k in keys]
    for manager, log in zip(managers, logs, strict=True):
        manager.close()
        log.close()
        result = verify_audit_log(log.path, kek)
        assert result.ok and result.entries >= 2
        data = log.path.read_bytes()
        assert all(k.key not in data and k.key.hex().encode() not in data for k in keys)
    text = generate_latest(metrics.registry).decode()
    assert all(k.key.hex() not in text for k in keys)
    assert _value(metrics, "corridor_keys_delivered_total", kme_id="kme-a", role="master") == 2
    assert _value(metrics, "corridor_keys_delivered_total", kme_id="kme-b", role="slave") == 2
    assert _value(metrics, "corridor_key_bits_stored_total", kme_id="kme-a",
                  link_id="ab") == 8 * len(block)
    assert _value(metrics, "corridor_key_bits_consumed_total", kme_id="kme-a", link_id="ab",
                  direction=directory.link("ab").direction_from("kme-a")) == 512

