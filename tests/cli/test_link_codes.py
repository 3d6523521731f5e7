"""``corridor link ldpc-codes``: builds the codes a QBER selects into the cache, then finds
them there; identities match what the reconciliation uses; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corridor.distill.ldpc_codes as codes
from corridor.cli import app
from corridor.distill.ldpc import LdpcSettings, plan

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "ldpc-cache"
    monkeypatch.setenv(codes.CACHE_ENV, str(directory))
    codes.get_code.cache_clear()
    return directory


def codes_json(*args: str) -> dict:
    result = runner.invoke(app, ["link", "ldpc-codes", "--format", "json", "--quiet", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_builds_what_a_qber_selects_then_reads_it_from_the_cache(private_cache: Path) -> None:
    first = codes_json("--code-bits", "4096", "--qber", "0.02", "--qber", "0.05")
    settings = LdpcSettings(code_bits=4096)
    expected = [plan(1 << 16, q, settings).code.distribution for q in (0.02, 0.05)]
    assert [row["distribution"] for row in first["codes"]] == expected
    assert all(row["built"] for row in first["codes"])
    assert first["cache_dir"] == str(private_cache)
    assert len(list(private_cache.glob("*.npz"))) == 2
    codes.get_code.cache_clear()   # a new process: only the disk cache is left
    second = codes_json("--code-bits", "4096", "--qber", "0.02", "--qber", "0.05")
    assert not any(row["built"] for row in second["codes"])
    assert [r["identity"] for r in second["codes"]] == [r["identity"] for r in first["codes"]]
    for row in second["codes"]:
        code = codes.get_code(row["distribution"], 4096, codes.DEFAULT_CODE_SEED)
        assert row["identity"] == code.identity and row["edges"] == code.edges


def test_without_a_qber_every_published_distribution_is_built() -> None:
    report = codes_json("--code-bits", "1024")
    assert sorted(row["distribution"] for row in report["codes"]) == sorted(codes.DISTRIBUTIONS)


@pytest.mark.parametrize(("args", "field"), [
    (["--qber", "0.7"], "--qber"),
    (["--code-bits", "12"], "--code-bits = 12"),
    (["--efficiency", "0.5"], "--efficiency = 0.5"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], field: str) -> None:
    result = runner.invoke(app, ["link", "ldpc-codes", *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.output
