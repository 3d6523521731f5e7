"""``corridor inventory scan|plan`` from the command line: table, JSON with the summary
the dashboard reads, a CBOM that validates, --fail-on for CI, the plan, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from typer.testing import CliRunner

from corridor.cli.inventory import register
from corridor.inventory import load_summary
from tests.inventory.corpus import build_corpus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POLICY = str(EXAMPLES / "inventory-policy.toml")
ENV = {**os.environ, "COLUMNS": "250",
       "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


@dataclass
class Run:
    """What a command did: exit code, stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


def _app() -> typer.Typer:
    application = typer.Typer()
    register(application)

    @application.callback()
    def _root() -> None:  # keeps ``inventory`` a sub-command
        pass

    return application


APP = _app()


def _corridor(*args: str) -> Run:
    """The command in this process (fast); see test_the_console_script for the real one."""
    result = CliRunner().invoke(APP, list(args), env={"COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def test_the_console_script(tmp_path: Path) -> None:
    (tmp_path / "wg0.conf").write_text("[Interface]\nPrivateKey = " + "A" * 43 + "=\n")
    result = subprocess.run([sys.executable, "-m", "corridor", "inventory", "scan",
                             str(tmp_path), "--format", "json", "--fail-on", "severe"],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --fail-on = 'severe': one of critical, high, "
                                     "medium, low")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-corpus")
    build_corpus(root)
    return root


def test_json_has_the_summary_assets_and_skips(corpus: Path, tmp_path: Path) -> None:
    (corpus.parent / "garbage.pem").write_bytes(b"\x00\xff" * 10)
    out = tmp_path / "inventory.json"
    result = _corridor("inventory", "scan", str(corpus), str(corpus.parent / "garbage.pem"),
                       "--format", "json", "--out", str(out), "--policy", POLICY)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"summary", "assets", "skipped"}
    summary = data["summary"]
    assert list(summary["by_risk"]) == ["critical", "high", "medium", "low"]
    assert list(summary["by_vulnerability"]) == ["shor-broken", "grover-weakened",
                                                 "quantum-safe", "qkd"]
    assert summary["assets"] == len(data["assets"]) == sum(summary["by_risk"].values()) \
        == sum(summary["by_vulnerability"].values())
    assert summary["by_vulnerability"]["qkd"] > 0 and summary["by_risk"]["critical"] > 0
    assert data["skipped"] == [{"location": str(corpus.parent / "garbage.pem"),
                                "reason": "no PEM block (binary data)"}]
    asset = data["assets"][0]
    assert asset["level"] == "critical" and asset["system"] != "unassigned"
    assert {"location", "algorithm", "key_size_bits", "method", "vulnerability",
            "mosca_margin_years", "nist_status", "score"} <= set(asset)
    assert load_summary(out) == summary
    # stdout gives the same object
    stdout = _corridor("inventory", "scan", str(corpus), "--format", "json")
    assert json.loads(stdout.stdout)["summary"]["assets"] == summary["assets"]


def test_cyclonedx_output_validates(corpus: Path, tmp_path: Path) -> None:
    result = _corridor("inventory", "scan", str(corpus), "--format", "cyclonedx")
    assert result.returncode == 0, result.stderr
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(result.stdout) is None
    assert json.loads(result.stdout)["bomFormat"] == "CycloneDX"


def test_table_and_fail_on(corpus: Path) -> None:
    table = _corridor("inventory", "scan", str(corpus / "etc" / "ssh"), "--fail-on", "high")
    assert table.returncode == 1
    assert "mlkem768x25519" in table.stdout and "sshd_config:3" in table.stdout
    assert table.stderr.startswith("fail-on high: ")
    safe = _corridor("inventory", "scan", str(corpus / "etc" / "wireguard"),
                     "--fail-on", "critical", "--crqc-years", "30")
    assert safe.returncode == 0, safe.stdout + safe.stderr


def test_the_table_goes_to_out_when_given(corpus: Path, tmp_path: Path) -> None:
    """``--out`` with the default table format writes the table there (it was printed
    and the file never written)."""
    out = tmp_path / "table.txt"
    done = _corridor("inventory", "scan", str(corpus / "etc" / "ssh"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "mlkem768x25519" in out.read_text() and "mlkem768x25519" not in done.stdout
    missing = _corridor("inventory", "scan", str(corpus / "etc" / "ssh"), "--out",
                        str(tmp_path / "no" / "t.txt"))
    assert missing.returncode == 2 and "--out" in missing.stderr


@pytest.mark.parametrize(("args", "line"), [
    (["--fail-on", "severe"], "error: --fail-on = 'severe': one of critical, high, medium, "
                              "low"),
    (["--crqc-years", "3"], "error: --crqc-years = 3.0: a number of years from 5 to 30"),
    (["--policy", "/nonexistent.toml"], "error: --policy = '/nonexistent.toml': must be an "
                                        "existing TOML policy file"),
    (["--timeout-s", "0"], "error: --timeout-s = 0.0: a number of seconds in (0, 300]"),
])
def test_bad_options_are_one_line_and_exit_2(corpus: Path, args: list[str], line: str) -> None:
    result = _corridor("inventory", "scan", str(corpus / "etc"), *args)
    assert result.returncode == 2
    assert result.stderr.strip() == line


def test_no_target_is_an_error() -> None:
    result = _corridor("inventory", "scan")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: TARGETS")


def test_a_mistyped_path_is_an_error_not_an_empty_passing_scan(corpus: Path) -> None:
    # A CI gate (--fail-on) must not pass because the path it was given does not exist.
    result = _corridor("inventory", "scan", str(corpus / "etc"), "/nonexistent/src",
                       "--fail-on", "low")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: TARGETS = '/nonexistent/src': an existing "
                                     "file or directory, or host:port")


def test_plan_from_a_scan_and_from_json(corpus: Path, tmp_path: Path) -> None:
    markdown = _corridor("inventory", "plan", str(corpus), "--policy", POLICY)
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("# Cryptographic migration plan")
    assert "## Phase 3: QKD for the premium trust zones" in markdown.stdout
    inventory = tmp_path / "inv.json"
    _corridor("inventory", "scan", str(corpus), "--format", "json", "--out", str(inventory))
    page = tmp_path / "plan.html"
    html = _corridor("inventory", "plan", "--inventory", str(inventory), "--policy", POLICY,
                     "--format", "html", "--out", str(page))
    assert html.returncode == 0, html.stderr
    assert page.read_text().startswith("<!doctype html>")
    assert page.read_text().count("<li><b>") == markdown.stdout.count("**") // 2
    both = _corridor("inventory", "plan", str(corpus), "--inventory", str(inventory))
    assert both.returncode == 2 and both.stderr.startswith("error: --inventory")


def test_load_summary_refuses_other_json(tmp_path: Path) -> None:
    from corridor.errors import ParameterError

    (tmp_path / "x.json").write_text(json.dumps({"assets": []}))
    with pytest.raises(ParameterError):
        load_summary(tmp_path / "x.json")


def test_fail_on_fails_when_a_target_could_not_be_scanned(corpus: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]   # closed again below: nothing listens there
    result = _corridor("inventory", "scan", str(corpus / "etc" / "wireguard"),
                       f"127.0.0.1:{port}", "--fail-on", "critical", "--crqc-years", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"fail-on critical: 127.0.0.1:{port} was not scanned")
