"""``open_decision_audit``: the --audit-log/--audit-key-file pair that hybrid and tunnel
commands share; a bad key file is named, and a good one gives a log that verifies.
``parse_count``: one reading of every count option (``1e6`` as ``--pulses 1e9``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from corridor.cli.common import open_decision_audit, parse_count
from corridor.errors import ParameterError
from corridor.hybrid.policy import DecisionRecorder, decide
from corridor.kms.audit import verify_audit_log


def test_no_audit_log_means_none(tmp_path: Path) -> None:
    assert open_decision_audit(None, None) is None


@pytest.mark.parametrize(("content", "given"), [
    (None, False), ("zz" * 32, True), ("ab" * 16, True)])
def test_a_bad_key_file_is_named(tmp_path: Path, content: str | None, given: bool) -> None:
    key_file = tmp_path / "audit.key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ParameterError) as info:
        open_decision_audit(tmp_path / "audit.jsonl", key_file if given else None)
    assert info.value.field == "--audit-key-file"
    assert not (tmp_path / "audit.jsonl").exists()


def test_decisions_land_in_a_log_that_verifies(tmp_path: Path) -> None:
    key = bytes(range(32))
    (tmp_path / "audit.key").write_text(key.hex())
    log = open_decision_audit(tmp_path / "audit.jsonl", tmp_path / "audit.key")
    DecisionRecorder(log).record(decide("pqc-required", qkd_missing="pool_empty"))
    log.close()
    result = verify_audit_log(tmp_path / "audit.jsonl", key)
    assert result.ok and result.entries == 1


@pytest.mark.parametrize(("text", "count"), [
    ("1000", 1000), ("1_000", 1000), ("1e6", 1_000_000), (" 2.5e5 ", 250_000), (7, 7)])
def test_every_count_option_reads_exponent_form(text: str | int, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(("text", "message"), [
    ("1e9.5", "'1e9.5' is not a number"), ("2.5", "'2.5' is not a whole number"),
    ("inf", "'inf' is not a whole number"), ("ten", "'ten' is not a number")])
def test_a_count_that_is_not_a_whole_number_is_named(text: str, message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        parse_count(text)


@pytest.mark.parametrize("args", [
    ["net", "generate", "--sites", "3e1"],  # were "must be a whole number; got '3e1'"
    ["link", "ldpc-codes", "--code-bits", "1e5x"],
    ["hybrid", "entropy", "check", "--bytes", "1e3x", "--source", "/dev/null"],
    ["link", "run", "--frame-bits", "1e4x"],
    ["net", "simulate", "--request-bits", "2.5e5x"],
    ["inventory", "scan", "--max-file-bytes", "1e6x"],
])
def test_count_options_share_the_parser(args: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corridor.cli import app

    if args[:2] == ["net", "generate"]:
        args = [*args, "--output", str(tmp_path / "g.toml")]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "(30 sites)" in result.output
        return
    result = CliRunner().invoke(app, args)
    (bad,) = [a for a in args if a.endswith("x")]
    assert result.exit_code == 2
    assert f"{bad!r} is not a number" in result.output, result.output
