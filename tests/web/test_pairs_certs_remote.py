"""Per SAE pair figures from audit entries, certificate expiry in words, and the remote
source's reading of Prometheus text and of a KME that cannot be reached."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from corridor.kms.pki import init_pki
from corridor.web.certs import certificate_rows, expiry_level
from corridor.web.dashboard import describe_fields
from corridor.web.pairs import PairTracker
from corridor.web.remote import RemoteCorridor, RemoteKme, RemoteLink, parse_metrics


def _entry(event: str, time_s: float, **fields: Any) -> dict[str, Any]:
    moment = dt.datetime(2026, 12, 3, tzinfo=dt.UTC) + dt.timedelta(seconds=time_s)
    return {"event": event, "time": moment.isoformat().replace("+00:00", "Z"),
            "fields": fields}


def test_time_to_key_runs_from_the_master_delivery_to_the_slave_fetch() -> None:
    tracker = PairTracker()
    for n in range(10):
        ids = [f"k{n}a", f"k{n}b"]
        tracker.observe(_entry("keys_reserving", n, delivery_id=f"d{n}", master_sae_id="m",
                               slave_sae_ids=["s"], key_ids=ids))
        tracker.observe(_entry("keys_delivered", n + 0.01, delivery_id=f"d{n}", role="master",
                               master_sae_id="m", sae_id="m", key_ids=ids, count=2))
        tracker.observe(_entry("keys_delivered", n + 0.01 + 0.1 * (n + 1), role="slave",
                               master_sae_id="m", sae_id="s", key_ids=ids, count=2))
    # A slave fetch of a key the tracker never saw delivered changes no figure.
    tracker.observe(_entry("keys_delivered", 50, role="slave", master_sae_id="m", sae_id="s",
                           key_ids=["unknown"], count=1))
    [row] = tracker.rows()
    assert row["pair"] == "m -> s" and row["requests"] == 10 and row["keys"] == 20
    assert row["time_to_key_samples"] == 20
    assert abs(row["time_to_key_p50_s"] - 0.5) < 1e-6  # nearest rank of 0.1 .. 1.0, twice
    assert abs(row["time_to_key_p99_s"] - 1.0) < 1e-6


def test_certificates_say_in_words_how_long_they_last(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki", ["kme-a"], [("sae-a", "kme-a")], operators=["op"],
                      dashboards=["dash"], validity_days=20)
    rows = certificate_rows(layout.certificates())
    assert {r["role"] for r in rows} == {"ca", "kme", "sae", "operator", "dashboard"}
    assert all(r["level"] == "warn" and "plan the renewal" in r["text"] for r in rows)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=25)
    assert all(r["level"] == "alarm" and "expired" in r["text"]
               for r in certificate_rows(layout.certificates(), now=later))
    assert expiry_level(400)[0] == "ok" and expiry_level(3)[1].startswith("expires in 3.0")
    (tmp_path / "garbage.pem").write_text("not a certificate")
    [bad] = certificate_rows([("kme", "x", tmp_path / "garbage.pem")])
    assert bad["level"] == "alarm" and "cannot read" in bad["text"]


def test_audit_fields_are_summarised_without_listing_every_key_id() -> None:
    text = describe_fields({"kme_id": "a", "key_ids": ["1", "2", "3"], "qber": 0.0123456,
                            "operator": "op"})
    assert text == "key_ids=3 items qber=0.01235 operator=op"


def test_prometheus_text_is_read_by_sample_name() -> None:
    text = ('# HELP corridor_link_qber_ratio x\n# TYPE corridor_link_qber_ratio gauge\n'
            'corridor_link_qber_ratio{link_id="ab"} 0.0125\n'
            '# HELP corridor_link_blocks_total x\n# TYPE corridor_link_blocks_total counter\n'
            'corridor_link_blocks_total{link_id="ab",outcome="accepted"} 7.0\n')
    parsed = parse_metrics(text)
    assert parsed["corridor_link_qber_ratio"] == [({"link_id": "ab"}, 0.0125)]
    assert parsed["corridor_link_blocks_total"] == [({"link_id": "ab", "outcome": "accepted"},
                                                     7.0)]


def test_a_kme_that_cannot_be_reached_is_shown_so(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki", ["kme-a", "kme-b"], [], operators=["op"])
    op = layout.operators["op"]
    kmes = [RemoteKme(k, f"site-{k}", "https://127.0.0.1:9", op.cert, op.key, layout.ca_cert)
            for k in ("kme-a", "kme-b")]
    source = RemoteCorridor("far", kmes, [RemoteLink("ab", "kme-a", "kme-b")], timeout_s=1)
    try:
        snap = source.snapshot()
    finally:
        source.close()
    assert [s["reachable"] for s in snap["sites"]] == [False, False]
    assert all(s["error"] for s in snap["sites"])
    [link] = snap["links"]
    assert link["level"] == "alarm" and "unreachable" in link["state"]
    assert "unreachable" in link["text"]


def test_qber_is_judged_against_the_corridors_own_alarm_level() -> None:
    from corridor.kms.node import load_embedded
    from corridor.web.snapshot import qber_alarm_of, qber_level

    assert qber_level(0.09) == ("alarm", "QBER 9.00 %: above the 8 % alarm level")
    assert qber_level(0.07)[0] == "warn" and "6 % (the recovery level)" in qber_level(0.07)[1]
    assert qber_level(0.01) == ("ok", "QBER 1.00 %: normal")
    assert qber_level(0.01, alarm=0.009)[0] == "alarm"
    assert qber_level(None)[0] == "none"
    assert qber_alarm_of(load_embedded("city")) == 0.08
