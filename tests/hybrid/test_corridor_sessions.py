"""The hybrid session of ``corridor up``: two SAEs of an embedded corridor, keys from its
two KMEs over mutual TLS, rotating, visible in the status, audited and counted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from corridor.cli.up import status_line, status_table
from corridor.hybrid.corridor_sessions import HYBRID_AUDIT_NAME, CorridorSessions
from corridor.kms.audit import verify_audit_log
from corridor.kms.crypto import load_kek
from corridor.kms.node import Corridor, parse_corridor


def _spec(keys_dir: Path, link: dict[str, Any] | None = None, **hybrid: Any) -> Any:
    return parse_corridor({
        "name": "test", "kme": {"max_key_count": 10_000},
        "kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
        "links": [{"id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "preset": "modern-snspd", "parameters": {"length_km": 5.0},
                   "source": "recorded", "keys_dir": str(keys_dir), "block_bytes": 1024,
                   **(link or {})}],
        "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}],
        "hybrid": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", **hybrid}]})


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    data = os.urandom(64 * 1024)
    (directory / "alice.bin").write_bytes(data)
    (directory / "bob.bin").write_bytes(data)
    return directory


def _wait(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_corridor_runs_a_rotating_hybrid_session(tmp_path: Path, keys_dir: Path) -> None:
    spec = _spec(keys_dir, policy="both-required", rekey_after_s=1.0)
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        hybrid = CorridorSessions(corridor)
        try:
            hybrid.start(heartbeat_interval_s=0.1, retry_interval_s=0.2)
            corridor.up_extra["hybrid_sessions"] = hybrid.describe()
            corridor.write_up_file()
            _wait(lambda: hybrid.status()[0]["rotations"] >= 2)
            [status] = hybrid.status()
            assert status["state"] == "established" and status["inputs"] == ["qkd", "pqc"]
            assert status["generation"] >= 2 and status["key_id"]
            assert "hybrid: sae-a->sae-b: policy=both-required state=established" in \
                status_line(corridor, hybrid)
            assert len(status_table(corridor, hybrid).renderables) == 3
            up = json.loads(corridor.up_file.read_text())
            [described] = up["hybrid_sessions"]
            assert described["policy"] == "both-required"
            assert [s["audit_log"] for s in described["sides"]] == [
                f"kme-a/{HYBRID_AUDIT_NAME}", f"kme-b/{HYBRID_AUDIT_NAME}"]
            registry = corridor.nodes["kme-a"].metrics.registry
            established = registry.get_sample_value(
                "corridor_hybrid_sessions_total",
                {"policy": "both-required", "inputs": "qkd+pqc", "outcome": "established"})
            assert established is not None and established >= 3
        finally:
            hybrid.close()
        for kme_id, role in (("kme-a", "initiator"), ("kme-b", "responder")):
            node = corridor.nodes[kme_id]
            assert node.kek_path is not None
            path = node.state_dir / HYBRID_AUDIT_NAME
            result = verify_audit_log(path, load_kek(node.kek_path))
            assert result.ok and result.entries >= 3
            entries = [json.loads(line) for line in path.read_text().splitlines()]
            decisions = [e["fields"] for e in entries if e["event"] == "hybrid_decision"]
            assert decisions and all(e["role"] == role for e in decisions)
            assert {e["generation"] for e in decisions} >= {0, 1, 2}


@pytest.mark.timeout(120)
def test_an_empty_pool_shows_as_a_refusal_under_both_required(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    (empty / "alice.bin").write_bytes(b"")
    (empty / "bob.bin").write_bytes(b"")
    with Corridor(_spec(empty), tmp_path / "run", host="127.0.0.1") as corridor:
        hybrid = CorridorSessions(corridor)
        try:
            hybrid.start(heartbeat_interval_s=0.1, retry_interval_s=0.2)
            _wait(lambda: hybrid.status()[0]["decisions"].get("refused", 0) >= 2)
            [status] = hybrid.status()
            assert status["state"] == "down" and status["inputs"] == []
            assert status["last_error"].startswith("qkd_key_unavailable: no QKD key "
                                                   "(pool_empty)")
            assert "error=qkd_key_unavailable" in status_line(corridor, hybrid)
        finally:
            hybrid.close()


@pytest.mark.timeout(120)
def test_a_degraded_session_takes_the_qkd_key_once_the_link_is_back(
        tmp_path: Path, keys_dir: Path) -> None:
    """Policy ``any`` on a quarantined link: PQC alone (degraded); once an operator
    clears the link, the session re-keys within ``upgrade_after_s`` with QKD + PQC,
    long before the pair's own limit (an hour)."""
    # A quarantined link's feeder reads and discards the recording: play it at a link's
    # pace (50 blocks/s, 20 s of recording) so that the seconds of quarantine do not use
    # it all up before the clear (as fast as the feeder takes them, the 64 blocks of the
    # shared fixture were gone before the clear in one CI run).
    data = os.urandom(1024 * 1024)
    (keys_dir / "alice.bin").write_bytes(data)
    (keys_dir / "bob.bin").write_bytes(data)
    spec = _spec(keys_dir, link={"block_interval_s": 0.02}, policy="any",
                 rekey_after_s=3600.0)
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as corridor:
        assert corridor.monitor is not None
        corridor.monitor.observe_block("link-ab", 10**6, aborted_reason="authentication_failed",
                                       qber=None, secret_bits=0)
        assert corridor.monitor.is_quarantined("link-ab")
        hybrid = CorridorSessions(corridor)
        try:
            hybrid.start(heartbeat_interval_s=0.1, retry_interval_s=0.2, upgrade_after_s=0.5)
            _wait(lambda: hybrid.status()[0]["generation"] is not None)
            [first] = hybrid.status()
            assert first["state"] == "degraded" and first["inputs"] == ["pqc"]
            assert any(m.startswith("qkd") for m in first["missing"])
            time.sleep(1.5)  # still quarantined: upgrade attempts stay degraded
            assert hybrid.status()[0]["inputs"] == ["pqc"]
            corridor.monitor.clear("link-ab", "operator", reason="test: link is back")
            _wait(lambda: hybrid.status()[0]["inputs"] == ["qkd", "pqc"], timeout_s=20)
            [upgraded] = hybrid.status()
            assert upgraded["state"] == "established" and upgraded["missing"] == []
            assert upgraded["generation"] > first["generation"]
            # Once nothing is missing it waits for the pair's limits again.
            generation = upgraded["generation"]
            time.sleep(1.5)
            assert hybrid.status()[0]["generation"] == generation
        finally:
            hybrid.close()
