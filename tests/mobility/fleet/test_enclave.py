"""The fleet that ``corridor up`` runs: two SAEs of two real KMEs, a depot, vehicles and
traffic on Mosquitto, and a status made of plain data."""

from __future__ import annotations

import json
from pathlib import Path

from corridor.kms.audit import verify_audit_log
from corridor.mobility.fleet.enclave import FleetEnclave
from corridor.mobility.fleet.keys import load_audit_key
from tests.kms.mtls_harness import two_kme_deployment
from tests.mobility.fleet.harness import require_broker, wait_for


def test_enclave_runs_traffic_and_reports_plain_status(tmp_path: Path) -> None:
    require_broker()
    with two_kme_deployment(tmp_path / "kmes") as deployment:
        deployment.ingest(8192)
        enclave = FleetEnclave(deployment.client("sae-a"), deployment.client("sae-b"),
                               "sae-a", "sae-b", tmp_path / "fleet",
                               depot_id=f"depot-{tmp_path.name[-12:]}",
                               command_interval_s=0.05)
        enclave.start()
        try:
            assert enclave.wait_running(30), enclave.status()
            # Five commands make one turn of the traffic plan: one is refused by policy.
            assert wait_for(lambda: sum(enclave.status()["acks"].values()) >= 5, 20)
            status = enclave.status()
            json.dumps(status)  # plain data
            assert status["session"]["inputs"] == ["qkd", "pqc"]
            assert status["session"]["key_id"]
            assert status["acks"]["vehicle:executed"] >= 4
            assert status["acks"]["depot:refused"] >= 1
            assert status["depot"]["refused"] == {"unauthorised": status["acks"][
                "depot:refused"]}
            assert len(status["vehicles"]) == 3
            # Traffic goes on while the status is read: an ack may still be on its way.
            assert sum(v["accepted"] for v in status["vehicles"]) >= \
                status["acks"]["vehicle:executed"]
        finally:
            enclave.close()
        assert enclave.status()["state"] == "stopped"
        key = load_audit_key(tmp_path / "fleet")
        depot_log = next((tmp_path / "fleet" / "audit").glob("depot-*.jsonl"))
        assert verify_audit_log(depot_log, key).ok
        assert verify_audit_log(tmp_path / "fleet" / "audit" / "hybrid.jsonl", key).ok


def test_enclave_says_when_the_broker_is_down(tmp_path: Path) -> None:
    with two_kme_deployment(tmp_path / "kmes") as deployment:
        enclave = FleetEnclave(deployment.client("sae-a"), deployment.client("sae-b"),
                               "sae-a", "sae-b", tmp_path / "fleet", port=1,
                               retry_interval_s=60)
        enclave.start()
        try:
            assert wait_for(lambda: enclave.status()["state"] == "down", 10)
            status = enclave.status()
            assert "127.0.0.1:1" in status["last_error"] and status["session"] is None
        finally:
            enclave.close()
