"""The evidence pack from a recorded corridor: counts from verified audit entries only,
the fallback taken, rotations, certificate expiry, key-exchange risk; HTML and a PDF
that renders."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pypdfium2
import pytest

from corridor.errors import ParameterError
from corridor.inventory.evidence import (
    collect_evidence,
    evidence_html,
    evidence_pdf,
    metric_totals,
    sections,
)
from tests.inventory.recorded import (
    DECISIONS,
    DELIVERIES,
    QBERS,
    STORED,
    STORED_BYTES,
    write_recorded_corridor,
)


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    return write_recorded_corridor(tmp_path / "run")


def test_pack_answers_every_question_from_the_records(recorded: Path) -> None:
    pack = collect_evidence(recorded)
    assert not pack.live
    [link] = pack.links
    assert link["blocks"] == {"accepted": len(QBERS), "discarded": 1}
    # Accepted is not stored: the last accepted block found the pools full.
    assert link["blocks_stored"] == STORED < len(QBERS)
    assert link["key_bits_stored"] == 8 * STORED * STORED_BYTES
    assert link["halves_dropped_full"] == 2
    assert link["mean_qber"] == pytest.approx((sum(QBERS) + 0.12) / (len(QBERS) + 1))
    assert link["keys_delivered"] == 2 * DELIVERIES
    [session] = pack.sessions
    outcomes = [d[0] for d in DECISIONS]
    assert session["decisions"] == len(DECISIONS)
    assert session["fallback_taken"] == outcomes.count("degraded")
    assert session["refused"] == outcomes.count("refused")
    assert session["qkd_missing"] == len(DECISIONS) - outcomes.count("established")
    assert session["qkd_missing_reasons"] == {"pool_empty": session["qkd_missing"]}
    assert "X-Wing alone" in session["fallback_path"]
    hybrid_rotation = next(r for r in pack.rotation if r["what"].startswith("hybrid"))
    assert hybrid_rotation["generations_established"] == len({g for o, _, g in DECISIONS
                                                              if o != "refused"})
    assert [a["ok"] for a in pack.audits] == [True, True, True, True]
    assert {a["entries"] for a in pack.audits} >= {1 + 2 * len(QBERS) + 1 + 2 + DELIVERIES}
    assert len(pack.certificates) == 6  # CA, two KMEs, two SAEs, one operator
    assert all(c["days_left"] > 300 for c in pack.certificates)
    assert pack.risk_after is not None and pack.risk_after["assets"] > 0
    assert pack.risk_after["by_vulnerability"]["qkd"] > 0
    assert pack.risk_before is None
    headings = [h for h, _ in sections(pack)]
    assert headings[:7] == [
        "Which links are QKD-secured, and by what", "Threat model",
        "Fallback when quantum hardware fails, and how often it was taken",
        "How keys are rotated, and where that is logged", "Audit-chain verification",
        "Certificate expiry", "Key-exchange risk before and after"]


def test_a_tampered_responder_hybrid_log_is_reported(recorded: Path) -> None:
    # The responder's decisions are not counted (the initiator's are), but its chain is
    # verified like every other log corridor-up.json names.
    log = recorded.parent / "kme-b" / "hybrid-audit.jsonl"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["fields"]["outcome"] = "established"
    lines[1] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    pack = collect_evidence(recorded)
    bad = next(a for a in pack.audits if a["log"] == str(log))
    assert not bad["ok"] and any("BROKEN" in p for p in pack.problems)
    assert pack.sessions[0]["decisions"] == len(DECISIONS)


def test_a_tampered_log_is_reported_and_not_counted(recorded: Path) -> None:
    log = recorded.parent / "kme-a" / "audit.jsonl"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["fields"]["qber"] = 0.0
    lines[2] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    pack = collect_evidence(recorded)
    bad = next(a for a in pack.audits if a["log"] == str(log))
    assert not bad["ok"] and bad["entries"] == 2
    assert any("BROKEN" in p for p in pack.problems)
    assert pack.links[0]["blocks"] == {"accepted": 1}  # only entries before the break


def test_before_and_after_inventories(recorded: Path, tmp_path: Path) -> None:
    before = tmp_path / "before.json"
    before.write_text(json.dumps({"summary": {"assets": 1, "by_risk": {}, "by_vulnerability":
                                              {}},
                                  "assets": [{"usage": "key-exchange", "level": "critical",
                                              "vulnerability": "shor-broken", "score": 90,
                                              "primitive": "key-agree"}]}))
    pack = collect_evidence(recorded, before=before)
    assert pack.risk_before == {"assets": 1, "by_risk": {"critical": 1, "high": 0,
                                                         "medium": 0, "low": 0},
                                "by_vulnerability": {"shor-broken": 1, "grover-weakened": 0,
                                                     "quantum-safe": 0, "qkd": 0},
                                "max_score": 90.0}
    with pytest.raises(ParameterError):
        collect_evidence(recorded, before=tmp_path / "missing.json")


def test_html_and_pdf_render(recorded: Path, tmp_path: Path) -> None:
    pack = collect_evidence(recorded)
    page = evidence_html(pack)
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "Audit-chain verification" in page
    pdf_path = tmp_path / "evidence.pdf"
    pages = evidence_pdf(pack, pdf_path)
    document = pypdfium2.PdfDocument(str(pdf_path))
    assert len(document) == pages >= 2
    first = np.asarray(document[0].render(scale=1).to_pil().convert("L"))
    assert first.shape[0] > first.shape[1]  # portrait A4
    assert (first < 128).mean() > 0.01  # text on the page, not a blank
    chart = np.asarray(document[len(document) - 1].render(scale=1).to_pil().convert("RGB"))
    colour = np.abs(chart[..., 0].astype(int) - chart[..., 2].astype(int)) > 60
    assert colour.mean() > 0.001  # the coloured bars of the chart
    text = document[0].get_textpage().get_text_range()
    assert "Evidence pack: recorded-test" in text
    document.close()


def test_not_a_corridor_up_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1]")
    with pytest.raises(ParameterError) as info:
        collect_evidence(tmp_path / "x.json")
    assert str(info.value).startswith("FILE")


def test_the_dashboard_listener_and_certificate_are_inventoried(tmp_path: Path) -> None:
    from corridor.inventory.scan_corridor import up_findings
    from corridor.kms.pki import init_pki

    layout = init_pki(tmp_path / "pki", ["kme-a"], [], dashboards=["dashboard"])
    up = {"ca_cert": "pki/ca.pem", "kmes": [], "dashboard_url": "https://127.0.0.1:9/",
          "dashboard_cert": str(layout.dashboards["dashboard"].cert.relative_to(tmp_path))}
    result = up_findings(str(tmp_path / "corridor-up.json"), up)
    groups = [f for f in result.findings if f.field == "dashboard_url"]
    assert groups and all(f.detail.startswith("dashboard TLS accepts") for f in groups)
    assert any("MLKEM" in f.detail for f in groups)
    certs = [f for f in result.findings if f.location.endswith("dashboard/dashboard/cert.pem")]
    assert certs and {f.algorithm for f in certs} >= {"ECDSA"}


def test_live_evidence_of_a_corridor_that_is_not_running_is_refused(tmp_path: Path) -> None:
    """--from-up with no KME answering must not present the recorded files as live."""
    up = write_recorded_corridor(tmp_path / "run")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    missing = tmp_path / "none.pem"
    with pytest.raises(ParameterError, match="none of its KMEs answered") as info:
        collect_evidence(up, connections=[("kme-a", f"https://127.0.0.1:{port}", missing,
                                           missing, missing)], timeout_s=0.5)
    assert info.value.field == "--from-up"


def test_live_metric_totals_leave_out_timestamps_and_buckets() -> None:
    """Summed over KMEs, ``_created`` gave sums of Unix times (7.2e9 for two KMEs)."""
    page = "\n".join([
        "# HELP corridor_keys_delivered_total Keys delivered.",
        'corridor_keys_delivered_total{sae="a"} 3.0',
        'corridor_keys_delivered_total{sae="b"} 4.0',
        'corridor_keys_delivered_created{sae="a"} 1.796e+09',
        'corridor_request_seconds_bucket{le="0.1"} 5.0',
        "corridor_request_seconds_count 5.0",
        "process_cpu_seconds_total 9.0",
        "corridor_broken_line NaNx",
    ])
    assert metric_totals(page) == {"corridor_keys_delivered_total": 7.0,
                                   "corridor_request_seconds_count": 5.0}
