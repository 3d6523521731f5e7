"""``corridor hybrid kdf catkdf|caskdf`` and ``corridor hybrid xwing`` against the
reference vectors (ETSI TS 103 744 reference code, X-Wing draft), and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corridor.cli import app, main

DATA = Path(__file__).parents[1] / "hybrid" / "data"
ETSI = json.loads((DATA / "etsi103744_vectors.json").read_text())
XWING = json.loads((DATA / "xwing-draft-connolly-cfrg-xwing-kem.json").read_text())


def run(*args: str) -> str:
    result = CliRunner().invoke(app, ["hybrid", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


@pytest.mark.parametrize("case", ETSI["catkdf"], ids=lambda c: f"{c['hash']}-{c['length']}")
def test_catkdf_prints_the_reference_key(case: dict[str, Any]) -> None:
    args = ["kdf", "catkdf", "--hash", case["hash"], "--length", str(case["length"])]
    for field in ("psk", "k1", "k2", "ma", "mb", "info", "label"):
        args += [f"--{field}", case[field]]
    assert run(*args) == case["key"]


@pytest.mark.parametrize("case", ETSI["caskdf"], ids=lambda c: f"{c['hash']}-{len(c['stages'])}")
def test_caskdf_stages_print_the_reference_chain_and_key(case: dict[str, Any]) -> None:
    chain = ""
    for stage in case["stages"]:
        out = run("kdf", "caskdf", "--hash", case["hash"], "--chain", chain,
                  "--k", stage["k"], "--ma", stage["ma"], "--mb", stage["mb"],
                  "--info", stage["info"], "--label", stage["label"],
                  "--chain-length", str(case["chain_length"]),
                  "--length", str(stage["length"]))
        assert out == f"{stage['chain']} {stage['key']}"
        chain = stage["chain"]


@pytest.mark.parametrize("vector", XWING)
def test_xwing_commands_reproduce_the_vectors(vector: dict[str, Any]) -> None:
    assert run("xwing", "keygen", "--seed", vector["seed"]) == f"{vector['sk']} {vector['pk']}"
    assert run("xwing", "decaps", "--sk", vector["sk"], "--ct", vector["ct"]) == vector["ss"]
    ss, ct = run("xwing", "encaps", "--pk", vector["pk"], "--eseed", vector["eseed"]).split()
    assert ct[-64:] == vector["ct"][-64:]  # the X25519 half follows eseed
    assert run("xwing", "decaps", "--sk", vector["sk"], "--ct", ct) == ss


SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def corridor(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             *args: str) -> tuple[int, str, str]:
    """Run ``corridor ARGS`` through its real entry point, in this process (a
    subprocess costs seconds of imports per case on a shared machine)."""
    monkeypatch.setattr(sys, "argv", ["corridor", *args])
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal must not wrap the line
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--psk", SECRET + "g", ["--psk", "33 characters", "character 33"]),
    ("--k1", SECRET[:-1], ["--k1", "31 hex digits", "even number"]),
    ("--label", "zz" + SECRET, ["--label", "character 1"]),
    ("--k2", "0x" + SECRET, ["--k2", "34 characters, not shown", "leave out the 0x prefix"]),
    ("--hash", "md5", ["--hash", "md5", "sha256"]),
    ("--length", "0", ["length", "1 to 8160"]),
])
def test_a_bad_argument_is_one_line_without_the_secret(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, option: str,
        value: str, words: list[str]) -> None:
    args = {"--k1": SECRET, "--k2": SECRET, "--ma": "aa", "--mb": "bb", "--length": "32",
            "--psk": SECRET, "--label": ""}
    args[option] = value
    code, out, err = corridor(capsys, monkeypatch, "hybrid", "kdf", "catkdf",
                              *[x for kv in args.items() for x in kv])
    assert code == 2, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert SECRET[:8] not in err
    assert out == ""


def test_caskdf_bad_chain_names_the_option(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = corridor(capsys, monkeypatch, "hybrid", "kdf", "caskdf", "--chain", "abc",
                            "--k", SECRET, "--ma", "", "--mb", "", "--chain-length", "32",
                            "--length", "32")
    assert code == 2
    assert err.startswith("error: --chain = '3 hex digits'")


def test_module_entry_point_runs_catkdf() -> None:
    """One real ``python -m corridor`` run: the installed entry point reaches the group."""
    case = ETSI["catkdf"][0]
    args = ["--hash", case["hash"], "--length", str(case["length"])]
    for field in ("psk", "k1", "k2", "ma", "mb", "info", "label"):
        args += [f"--{field}", case[field]]
    result = subprocess.run([sys.executable, "-m", "corridor", "hybrid", "kdf", "catkdf",
                             *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "60"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == case["key"]
