"""``corridor fleet``: init, demo (with and without a corridor), and depot, vehicle,
watch and send as separate processes over Mosquitto; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corridor.cli import app
from corridor.kms.node import Corridor, parse_corridor
from corridor.mobility.fleet.enclave import FleetEnclave
from tests.mobility.fleet.harness import require_broker, wait_for

runner = CliRunner()


@pytest.fixture
def corridor(tmp_path: Path) -> Iterator[Corridor]:
    """A two-KME corridor in this process fed by recorded keys (as tests/cli do)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    data = os.urandom(64 * 1024)
    (keys / "alice.bin").write_bytes(data)
    (keys / "bob.bin").write_bytes(data)
    spec = parse_corridor({
        "kme": {"max_key_count": 10_000}, "kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
        "links": [{"id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "preset": "modern-snspd", "parameters": {"length_km": 5.0},
                   "source": "recorded", "keys_dir": str(keys), "block_bytes": 1024}],
        "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}],
        "hybrid": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b",
                    "policy": "both-required"}]})
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as running:
        running.up_extra["hybrid_sessions"] = [
            {"initiator_sae_id": "sae-a", "responder_sae_id": "sae-b",
             "policy": "both-required"}]
        running.write_up_file()
        yield running


def test_init_and_one_line_errors(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    result = runner.invoke(app, ["fleet", "init", "--dir", str(fleet), "--depot", "depot-n",
                                 "--vehicle", "v-1", "--vehicle", "v-2"])
    assert result.exit_code == 0, result.output
    assert (fleet / "private" / "v-1.json").stat().st_mode & 0o077 == 0
    assert "depot-n" in (fleet / "policy.toml").read_text()
    send = ["fleet", "send", "v-1", "immobilise", "--sender", "alice", "--dir", str(fleet)]
    for args, message in [
        (["fleet", "init", "--dir", str(fleet), "--depot", "d", "--vehicle", "v"],
         "public.json exists"),
        (["fleet", "init", "--dir", str(tmp_path / "f2"), "--depot", "bad id",
          "--vehicle", "v"], "--depot = 'bad id'"),
        (["fleet", "init", "--dir", str(tmp_path / "f2"), "--depot", "d", "--vehicle", "v",
          "--officer", "d"], "--officer = 'd'"),
        (["fleet", "send", "v-1", "self-destruct", "--sender", "alice", "--dir", str(fleet)],
         "COMMAND_TYPE = 'self-destruct'"),
        (["fleet", "send", "v-9", "immobilise", "--sender", "alice", "--dir", str(fleet)],
         "VEHICLE_ID = 'v-9'"),
        ([*send, "--param", "mode"], "--param = 'mode': NAME=VALUE"),
        ([*send, "--param", "mode=fast"], "--param mode = 'fast': one of"),
        (["fleet", "send", "v-1", "route-change", "--sender", "alice", "--dir", str(fleet)],
         "--param route_id: required"),
        # Checked before the handshake, which would wait for a depot first.
        ([*send, "--timeout-s", "-3"], "--timeout-s = -3.0"),
        ([*send, "--timeout-s", "0"], "--timeout-s = 0.0"),
        ([*send, "--lifetime-s", "-1"], "--lifetime-s = -1.0"),
        ([*send, "--sae", "no body"], "--sae = 'no body'"),
        (["fleet", "depot", "--dir", str(fleet), "--backend-sae", "no body"],
         "--backend-sae = 'no body'"),
        (["fleet", "demo", "--broker", "localhost"], "--broker = 'localhost': HOST:PORT"),
        # --vehicles sizes a new fleet; the demo would run this one's two vehicles.
        (["fleet", "demo", "--dir", str(fleet), "--vehicles", "5"],
         "--vehicles = 5: 2, the vehicles of the fleet already in"),
        (["fleet", "vehicle", "v-1", "--dir", str(tmp_path / "none")],
         "must be an existing TOML file"),
    ]:
        process = subprocess.run([sys.executable, "-m", "corridor", *args],
                                 capture_output=True, text=True, timeout=120)
        assert process.returncode == 2, process.stderr
        assert message in process.stderr and len(process.stderr.strip().splitlines()) == 1


def test_send_without_a_depot_says_so_within_its_timeout(tmp_path: Path) -> None:
    """No depot answers: ``--timeout-s`` bounds the handshake too (it waited 30 s), and
    the line says which depot to start."""
    require_broker()
    fleet = tmp_path / "fleet"
    assert runner.invoke(app, ["fleet", "init", "--dir", str(fleet), "--depot", "depot-q",
                               "--vehicle", "v-1"]).exit_code == 0
    process = subprocess.run(
        [sys.executable, "-m", "corridor", "fleet", "send", "v-1", "immobilise", "--sender",
         "alice", "--dir", str(fleet), "--timeout-s", "1.5"],
        capture_output=True, text=True, timeout=25)
    assert process.returncode == 2, process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert "depot depot-q sent no hybrid handshake message within 1.5 s" in last, last
    assert f"corridor fleet depot --dir {fleet}" in last, last


def test_demo_without_a_corridor(tmp_path: Path) -> None:
    require_broker()
    result = runner.invoke(app, ["fleet", "demo", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["session"]["inputs"] == ["pqc"]
    assert report["session"]["missing"] == ["qkd:no_kme_configured"]
    outcomes = [(s["step"], s["outcome"], s.get("reason")) for s in report["steps"]]
    assert outcomes[2] == ("dispatcher: immobilise (not its role)", "refused", "unauthorised")
    assert [o[1] for o in outcomes] == ["executed", "executed", "refused", "executed",
                                         "refused", "refused", "refused"]


def test_demo_and_enclave_on_a_corridor(corridor: Corridor, tmp_path: Path) -> None:
    require_broker()
    result = runner.invoke(app, ["fleet", "demo", "--from-up", str(corridor.up_file)])
    assert result.exit_code == 0, result.output
    assert "policy both-required, inputs qkd+pqc" in result.stdout
    assert "replay of a captured command to the vehicle: refused by vehicle (replayed)" \
        in result.stdout
    enclave = FleetEnclave.for_corridor(corridor, command_interval_s=0.05, vehicle_count=2)
    enclave.start()
    try:
        assert enclave.wait_running(30), enclave.status()
        assert wait_for(lambda: enclave.status()["acks"].get("vehicle:executed", 0) >= 2, 20)
        status = enclave.status()
        assert (status["backend_sae_id"], status["depot_sae_id"]) == ("sae-a", "sae-b")
        assert status["session"]["inputs"] == ["qkd", "pqc"]
    finally:
        enclave.close()
    assert (corridor.workdir / "fleet" / "audit" / "hybrid.jsonl").exists()


class _Process:
    """A ``corridor fleet`` process whose output lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "corridor", "fleet", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        assert wait_for(lambda: any(text in line for line in self.lines), timeout_s), \
            "".join(self.lines)

    def stop(self) -> str:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(timeout=10)
        return "".join(self.lines)


def test_depot_vehicle_watch_and_send_as_processes(corridor: Corridor, tmp_path: Path) -> None:
    require_broker()
    fleet, up = tmp_path / "fleet", str(corridor.up_file)
    depot = f"depot-{os.urandom(3).hex()}"
    assert runner.invoke(app, ["fleet", "init", "--dir", str(fleet), "--depot", depot,
                               "--vehicle", "v-1"]).exit_code == 0
    depot_process = _Process("depot", "--dir", str(fleet), "--from-up", up)
    vehicle = _Process("vehicle", "v-1", "--dir", str(fleet))
    processes = [depot_process, vehicle]
    try:
        depot_process.wait_for("Ctrl-C stops")  # subscribed: nothing sent before is lost
        vehicle.wait_for("Ctrl-C stops")
        watch = _Process("watch", "--dir", str(fleet), "--from-up", up, "--count", "1")
        processes.append(watch)
        watch.wait_for("watching acknowledgements")
        send = subprocess.run(
            [sys.executable, "-m", "corridor", "fleet", "send", "v-1", "route-change",
             "--sender", "bob", "--dir", str(fleet), "--from-up", up, "--param", "route_id=r-5",
             "--param", "waypoints=52.1,4.3;52.2,4.4", "--format", "json"],
            capture_output=True, text=True, timeout=120)
        assert send.returncode == 0, send.stdout + send.stderr
        report = json.loads(send.stdout)
        assert report["ack"]["status"] == "executed" and report["sequence"] == 1
        assert report["session"]["inputs"] == ["qkd", "pqc"]
        watch.wait_for(f"{report['command_id']}: executed by vehicle v-1")
        again = subprocess.run(
            [sys.executable, "-m", "corridor", "fleet", "send", "v-1", "immobilise",
             "--sender", "bob", "--dir", str(fleet), "--from-up", up],
            capture_output=True, text=True, timeout=120)
        assert again.returncode == 1 and "refused by depot (unauthorised)" in again.stdout
    finally:
        outputs = [p.stop() for p in processes]
    assert "v-1: executed" in outputs[1] and "sequence=1" in outputs[1]
