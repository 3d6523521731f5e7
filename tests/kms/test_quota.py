"""Per-SAE-pair quotas: the token bucket and the UTC day with injected clocks, the
``[quota]`` table, and the KeyManager refusing over-quota requests before any key is cut."""

from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.audit import verify_audit_log
from corridor.kms.client import KmeResponseError, SaeClient
from corridor.kms.config import KmeConfig, SaeDirectory
from corridor.kms.crypto import generate_kek, load_kek
from corridor.kms.interface import KeyRequestError, KeysUnavailableError
from corridor.kms.manager import KeyManager, connect_local
from corridor.kms.node import Corridor, parse_corridor
from corridor.kms.quota import (
    QUOTA_DAY,
    QUOTA_RATE,
    SECONDS_PER_DAY,
    QuotaLimits,
    QuotaPolicy,
    SaeQuotas,
)
from corridor.kms.store_sqlite import SqliteKeyStore
from tests.kms.test_manager import RecordingSink
from tests.kms.test_node import _spec_data


class Clock:
    def __init__(self, monotonic_s: float = 100.0, wall_s: float = 10 * SECONDS_PER_DAY) -> None:
        self.monotonic_s = monotonic_s
        self.wall_s = wall_s

    def advance(self, seconds: float) -> None:
        self.monotonic_s += seconds
        self.wall_s += seconds


def quotas(policy: QuotaPolicy, clock: Clock) -> SaeQuotas:
    return SaeQuotas(policy, monotonic=lambda: clock.monotonic_s, wall=lambda: clock.wall_s)


def test_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    q = quotas(QuotaPolicy(QuotaLimits(keys_per_second=10, burst_keys=20)), clock)
    assert q.take("a", "b", 20) is None
    refusal = q.take("a", "b", 1)
    assert refusal is not None and refusal.quota == QUOTA_RATE
    assert refusal.retry_after_s == pytest.approx(0.1)
    assert "10 keys per second" in refusal.message and "0.100 s" in refusal.message
    clock.advance(0.5)  # 5 tokens back
    assert q.take("a", "b", 5) is None
    assert q.take("a", "b", 1) is not None
    clock.advance(1000)  # capped at the burst
    assert q.take("a", "b", 20) is None
    assert q.take("a", "b", 1) is not None


def test_a_refused_request_takes_nothing():
    clock = Clock()
    q = quotas(QuotaPolicy(QuotaLimits(keys_per_second=10, burst_keys=10)), clock)
    assert q.take("a", "b", 6) is None
    assert q.take("a", "b", 6) is not None  # 4 left: refused whole
    assert q.take("a", "b", 4) is None


def test_more_than_the_burst_or_the_day_can_never_fit():
    clock = Clock()
    q = quotas(QuotaPolicy(QuotaLimits(keys_per_second=1, burst_keys=5, keys_per_day=100)),
               clock)
    rate = q.take("a", "b", 6)
    assert rate is not None and rate.retry_after_s is None and rate.quota == QUOTA_RATE
    assert "at most 5" in rate.message
    day_only = quotas(QuotaPolicy(QuotaLimits(keys_per_day=3)), clock)
    day = day_only.take("a", "b", 4)
    assert day is not None and day.retry_after_s is None and day.quota == QUOTA_DAY


def test_the_day_restarts_at_midnight_utc():
    clock = Clock(wall_s=10 * SECONDS_PER_DAY + SECONDS_PER_DAY - 60)  # 23:59 UTC
    q = quotas(QuotaPolicy(QuotaLimits(keys_per_day=10)), clock)
    assert q.take("a", "b", 10) is None
    refusal = q.take("a", "b", 1)
    assert refusal is not None and refusal.quota == QUOTA_DAY
    assert refusal.retry_after_s == pytest.approx(60)
    assert "00:00 UTC, in 60 s" in refusal.message
    assert refusal.details() == [{"quota": QUOTA_DAY, "retry_after_s": 60.0}]
    clock.advance(60)
    assert q.take("a", "b", 10) is None


def test_pairs_are_independent_and_overrides_apply():
    clock = Clock()
    policy = QuotaPolicy.from_mapping(
        {"keys_per_second": 10, "burst_keys": 10,
         "pairs": [{"master": "a", "slave": "c", "keys_per_second": 100}]},
        {"a": "k1", "b": "k2", "c": "k2"})
    assert policy.limits("a", "c") == QuotaLimits(100, 100, 0)  # burst defaults to the rate
    assert policy.limits("c", "a") == QuotaLimits(10, 10, 0)  # ordered pairs
    q = quotas(policy, clock)
    assert q.take("a", "b", 10) is None and q.take("a", "b", 1) is not None
    assert q.take("a", "c", 100) is None
    assert q.take("b", "a", 10) is None


