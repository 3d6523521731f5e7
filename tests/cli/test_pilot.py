"""``corridor pilot report`` on a real run of ``corridor up``: its figures against counts
recomputed here straight from the audit files; and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRIDOR, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_report_of_a_real_run_matches_the_audit_files(tmp_path: Path) -> None:
    up = _run("up", "--embedded", "two-site", "--workdir", "run", "--duration-s", "20",
              "--no-mobility", cwd=tmp_path)
    assert up.returncode == 0, up.stderr[-2000:]
    up_file = tmp_path / "run" / "corridor-up.json"
    done = _run("pilot", "report", "--from-up", str(up_file), "--format", "json",
                "--out", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    # Recount from the raw lines (the chains verified: the report says so).
    assert report["chains_ok"] is True
    entries = [json.loads(line) for kme in ("kme-a", "kme-b")
               for line in (tmp_path / "run" / kme / "audit.jsonl").read_text().splitlines()]
    master = [e for e in entries if e["event"] == "keys_delivered"
              and e["fields"]["role"] == "master"]
    slave_ids = {k for e in entries if e["event"] == "keys_delivered"
                 and e["fields"]["role"] == "slave" for k in e["fields"]["key_ids"]}
    refused = sum(e["fields"].get("count", 1) for e in entries
                  if e["event"] in ("request_rejected", "requests_rejected_summary")
                  and e["fields"]["endpoint"] == "enc_keys"
                  and e["fields"]["status_code"] == 503)
    assert master, "the hybrid session fetched no key in 20 s"
    assert report["requests_served"] == len(master)
    assert report["keys_delivered"] == sum(e["fields"]["count"] for e in master)
    assert report["requests_refused_no_key"] == refused
    assert report["time_to_key_samples"] == len(
        {k for e in master for k in e["fields"]["key_ids"]} & slave_ids)
    blocks = sum(1 for line in (tmp_path / "run" / "kme-a" / "audit.jsonl").open()
                 if '"event":"link_block"' in line)
    assert sum(report["links"]["link-ab"]["blocks"].values()) == blocks
    decisions = [json.loads(line) for line in
                 (tmp_path / "run" / "kme-a" / "hybrid-audit.jsonl").read_text().splitlines()]
    assert sum(sum(c.values()) for c in report["hybrid_decisions"].values()) == len(decisions)
    page = (tmp_path / "report.html").read_text()
    assert "Decision table" in page and "data:image/png;base64," in page


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = _run("pilot", "report", "--from-up", "nope.json", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: --from-up = 'nope.json': an existing corridor-up.json"]
    (tmp_path / "up.json").write_text(json.dumps({"kmes": []}))
    when = _run("pilot", "report", "--from-up", "up.json", "--since", "last week",
                cwd=tmp_path)
    assert when.returncode == 2 and len(when.stderr.strip().splitlines()) == 1
    assert "--since" in when.stderr and "'last week'" in when.stderr
    order = _run("pilot", "report", "--from-up", "up.json", "--since", "1h", "--until",
                 "2h", cwd=tmp_path)
    assert order.returncode == 2 and "later than --since" in order.stderr
    (tmp_path / "inv.json").write_text("{}")
    inventory = _run("pilot", "report", "--from-up", "up.json", "--inventory-before",
                     "inv.json", cwd=tmp_path)
    assert inventory.returncode == 2 and "--inventory-before" in inventory.stderr
