"""Trusted-node relay between four `corridor kme serve` processes over mutual TLS.

A diamond of KMEs: k1 - k2 - k4 and k1 - k3 - k4, each link fed from recorded key files.
SAE s1 (at k1) keeps asking for keys for s4 (at k4), two hops away. The trusted node on
the path in use is killed with kill -9 mid-load and started again: keys keep coming over
the other path, no key ID is delivered twice, every key s1 received is fetched by s4
once with the same bytes, and every key the far end stored for a relay that failed is
withdrawn or expires there (never a key at only one end that an SAE could use).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from corridor.errors import CorridorError
from corridor.kms.client import SaeClient
from corridor.kms.pki import init_pki

KMES = ("k1", "k2", "k3", "k4")
LINKS = {"l12": ("k1", "k2"), "l24": ("k2", "k4"), "l13": ("k1", "k3"), "l34": ("k3", "k4")}
SAES = {"s1": "k1", "s4": "k4"}
LIFETIME_S = 16.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_corridor(tmp_path: Path, ports: dict[str, int]) -> Path:
    lines = ['name = "diamond"', "", "[kme]", "max_key_count = 100000",
             f"undelivered_key_lifetime_s = {LIFETIME_S}", ""]
    for kme in KMES:
        lines += ["[[kmes]]", f'id = "{kme}"', 'host = "127.0.0.1"', f"port = {ports[kme]}", ""]
    for link_id, (alice, bob) in LINKS.items():
        keys = tmp_path / "keys" / link_id
        keys.mkdir(parents=True)
        data = os.urandom(2000 * 1024)
        (keys / "alice.bin").write_bytes(data)
        (keys / "bob.bin").write_bytes(data)
        lines += ["[[links]]", f'id = "{link_id}"', f'alice_kme = "{alice}"',
                  f'bob_kme = "{bob}"', 'source = "recorded"', f'keys_dir = "{keys}"',
                  "block_bytes = 1024", "block_interval_s = 0.01", ""]
    for sae, kme in SAES.items():
        lines += ["[[saes]]", f'id = "{sae}"', f'kme = "{kme}"', ""]
    path = tmp_path / "diamond.toml"
    path.write_text("\n".join(lines))
    tomllib.loads(path.read_text())
    return path


def _serve(config: Path, kme: str, workdir: Path, log: Path) -> subprocess.Popen[str]:
    corridor = str(Path(sys.executable).parent / "corridor")
    with log.open("a") as out:
        return subprocess.Popen([corridor, "kme", "serve", "--config", str(config), "--kme",
                                 kme, "--workdir", str(workdir), "--log-text"],
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def _audit(workdir: Path, kme: str) -> list[dict[str, Any]]:
    path = workdir / kme / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killing_a_trusted_node_mid_relay_loses_nothing(tmp_path: Path) -> None:
    ports = {kme: _free_port() for kme in KMES}
    config = _write_corridor(tmp_path, ports)
    state = tmp_path / "state"
    pki = init_pki(state / "pki", list(KMES), list(SAES.items()))
    logs = {kme: tmp_path / f"{kme}.log" for kme in KMES}
    processes = {kme: _serve(config, kme, state, logs[kme]) for kme in KMES}

    def client(sae: str) -> SaeClient:
        kme = SAES[sae]
        return SaeClient(f"https://127.0.0.1:{ports[kme]}", pki.saes[sae].cert,
                         pki.saes[sae].key, pki.ca_cert, expected_kme_id=kme, timeout_s=30.0)

    def all_logs() -> str:
        return "\n".join(f"--- {k}\n{v.read_text()[-3000:]}" for k, v in logs.items())

    delivered: list[tuple[str, bytes]] = []
    failures: list[str] = []
    stop = threading.Event()

    fetched: list[tuple[str, bytes]] = []

    def load() -> None:
        # s1 gets keys for s4 and s4 fetches each batch by ID right away, as a pair of
        # applications would.
        with client("s1") as s1, client("s4") as s4:
            while not stop.is_set():
                try:
                    got = [(k.key_id, k.key) for k in s1.get_key("s4", number=4)]
                except CorridorError as exc:
                    failures.append(str(exc)[:200])
                    time.sleep(0.1)
                    continue
                delivered.extend(got)
                fetched.extend((k.key_id, k.key) for k in s4.get_key_with_id(
                    "s1", [key_id for key_id, _ in got]))

    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, all_logs()
            for kme, process in processes.items():
                assert process.poll() is None, (kme, all_logs())
            if not all("serving at" in logs[kme].read_text() for kme in KMES):
                time.sleep(0.3)
                continue
            try:
                with client("s1") as s1:
                    status = s1.status("s4")
                if status.stored_key_count >= 50:
                    break
            except CorridorError:
                pass
            time.sleep(0.3)
        assert status.target_KME_ID == "k4"
        assert status.status_extension is not None
        [path] = status.status_extension["relay"]["paths"]
        trusted = path[1]
        assert path[0] == "k1" and path[-1] == "k4" and trusted in ("k2", "k3")
        other = "k3" if trusted == "k2" else "k2"

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(3.0)
        before_kill = len(delivered)
        processes[trusted].send_signal(signal.SIGKILL)
        processes[trusted].wait(20)
        time.sleep(6.0)
        during_outage = len(delivered)
        processes[trusted] = _serve(config, trusted, state, logs[trusted])
        time.sleep(6.0)
        stop.set()
        worker.join(60)
        assert before_kill > 0, (failures[:5], all_logs())
        assert during_outage > before_kill, ("no key over the other path", failures[:5])

        # No key ID twice, no key bytes twice.
        ids = [key_id for key_id, _ in delivered]
        assert len(set(ids)) == len(ids)
        assert len({hashlib.sha256(key).digest() for _, key in delivered}) == len(delivered)
        # Every key s1 received was at k4 for s4, with the same bytes, and only once.
        assert fetched == delivered
        with client("s4") as s4, pytest.raises(CorridorError):
            s4.get_key_with_id("s1", [delivered[0][0]])
        # The relays after the kill went over the other trusted node.
        forwarded_other = [e for e in _audit(state, other) if e["event"] == "relay_forwarded"]
        assert forwarded_other, "no relay went over the other trusted node"

        # What k4 stored for relays that failed is withdrawn or expires: wait for one
        # housekeeping round past the key lifetime, then account for every key.
        time.sleep(LIFETIME_S + 6.0)
        audit = _audit(state, "k4")
        stored = {k for e in audit if e["event"] == "relay_stored"
                  for k in e["fields"]["key_ids"]}
        gone = {k for e in audit if e["event"] in ("relay_voided", "reservations_withdrawn",
                                                   "keys_expired")
                for k in e["fields"]["key_ids"]}
        fetched = {k for e in audit if e["event"] == "keys_delivered"
                   for k in e["fields"]["key_ids"]}
        assert fetched == set(ids)
        assert stored - set(ids) <= gone, "a relayed key stayed at k4 that s1 never got"
        # No key material in any audit trail.
        text = "".join((state / kme / "audit.jsonl").read_text() for kme in KMES)
        for _, key in delivered[:50]:
            assert key.hex() not in text
    finally:
        stop.set()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
