"""Pilot KPIs from verified audit trails: each definition checked on a recorded corridor
whose entries (and their times) the test writes through the real audit log."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corridor.kms import audit as audit_module
from corridor.kms.audit import AuditLog
from corridor.kms.crypto import load_kek, write_kek_file
from corridor.web.kpis import collect_kpis, percentile
from corridor.web.report import decision_table, report_html

T0 = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


class Clock:
    """Stands in for the audit log's clock: entries get the times the test sets."""

    def __init__(self) -> None:
        self.now = T0

    def at(self, seconds: float) -> None:
        self.now = T0 + dt.timedelta(seconds=seconds)

    def text(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(audit_module, "_utc_now", c.text)
    yield c


def _corridor(tmp_path: Path, clock: Clock, *, quarantine: tuple[float, float | None] | None,
              refusals: int, summary_count: int, decisions: list[tuple[str, str, str]]
              ) -> Path:
    for kme in ("kme-a", "kme-b"):
        (tmp_path / kme).mkdir()
        write_kek_file(tmp_path / kme / "kek.hex")
    logs = {k: AuditLog(tmp_path / k / "audit.jsonl", load_kek(tmp_path / k / "kek.hex"))
            for k in ("kme-a", "kme-b")}
    hybrid = AuditLog(tmp_path / "kme-a" / "hybrid-audit.jsonl",
                      load_kek(tmp_path / "kme-a" / "kek.hex"))
    a, b = logs["kme-a"], logs["kme-b"]
    clock.at(0)
    a.emit("kme_started", kme_id="kme-a")
    # Ten deliveries, one key each; the slave fetches each 5 ms * (i + 1) later.
    for i in range(10):
        clock.at(10 + i)
        a.emit("keys_reserving", kme_id="kme-a", delivery_id=f"d{i}", link_id="l1",
               key_ids=[f"k{i}"], count=1)
        clock.at(10 + i + 0.002)
        a.emit("keys_delivered", kme_id="kme-a", delivery_id=f"d{i}", role="master",
               sae_id="sae-a", key_ids=[f"k{i}"], count=1, size_bits=256)
        clock.at(10 + i + 0.002 + 0.005 * (i + 1))
        b.emit("keys_delivered", kme_id="kme-b", delivery_id=f"s{i}", role="slave",
               sae_id="sae-b", key_ids=[f"k{i}"], count=1, size_bits=256)
    for i in range(refusals):
        clock.at(30 + i)
        a.emit("request_rejected", kme_id="kme-a", endpoint="enc_keys", sae_id="sae-a",
               reason="pool_exhausted", status_code=503)
    clock.at(31)
    a.emit("request_rejected", kme_id="kme-a", endpoint="enc_keys", sae_id="sae-a",
           reason="bad_request", status_code=400)  # a client error, not a lack of key
    if summary_count:
        a.emit("requests_rejected_summary", kme_id="kme-a", endpoint="enc_keys",
               sae_id="sae-a", reason="pool_exhausted", status_code=503,
               count=summary_count, interval_s=10.0)
    for n in range(20):
        clock.at(40 + n)
        a.emit("link_block", link_id="l1", block_id=n, outcome="accepted", reason=None,
               qber=0.01 + n * 1e-4, secret_bits=1000, duration_s=0.1)
    if quarantine is not None:
        clock.at(quarantine[0])
        a.emit("link_alarm_raised", link_id="l1", alarm_id="a1", kind="qber",
               reason="qber_above_threshold", block_id=21, latched=False, active_alarms=1)
        a.emit("link_quarantined", link_id="l1", alarm_id="a1", kind="qber",
               reason="qber_above_threshold", block_id=21, active_alarms=1)
    if quarantine is not None and quarantine[1] is not None:
        clock.at(quarantine[1])
        a.emit("link_recovered", link_id="l1", block_id=30, alarm_ids=["a1"], good_blocks=3,
               recovery_qber_threshold=0.05, active_alarms=0)
    for n, (policy, inputs, outcome) in enumerate(decisions):
        clock.at(50 + n)
        hybrid.emit("hybrid_decision", policy=policy, inputs=inputs, outcome=outcome,
                    missing=[], session_id="s", generation=n, role="initiator",
                    sae_id="sae-a", peer_sae_id="sae-b")
    clock.at(100)
    a.emit("kme_stopped", kme_id="kme-a")
    for log in (a, b, hybrid):
        log.close()
    up = {"name": "test-corridor",
          "kmes": [{"kme_id": k, "audit_log": f"{k}/audit.jsonl", "kek_file": f"{k}/kek.hex"}
                   for k in ("kme-a", "kme-b")],
          "links": [{"link_id": "l1", "alice_kme": "kme-a", "bob_kme": "kme-b"}],
          "hybrid_sessions": [{"sides": [{"role": "initiator", "sae_id": "sae-a",
                                          "audit_log": "kme-a/hybrid-audit.jsonl",
                                          "kek_file": "kme-a/kek.hex"}]}]}
    path = tmp_path / "corridor-up.json"
    path.write_text(json.dumps(up))
    return path


DECISIONS = [("both-required", "qkd+pqc", "established")] * 3 + [
    ("both-required", "none", "refused"), ("any", "pqc", "degraded"),
    ("any", "qkd+pqc", "established")]


def test_every_kpi_follows_its_definition(tmp_path: Path, clock: Clock) -> None:
    up = _corridor(tmp_path, clock, quarantine=(60, 80), refusals=3, summary_count=7,
                   decisions=DECISIONS)
    kpis = collect_kpis(up)
    assert kpis.chains_ok and len(kpis.sources) == 3
    assert kpis.period_s == pytest.approx(100.0)
    # 10 served, 3 single refusals + 7 aggregated; the 400 does not count.
    assert (kpis.requests_served, kpis.requests_refused_no_key) == (10, 10)
    assert kpis.qkd_key_availability == pytest.approx(0.5)
    assert kpis.keys_delivered == 10
    assert kpis.keys_delivered_per_day == pytest.approx(10 * 86400 / 100)
    # time-to-key of key i is 5 ms * (i + 1): p50 = 25 ms (nearest rank 5 of 10), p99 = 50 ms
    assert sorted(kpis.time_to_key_s) == pytest.approx([0.005 * (i + 1) for i in range(10)])
    assert kpis.time_to_key_p50_s == pytest.approx(0.025)
    assert kpis.time_to_key_p99_s == pytest.approx(0.050)
    assert kpis.master_step_p50_s == pytest.approx(0.002)
    assert kpis.fallback_rate_by_policy == {"any": pytest.approx(0.5),
                                            "both-required": pytest.approx(0.0)}
    assert kpis.hybrid_with_qkd_share == pytest.approx(4 / 6)
    assert kpis.links["l1"]["quarantined_s"] == pytest.approx(20.0)
    assert kpis.links["l1"]["uptime"] == pytest.approx(0.8)
    assert kpis.links["l1"]["blocks"] == {"accepted": 20}
    assert kpis.alarms == 1 and kpis.alarms_by_day == {"2026-12-01": 1}
    verdicts = {r["kpi"]: r["verdict"] for r in decision_table(kpis)}
    assert verdicts == {"qkd_key_availability": "not met", "time_to_key_p99_s": "met",
                        "fallback_rate": "not met", "link_uptime": "not met",
                        "alarms_per_day": "not met", "keys_delivered_per_day": "met"}


def test_a_quarantine_still_open_runs_to_the_end_of_the_period(tmp_path: Path,
                                                                clock: Clock) -> None:
    up = _corridor(tmp_path, clock, quarantine=(60, None), refusals=0, summary_count=0,
                   decisions=[])
    kpis = collect_kpis(up)
    assert kpis.links["l1"]["quarantined_s"] == pytest.approx(40.0)
    assert kpis.links["l1"]["uptime"] == pytest.approx(0.6)
    assert kpis.qkd_key_availability == pytest.approx(1.0)
    assert kpis.fallback_rate_by_policy == {} and kpis.hybrid_with_qkd_share is None
    assert {r["kpi"]: r["verdict"] for r in decision_table(kpis)}["fallback_rate"] \
        == "not measured"
    # The period cut before the deliveries: nothing served, availability not measured.
    late = collect_kpis(up, since=T0 + dt.timedelta(seconds=35))
    assert late.requests_served == 0 and late.qkd_key_availability is None


def test_a_tampered_log_is_reported_and_only_what_verified_counts(tmp_path: Path,
                                                                   clock: Clock) -> None:
    up = _corridor(tmp_path, clock, quarantine=None, refusals=0, summary_count=0,
                   decisions=DECISIONS)
    log = tmp_path / "kme-b" / "audit.jsonl"
    lines = log.read_text().splitlines()
    lines[4] = lines[4].replace('"sae-b"', '"sae-x"')  # the 5th slave delivery edited
    log.write_text("\n".join(lines) + "\n")
    kpis = collect_kpis(up)
    assert not kpis.chains_ok
    assert any("broken at seq 5" in p for p in kpis.problems)
    assert len(kpis.time_to_key_s) == 4  # only the slave entries before the break
    assert "NOT all intact" in report_html(kpis)


def test_the_report_is_one_page_with_its_plots(tmp_path: Path, clock: Clock) -> None:
    up = _corridor(tmp_path, clock, quarantine=(60, 80), refusals=1, summary_count=0,
                   decisions=DECISIONS)
    page = report_html(collect_kpis(up))
    assert page.count("<img src='data:image/png;base64,") == 3
    assert "Decision table" in page and "http://" not in page and "https://" not in page


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert percentile([float(v) for v in range(1, 101)], 50) == 50.0


def test_a_tampered_responder_hybrid_log_is_not_intact(tmp_path: Path) -> None:
    """Every log corridor-up.json names is verified, the responder's hybrid log too
    (its decisions are counted at the initiator only)."""
    from tests.inventory.recorded import write_recorded_corridor

    up = write_recorded_corridor(tmp_path / "run")
    assert collect_kpis(up).chains_ok
    log = tmp_path / "run" / "kme-b" / "hybrid-audit.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"refused"', '"established"').replace('"degraded"',
                                                                      '"established"')
    log.write_text("\n".join(lines) + "\n")
    kpis = collect_kpis(up)
    assert not kpis.chains_ok
    assert any(str(log) in p for p in kpis.problems)
