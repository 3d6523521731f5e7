"""``corridor v2x budget`` and ``corridor v2x attacks`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", "v2x", *args],
                          capture_output=True, text=True, timeout=120)


def test_budget_json_measures_every_profile_and_scheme(tmp_path) -> None:
    plot = tmp_path / "budget.png"
    done = _run("budget", "--format", "json", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert len(rows) == 12 and all(r["cross_decoded"] for r in rows)
    sizes = {(r["profile"], r["scheme"]): r["encoded_bytes"] for r in rows}
    assert sizes[("cam-digest", "ecdsa-p256")] == 179
    assert all(r["fits"] == (r["encoded_bytes"] <= 1400) for r in rows)
    assert not any(r["fits"] for r in rows if r["scheme"] != "ecdsa-p256")
    assert plot.stat().st_size > 10_000


def test_attacks_table_lists_every_refusal() -> None:
    done = _run("attacks", "--scheme", "hybrid")
    assert done.returncode == 0, done.stderr
    for reason in ("replay_duplicate", "replay_stale", "bad_signature", "wrong_certificate",
                   "expired_certificate", "oversize"):
        assert reason in done.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path) -> None:
    for args, field in ((("attacks", "--scheme", "rsa"), "--scheme"),
                        (("budget", "--plot", str(tmp_path / "x.txt")), "--plot"),
                        (("budget", "--format", "xml"), "--format")):
        done = _run(*args)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0]