def test_unlimited_by_default():
    clock = Clock()
    policy = QuotaPolicy.from_mapping({})
    assert policy.unlimited
    q = quotas(policy, clock)
    assert all(q.take("a", "b", 10**6) is None for _ in range(10))


@pytest.mark.parametrize("table, field", [
    ({"keys_per_second": -1}, "quota.keys_per_second"),
    ({"keys_per_second": "fast"}, "quota.keys_per_second"),
    ({"keys_per_day": 1.5}, "quota.keys_per_day"),
    ({"burst_keys": 5}, "quota.burst_keys"),  # no rate
    ({"keys_per_hour": 5}, "quota.keys_per_hour"),
    ({"pairs": [{"master": "a", "slave": "zz"}]}, "quota.pairs[0].slave"),
    ({"pairs": [{"master": "a", "slave": "b", "burst_keys": -2}]},
     "quota.pairs[0].burst_keys"),
    ({"pairs": [{"master": "a", "slave": "b"}, {"master": "a", "slave": "b"}]},
     "quota.pairs[1].master"),
    ({"pairs": "a->b"}, "quota.pairs"),
])
def test_bad_tables_name_the_field(table, field):
    with pytest.raises(ParameterError) as info:
        QuotaPolicy.from_mapping(table, {"a": "k1", "b": "k2"})
    assert info.value.field == field


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(1, 50), burst=st.integers(1, 100),
       steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 40)), min_size=1,
                      max_size=60))
def test_granted_keys_never_exceed_burst_plus_rate_times_time(rate, burst, steps):
    clock = Clock()
    q = quotas(QuotaPolicy(QuotaLimits(keys_per_second=rate, burst_keys=burst)), clock)
    start = clock.monotonic_s
    granted = 0
    for wait_s, count in steps:
        clock.advance(wait_s)
        refusal = q.take("a", "b", count)
        if refusal is None:
            granted += count
            assert granted <= burst + rate * (clock.monotonic_s - start) + 1e-6
        elif refusal.retry_after_s is not None:
            # The promised wait is enough: asking again then succeeds.
            clock.advance(refusal.retry_after_s + 1e-9)
            assert q.take("a", "b", count) is None
            granted += count
        else:
            assert count > burst


# -- in the KeyManager ------------------------------------------------------------------


def _managers(tmp_path, policy: QuotaPolicy, clock: Clock):
    directory = SaeDirectory({"a1": "kme-a", "a2": "kme-a", "b1": "kme-b", "b2": "kme-b"},
                             {"link-ab": ("kme-a", "kme-b")})
    kek = generate_kek()
    sink = RecordingSink()
    a = KeyManager(KmeConfig("kme-a"), directory,
                   SqliteKeyStore(tmp_path / "a.sqlite", kek, kme_id="kme-a"), events=sink,
                   quotas=quotas(policy, clock))
    b = KeyManager(KmeConfig("kme-b"), directory,
                   SqliteKeyStore(tmp_path / "b.sqlite", kek, kme_id="kme-b"), events=sink)
    connect_local(a, b)
    for block_id in range(8):
        block = os.urandom(16384)
        a.ingest_block("link-ab", block_id, block)
        b.ingest_block("link-ab", block_id, block)
    return a, b, sink


