"""``corridor web --config`` against a real deployment: two ``corridor kme serve``
processes sharing a simulated link over TCP; the dashboard sees both KMEs, the link's
pools and QBER and both audit chains, and shows a KME that dies as unreachable."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from corridor.kms.pki import ROLE_DASHBOARD, add_entity
from tests.kms.test_split_site import LINK, _serve_files, serve, stop_processes
from tests.web.up_harness import client, running_web


def _snapshot(url: str, pki: Path, condition: Any, what: str,
              timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with client(pki, "operator/ops") as op:
        while True:
            snap = op.get(url + "api/snapshot").json()
            if condition(snap):
                return snap
            assert time.monotonic() < deadline, f"{what}: {json.dumps(snap)[:2000]}"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_corridor_web_watches_kme_serve_processes(tmp_path: Path) -> None:
    ports, config, pki = _serve_files(tmp_path)
    add_entity(pki, ROLE_DASHBOARD, "dash")
    logs = {kme: tmp_path / f"{kme}.log" for kme in ports}
    processes = {kme: serve(config, kme, tmp_path / "state", logs[kme]) for kme in ports}
    try:
        with running_web(tmp_path, "--config", str(config), "--duration-s", "150") as url:
            root = pki.root

            def healthy(snap: dict[str, Any]) -> bool:
                link = snap["links"][0]
                return (all(s["reachable"] for s in snap["sites"]) and link["qber"] is not None
                        and link["state"] in ("ok", "pool_full")
                        and sum(p["stored_keys"] for p in link["pools"]) > 0
                        and len(snap["audit"]["chains"]) == 2)

            snap = _snapshot(url, root, healthy, "both KMEs and the link's key")
            [link] = snap["links"]
            assert link["link_id"] == LINK and link["state"] in ("ok", "pool_full")
            assert {p["kme_id"] for p in link["pools"]} == {"kme-a", "kme-b"}
            assert all(c["ok"] for c in snap["audit"]["chains"])
            assert any(e["event"] == "block_ingested" for e in snap["audit"]["tail"])
            assert "dashboard" in {c["role"] for c in snap["certificates"]}
            # A KME that dies is shown as unreachable, its link in alarm, not as healthy.
            processes["kme-b"].send_signal(signal.SIGKILL)
            processes["kme-b"].wait(10)
            snap = _snapshot(url, root, lambda s: not next(
                x for x in s["sites"] if x["kme_id"] == "kme-b")["reachable"],
                "kme-b unreachable", timeout_s=30)
            [link] = snap["links"]
            assert link["level"] == "alarm" and "kme-b unreachable" in link["state"]
            chains = {c["kme_id"]: c for c in snap["audit"]["chains"]}
            assert chains["kme-b"]["ok"] is None and "not read" in chains["kme-b"]["reason"]
            assert chains["kme-a"]["ok"] is True
    finally:
        stop_processes(processes)
