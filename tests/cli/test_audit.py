"""Tests of ``corridor audit verify|export``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from corridor.cli.audit import register
from corridor.kms.audit import AuditLog

KEK = bytes(range(32))


@pytest.fixture
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)

    @application.callback()
    def _root() -> None:  # keeps ``audit`` a sub-command even when it is the only group
        pass

    return application


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    kek_file = tmp_path / "kek.hex"
    kek_file.write_text(KEK.hex() + "\n")
    kek_file.chmod(0o600)
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, KEK) as log:
        for i in range(3):
            log.emit("keys_delivered", kme_id="kme-a", role="master", count=1,
                     key_ids=[f"id-{i}"], size_bits=256)
        log.emit("link_alarm_raised", link_id="ab", kind="qber_trend", note="a=b|c")
    return log_path, kek_file


def test_verify_intact_exits_0(app: typer.Typer, runner: CliRunner,
                               files: tuple[Path, Path]) -> None:
    log_path, kek_file = files
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--kek-file", str(kek_file)])
    assert result.exit_code == 0, result.output
    assert "intact, 4 entries" in result.output


def test_verify_from_environment_and_json(app: typer.Typer, runner: CliRunner,
                                          files: tuple[Path, Path]) -> None:
    log_path, _ = files
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--kek-env", "TEST_KEK",
                                 "--format", "json"], env={"TEST_KEK": KEK.hex()})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] and data["entries"] == 4 and data["first_bad_seq"] is None


def test_verify_tampered_exits_1_naming_the_entry(app: typer.Typer, runner: CliRunner,
                                                  files: tuple[Path, Path]) -> None:
    log_path, kek_file = files
    lines = log_path.read_bytes().splitlines(keepends=True)
    del lines[1]
    log_path.write_bytes(b"".join(lines))
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--kek-file", str(kek_file)])
    assert result.exit_code == 1
    assert "BROKEN at seq 2 (line 2)" in result.output and "expected" in result.output


def test_verify_wrong_key_exits_1(app: typer.Typer, runner: CliRunner,
                                  files: tuple[Path, Path]) -> None:
    log_path, _ = files
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--kek-env", "TEST_KEK"],
                           env={"TEST_KEK": bytes(32).hex()})
    assert result.exit_code == 1 and "wrong key" in result.output
    assert bytes(32).hex() not in result.output


@pytest.mark.parametrize("args", [[], ["--kek-file", "x", "--kek-env", "Y"]])
def test_verify_needs_exactly_one_key_source(app: typer.Typer, runner: CliRunner,
                                             files: tuple[Path, Path], args: list[str]) -> None:
    result = runner.invoke(app, ["audit", "verify", str(files[0]), *args])
    assert result.exit_code == 2 and "exactly one" in result.output


def test_verify_missing_file_is_a_clean_error(app: typer.Typer, runner: CliRunner,
                                              files: tuple[Path, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(tmp_path / "nope.jsonl"),
                                 "--kek-file", str(files[1])])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "FILE" in result.output


def test_verify_a_file_that_is_no_audit_log_exits_2(app: typer.Typer, runner: CliRunner,
                                                    files: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    """The wrong file (a corridor-up.json) is a usage mistake (exit 2), not a broken
    chain (exit 1); a log whose every line and head were destroyed still reads BROKEN
    as long as its head file is there."""
    log_path, kek_file = files
    other = tmp_path / "corridor-up.json"
    other.write_text('{"kmes": []}\n')
    result = runner.invoke(app, ["audit", "verify", str(other), "--kek-file", str(kek_file)])
    assert result.exit_code == 2, result.output
    assert "FILE" in result.output and "an audit log" in result.output
    log_path.write_text("garbage\n")
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--kek-file", str(kek_file)])
    assert result.exit_code == 1 and "BROKEN at seq 1" in result.output


@pytest.mark.parametrize("fmt", ["jsonl", "cef", "syslog"])
def test_export_writes_one_line_per_entry(app: typer.Typer, runner: CliRunner,
                                          files: tuple[Path, Path], fmt: str) -> None:
    result = runner.invoke(app, ["audit", "export", str(files[0]), "--format", fmt])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    if fmt == "jsonl":
        assert lines == files[0].read_text().splitlines()
    elif fmt == "cef":
        assert all(line.startswith("CEF:0|Corridor|corridor-kms|") for line in lines)
        assert "corridorNote=a\\=b|c" in lines[3]
    else:
        assert all(line.startswith("<") and ">1 " in line for line in lines)


def test_export_unknown_format_is_a_clean_error(app: typer.Typer, runner: CliRunner,
                                                files: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["audit", "export", str(files[0]), "--format", "xml"])
    assert result.exit_code == 2 and "format" in result.output