def test_one_pair_draining_does_not_starve_another(tmp_path):
    """a1->b1 asks as fast as it can; a2->b2 still gets its rate from the same pool."""
    clock = Clock()
    policy = QuotaPolicy(QuotaLimits(keys_per_second=20, burst_keys=40))
    a, b, sink = _managers(tmp_path, policy, clock)
    got = {"b1": 0, "b2": 0}
    refused = 0
    for _tick in range(50):  # 5 s of 0.1 s ticks
        clock.advance(0.1)
        for _ in range(20):  # the greedy pair: 20 requests of 8 keys per tick
            try:
                got["b1"] += len(a.enc_keys("a1", "b1", number=8))
            except KeysUnavailableError as exc:
                assert exc.message.startswith("quota exceeded")
                assert exc.details[0]["quota"] == QUOTA_RATE
                refused += 1
        got["b2"] += len(a.enc_keys("a2", "b2", number=2))  # 20 keys/s, within its rate
    # 5 s at 20 keys/s plus the burst of 40, whole requests of 8.
    assert got["b1"] <= 40 + 20 * 5
    assert got["b1"] >= 8 * ((20 * 5) // 8)
    assert got["b2"] == 2 * 50
    assert refused > 900
    rejected = sink.named("request_rejected")
    assert len(rejected) == refused
    assert all(r["reason"] == "quota_exceeded" and r["status_code"] == 503
               and r["quota"] == QUOTA_RATE and "delivery_id" not in r for r in rejected)
    # Refused before any intent: only granted requests wrote keys_reserving.
    assert len(sink.named("keys_reserving")) == got["b1"] // 8 + 50
    a.close(), b.close()


def test_a_request_larger_than_the_burst_is_a_400(tmp_path):
    clock = Clock()
    a, b, _ = _managers(tmp_path, QuotaPolicy(QuotaLimits(keys_per_second=1, burst_keys=4)),
                        clock)
    with pytest.raises(KeyRequestError) as info:
        a.enc_keys("a1", "b1", number=5)
    assert "burst of 4" in info.value.message
    assert info.value.details == [{"quota": QUOTA_RATE}]
    a.close(), b.close()


def test_pool_exhaustion_is_refused_before_the_quota_and_the_intent(tmp_path):
    clock = Clock()
    a, b, sink = _managers(tmp_path, QuotaPolicy(QuotaLimits(keys_per_second=1000,
                                                             burst_keys=1000)), clock)
    available = a.pool_state("link-ab", "A->B").available_bytes
    with pytest.raises(KeysUnavailableError) as info:
        a.enc_keys("a1", "b1", number=128, size_bits=8192)  # 128 KiB > the pool
    assert info.value.details == [{"stored_key_count": available // 1024}]
    assert sink.named("keys_reserving") == []
    assert sink.named("request_rejected")[-1]["reason"] == "pool_exhausted"
    # The quota was not charged: the whole burst is still there.
    assert a.quotas is not None and a.quotas.take("a1", "b1", 1000) is None
    a.close(), b.close()


# -- over HTTPS, from the corridor file ---------------------------------------------------


def test_corridor_quota_answers_503_then_400_and_audits_a_summary(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    data = os.urandom(100 * 1024)
    (keys_dir / "alice.bin").write_bytes(data)
    (keys_dir / "bob.bin").write_bytes(data)
    spec_data = _spec_data(keys_dir)
    # A slow refill, so that the refusals below do not depend on how fast the test runs.
    spec_data["quota"] = {"keys_per_second": 0.01, "burst_keys": 3}
    spec = parse_corridor(spec_data)
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as corridor:
        pki = corridor.pki
        assert pki is not None
        node = corridor.nodes["kme-a"]
        with SaeClient(node.url or "", pki.saes["sae-a"].cert, pki.saes["sae-a"].key,
                       pki.ca_cert, expected_kme_id="kme-a") as client:
            deadline = time.monotonic() + 30
            while client.status("sae-b").stored_key_count < 10:
                assert time.monotonic() < deadline, "no key material in time"
                time.sleep(0.05)
            assert len(client.get_key("sae-b", number=3)) == 3
            for _ in range(20):
                with pytest.raises(KmeResponseError) as info:
                    client.get_key("sae-b", number=1)
                assert info.value.status_code == 503
                assert info.value.message.startswith("quota exceeded: this SAE pair is over")
                assert info.value.details[0]["quota"] == QUOTA_RATE
                assert info.value.details[0]["retry_after_s"] > 1
            with pytest.raises(KmeResponseError) as info:
                client.get_key("sae-b", number=4)
            assert info.value.status_code == 400 and "burst of 3" in info.value.message
        rejected = node.metrics.registry.get_sample_value(
            "corridor_key_requests_rejected_total",
            {"kme_id": "kme-a", "endpoint": "enc_keys", "reason": "quota_exceeded"})
        assert rejected == 21
        audit_path, kek_path = node.audit_path, node.kek_path
    # The 20 refusals of one kind: one line at once, one summary at shutdown.
    entries = [json.loads(line) for line in audit_path.read_text().splitlines()]
    quota_lines = [e for e in entries if e["fields"].get("reason") == "quota_exceeded"]
    assert [(e["event"], e["fields"].get("count"), e["fields"]["status_code"])
            for e in quota_lines] == [("request_rejected", None, 503),
                                      ("request_rejected", None, 400),
                                      ("requests_rejected_summary", 19, 503)]
    assert kek_path is not None and verify_audit_log(audit_path, load_kek(kek_path)).ok
