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
    # The table on the terminal shows the inventories' risk too (only the HTML did).
    summary = {"assets": 5, "by_risk": {"critical": 2, "high": 0, "medium": 1, "low": 2},
               "by_vulnerability": {"shor-broken": 2, "grover-weakened": 0,
                                    "quantum-safe": 3, "qkd": 0}}
    (tmp_path / "before.json").write_text(json.dumps({"summary": summary, "assets": []}))
    table = _run("pilot", "report", "--from-up", str(up_file), "--inventory-before",
                 "before.json", cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "key-exchange risk before: 5 assets, by risk critical 2" in table.stdout


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
    far = _run("pilot", "report", "--from-up", "up.json", "--since", "1000000d", cwd=tmp_path)
    assert far.returncode == 2 and len(far.stderr.strip().splitlines()) == 1, far.stderr
    assert "--since = '1000000d'" in far.stderr
    order = _run("pilot", "report", "--from-up", "up.json", "--since", "1h", "--until",
                 "2h", cwd=tmp_path)
    assert order.returncode == 2 and "later than --since" in order.stderr
    (tmp_path / "inv.json").write_text("{}")
    inventory = _run("pilot", "report", "--from-up", "up.json", "--inventory-before",
                     "inv.json", cwd=tmp_path)
    assert inventory.returncode == 2 and "--inventory-before" in inventory.stderr


@pytest.mark.parametrize("period", [["--until", "2020-01-01"],
                                    ["--since", "2030-01-01T00:00:00Z"]])
def test_a_period_outside_the_records_is_refused(tmp_path: Path, period: list[str]) -> None:
    """Not a report whose every KPI reads "not measured" (and a start after its end)."""
    from tests.inventory.recorded import write_recorded_corridor

    up = write_recorded_corridor(tmp_path / "run")
    result = _run("pilot", "report", "--from-up", str(up), *period, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: --since/--until = ") and "holds verified audit" in line
    assert period[1][:4] in line
    # The records' own period still reports.
    whole = _run("pilot", "report", "--from-up", str(up), "--format", "json", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
