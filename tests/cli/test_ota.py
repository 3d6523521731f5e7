"""``corridor ota`` through the real entry point: init, release, assign, serve, a vehicle
that installs, the status, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corridor.mobility.ota.slots import make_firmware

ENV = {**os.environ, "COLUMNS": "200"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", "ota", *args], env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_release_reaches_a_vehicle_through_the_commands(tmp_path: Path) -> None:
    ota = tmp_path / "ota"
    done = _run("init", "--dir", str(ota), "--vehicles", "2")
    assert done.returncode == 0, done.stderr
    assert "hybrid keys on every role" in done.stdout
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(make_firmware("telematics-hw", 2))
    done = _run("release", str(firmware), "--dir", str(ota), "--name", "oem/telematics-2.bin",
                "--version", "2", "--hardware-id", "telematics-hw", "--format", "json")
    assert done.returncode == 0, done.stderr
    campaign = json.loads(done.stdout)["campaign_id"]
    done = _run("assign", campaign, "--dir", str(ota), "--vehicle", "v-001")
    assert done.returncode == 0, done.stderr
    assert "inputs pqc" in done.stdout and "X-Wing alone" in done.stdout
    server = subprocess.Popen([sys.executable, "-m", "corridor", "ota", "serve", "--dir",
                               str(ota), "--port", "0"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        done = _run("vehicle", "v-001", "--dir", str(ota), "--url", url, "--format", "json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["result"] == "installed" and result["manifest_posted"]
        assert result["installed"]["v-001-telematics"]["version"] == 2
        done = _run("status", "--dir", str(ota), "--format", "json")
        rows = {r["vehicle_id"]: r for r in json.loads(done.stdout)}
        assert rows["v-001"]["state"] == "installed" and rows["v-002"]["state"] == "idle"
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    assert "bytes served" in out


def test_refused_update_exits_1_with_its_reason(tmp_path: Path) -> None:
    ota = tmp_path / "ota"
    assert _run("init", "--dir", str(ota), "--vehicles", "1").returncode == 0
    started = time.monotonic()
    done = _run("vehicle", "v-001", "--dir", str(ota), "--url", "https://127.0.0.1:9",
                "--time-limit-s", "2", "--format", "json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["reason"] == "repository_error"
    assert time.monotonic() - started < 60


@pytest.mark.slow  # seven interpreter starts
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    ota = tmp_path / "ota"
    assert _run("init", "--dir", str(ota), "--vehicles", "1").returncode == 0
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"x")
    for args, field in (
            (("init", "--dir", str(tmp_path / "o2"), "--scheme", "rsa"), "--scheme"),
            (("init", "--dir", str(ota)), "--dir"),
            (("release", str(firmware), "--dir", str(ota), "--name", "a.bin", "--version", "1",
              "--hardware-id", "toaster"), "--hardware-id"),
            (("assign", "c-nope", "--dir", str(ota)), "CAMPAIGN"),
            (("vehicle", "v-999", "--dir", str(ota)), "VEHICLE_ID"),
            (("status", "--dir", str(tmp_path / "none")), "--dir"),
            (("vehicle", "v-001"), "--dir: required (or --from-up)"),
            (("status", "--from-up", str(firmware)), "--from-up")):
        done = _run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), lines
