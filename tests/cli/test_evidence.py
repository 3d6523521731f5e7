"""``corridor evidence`` from the command line: a recorded corridor (fast) and a running
one asked over mutual TLS with the operator certificate (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pypdfium2
import pytest
import typer
from typer.testing import CliRunner

from corridor.cli.evidence import register
from tests.inventory.recorded import write_recorded_corridor


def _app() -> typer.Typer:
    application = typer.Typer()
    register(application)

    @application.callback()
    def _root() -> None:  # keeps ``evidence`` a sub-command
        pass

    return application


APP = _app()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(APP, ["evidence", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_recorded_corridor_to_html_pdf_and_json(tmp_path: Path) -> None:
    up = write_recorded_corridor(tmp_path / "run")
    html, pdf = tmp_path / "e.html", tmp_path / "e.pdf"
    code, out, err = _run(str(up), "--html", str(html), "--pdf", str(pdf))
    assert code == 0, err
    assert "Which links are QKD-secured, and by what" in out
    assert "fallback taken 1 times" in out
    assert html.read_text().count("<h2>") >= 7
    assert len(pypdfium2.PdfDocument(str(pdf))) >= 2
    code, out, _ = _run(str(up), "--format", "json")
    data = json.loads(out)
    assert data["sessions"][0]["fallback_taken"] == 1 and data["live"] is False


def test_a_broken_chain_exits_1(tmp_path: Path) -> None:
    up = write_recorded_corridor(tmp_path / "run")
    log = up.parent / "kme-b" / "audit.jsonl"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["fields"]["pid"] = 2
    lines[0] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    code, out, _ = _run(str(up))
    assert code == 1
    assert "NOT VERIFIED" in out and "BROKEN" in out


@pytest.mark.parametrize(("args", "start"), [
    ([], "error: FILE"), (["a.json", "--from-up", "b.json"], "error: FILE"),
    (["--operator", "x", "a.json"], "error: --operator"),
    (["/nonexistent/corridor-up.json"], "error: FILE = '/nonexistent/corridor-up.json'"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], start: str) -> None:
    code, _, err = _run(*args)
    assert code == 2
    assert err.strip().startswith(start) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("option", "content", "why"), [
    ("--before", None, "No such file or directory"),
    ("--before", "{}", "no summary"),
    ("--after", "not json", "not JSON"),
])
def test_a_bad_inventory_is_named_by_its_option(tmp_path: Path, option: str,
                                                 content: str | None, why: str) -> None:
    up = write_recorded_corridor(tmp_path / "run")
    inventory = tmp_path / "inventory.json"
    if content is not None:
        inventory.write_text(content)
    code, _, err = _run(str(up), option, str(inventory))
    assert code == 2
    assert err.strip().startswith(f"error: {option} = '{inventory}'"), err
    assert why in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_running_corridor_from_up(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "corridor", "up", "--embedded", "two-site", "--workdir",
         str(workdir), "--duration-s", "90", "--status-interval-s", "30", "--no-mobility"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up = workdir / "corridor-up.json"
        deadline = time.monotonic() + 60
        while not up.exists():
            assert process.poll() is None, "corridor up ended early"
            assert time.monotonic() < deadline, "no corridor-up.json within 60 s"
            time.sleep(0.2)
        time.sleep(3.0)  # a few blocks and hybrid decisions
        code, out, err = _run("--from-up", str(up), "--format", "json")
        assert code == 0, err
        pack = json.loads(out)
        assert pack["live"] is True
        assert {a["kme_id"] for a in pack["alarms"]} == {"kme-a", "kme-b"}
        assert pack["metrics"].get("corridor_requests_total", 0) > 0
        accepted = {t["algorithm"] for t in pack["tls"]}
        assert {"X25519MLKEM768", "X25519"} <= accepted
        assert all(a["ok"] for a in pack["audits"])
        assert pack["links"][0]["blocks"].get("accepted", 0) >= 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
