"""One error style for every command: a mistake is one line on stderr, ``error: ...``
naming the option and the value, exit code 2, never a traceback or a boxed panel,
whether Corridor's validation or the option parser found it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the line


def corridor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.mark.parametrize(("args", "names"), [
    (["link", "rate", "--distance-km", "10", "--block-pulses", "1e10x"],
     ["--block-pulses", "1e10x"]),
    (["link", "simulate", "--pulses", "many"], ["--pulses", "many"]),
    (["link", "rate", "--bogus"], ["--bogus"]),
    (["link", "rate", "--format", "xml"], ["--format", "xml"]),
    (["link", "rate", "--preset", "nope"], ["preset", "nope"]),
    (["link", "rate", "--distance-km", "-3"], ["--distance-km", "-3"]),
    # typer's coercion of a list of numbers names no value itself.
    (["link", "rate", "--distance-km", "abc"], ["--distance-km", "'abc'"]),
    (["link", "run", "--distance-km=ten"], ["--distance-km", "'ten'"]),
    (["sae", "get-key"], ["slave_sae_id"]),
    # A path the system refuses: the path and why, not a traceback.
    (["pki", "init", "--out", __file__, "--kme", "kme-a"], [__file__, "File exists"]),
    (["ota", "init", "--dir", __file__], [__file__, "Not a directory"]),
    (["fleet", "init", "--dir", "unused-fleet", "--depot", "d1", "--vehicle", "v1",
      "--vehicle", "v1"], ["--vehicle", "distinct"]),
])
def test_every_mistake_is_one_line_with_exit_code_2(args: list[str], names: list[str]) -> None:
    result = corridor(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


def test_pulse_counts_read_exponent_form_everywhere() -> None:
    """``--block-pulses 1e10`` is read like ``--pulses 1e9`` (one number parser)."""
    result = corridor("link", "rate", "--preset", "modern-snspd", "--distance-km", "10",
                      "--block-pulses", "1e10", "--no-optimise", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert '"block_pulses": 10000000000' in result.stdout


def test_no_arguments_prints_help() -> None:
    result = corridor()
    assert "Usage" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["link", "rate", "--distance-km", "10", "20"],
                                  ["link", "rate", "--distance-km", "10", "--format", "json"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(args: list[str]) -> None:
    """``corridor ... | head``: the pipe closes before the command writes; it ends with
    the status of SIGPIPE (141) and no traceback, as other command-line tools do."""
    process = subprocess.Popen([sys.executable, "-m", "corridor", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # long before the command has anything to write
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_json_onto_a_full_device_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        process = subprocess.run([sys.executable, "-m", "corridor", "link", "rate",
                                  "--distance-km", "10", "--format", "json"],
                                 stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: standard output cannot be written: No space left on device"]


def test_printed_paths_are_never_hard_wrapped_into_a_pipe(tmp_path: Path) -> None:
    out = tmp_path / ("a-rather-long-directory-name-" * 3) / "pki"
    process = subprocess.run([sys.executable, "-m", "corridor", "pki", "init", "--out",
                              str(out), "--kme", "kme-a", "--sae", "s@kme-a"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert f"CA certificate: {out / 'ca.pem'}" in process.stdout.splitlines()
