"""``corridor up`` runs the OTA campaign beside its KMEs: the campaign key crosses on the
corridor's QKD key + X-Wing, and every vehicle reports the release installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_corridor_up_runs_an_ota_campaign_to_its_vehicles(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    process = subprocess.Popen([*CORRIDOR, "up", "--embedded", "two-site", "--workdir",
                                str(workdir), "--duration-s", "100", "--status-interval-s", "2"],
                               cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        reports = workdir / "ota" / "regional" / "reports"
        deadline = time.monotonic() + 90
        while len(list(reports.glob("v-*.json"))) < 3:
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no OTA manifests within 90 s"
            time.sleep(0.5)
        up = json.loads((workdir / "corridor-up.json").read_text())
        assert up["ota"]["server"].startswith("https://127.0.0.1:")
        for path in sorted(reports.glob("v-*.json")):
            report = json.loads(path.read_text())
            assert report["result"] == "installed", report
            assert report["ecus"][f"{path.stem}-telematics"]["version"] == 2
        secrets = json.loads(next((workdir / "ota" / "regional" / "campaigns").glob("*.json"))
                             .read_text())
        assert secrets["session"]["inputs"] == ["qkd", "pqc"]
        # The commands find the campaign's directory and server from corridor-up.json.
        up_file = str(workdir / "corridor-up.json")
        done = subprocess.run([*CORRIDOR, "ota", "vehicle", "v-002", "--from-up", up_file,
                               "--format", "json"], env=ENV, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"] in ("installed", "up_to_date")
        done = subprocess.run([*CORRIDOR, "ota", "status", "--from-up", up_file, "--format",
                               "json"], env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert {r["vehicle_id"] for r in json.loads(done.stdout)} == {"v-001", "v-002",
                                                                      "v-003"}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "ota: running" in out or "ota: idle" in out, out[-2000:]
