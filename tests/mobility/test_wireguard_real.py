"""Two real WireGuard interfaces (wireguard-go, userspace) in two network namespaces:
the agents rotate the PSK with ``wg set``, both ends hold the same PSK, and a first
handshake with it carries a ping. Needs root, ``ip``, ``wg`` and ``wireguard-go``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from corridor.hybrid.policy import DecisionRecorder
from corridor.mobility.wireguard import WgPeer
from corridor.mobility.wireguard_agent import Initiator, Responder
from tests.mobility.wg_fakes import FakeKmePair, ListSink

pytestmark = pytest.mark.slow


def _need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None or os.geteuid() != 0:
        why = f"{tool} is not installed" if path is None else "needs root for network namespaces"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(f"{why} (Debian: apt-get install wireguard-tools wireguard-go)")
    return path


def _in(ns: str) -> Any:
    def runner(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)
    return runner


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout


def test_agents_rotate_psk_on_real_interfaces(tmp_path: Path) -> None:
    for tool in ("ip", "wg", "wireguard-go"):
        _need(tool)
    tag = str(os.getpid())
    ns_a, ns_b = f"cwa{tag}", f"cwb{tag}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in (ns_a, ns_b):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "link", "add", "cva", "netns", ns_a, "type", "veth", "peer", "name", "cvb",
            "netns", ns_b)
        keys, pubs = {}, {}
        for ns, dev, veth, addr in ((ns_a, "wga", "cva", "1"), (ns_b, "wgb", "cvb", "2")):
            _sh("ip", "-n", ns, "addr", "add", f"10.91.0.{addr}/24", "dev", veth)
            _sh("ip", "-n", ns, "link", "set", veth, "up")
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", "-f", dev],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            keys[ns] = tmp_path / f"{ns}.key"
            keys[ns].write_text(_sh("wg", "genkey"))
            keys[ns].chmod(0o600)
            pubs[ns] = subprocess.run(["wg", "pubkey"], input=keys[ns].read_text(),
                                      capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(50):
            if all(Path(f"/var/run/wireguard/{d}.sock").exists() for d in ("wga", "wgb")):
                break
            threading.Event().wait(0.1)
        for ns, dev, peer_ns, peer_addr, own in ((ns_a, "wga", ns_b, "2", "1"),
                                                  (ns_b, "wgb", ns_a, "1", "2")):
            _sh("ip", "netns", "exec", ns, "wg", "set", dev, "private-key", str(keys[ns]),
                "listen-port", "51820", "peer", pubs[peer_ns], "endpoint",
                f"10.91.0.{peer_addr}:51820", "allowed-ips", f"10.92.0.{peer_addr}/32")
            _sh("ip", "-n", ns, "addr", "add", f"10.92.0.{own}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")

        kme, channel_key, sink = FakeKmePair(), os.urandom(32), ListSink()
        recorder = DecisionRecorder(sink)
        common: dict[str, Any] = dict(kme=kme, channel_key=channel_key, recorder=recorder,
                                      policy="qkd-required")
        responder = Responder(master_sae_id="sae-a", own_public_key=pubs[ns_b],
                              peer_public_key=pubs[ns_a],
                              peer=WgPeer("wgb", pubs[ns_a], runner=_in(ns_b)), **common)
        stop, ready = threading.Event(), threading.Event()
        # The control channel runs between the two namespaces' host side: localhost here.
        thread = threading.Thread(target=responder.serve, args=("127.0.0.1", 0, stop, ready),
                                  daemon=True)
        thread.start()
        assert ready.wait(5)
        initiator = Initiator(slave_sae_id="sae-b", own_public_key=pubs[ns_a],
                              peer_public_key=pubs[ns_b],
                              responder_address=("127.0.0.1", responder.bound_port),
                              peer=WgPeer("wga", pubs[ns_b], runner=_in(ns_a)), **common)

        def psk(ns: str, dev: str) -> str:
            return _sh("ip", "netns", "exec", ns, "wg", "show", dev,
                       "preshared-keys").split()[1]

        try:
            assert initiator.rotate_once().applied
            first = psk(ns_a, "wga")
            assert first == psk(ns_b, "wgb") != "(none)"
            # The first handshake uses the rotated PSK: it succeeds only if both match.
            _sh("ip", "netns", "exec", ns_a, "ping", "-c", "2", "-W", "3", "10.92.0.2")
            assert initiator.rotate_once().applied
            assert psk(ns_a, "wga") == psk(ns_b, "wgb") != first
            kme.empty = True  # qkd-required, no key: both ends get their own random PSK
            assert not initiator.rotate_once().applied
            assert psk(ns_a, "wga") != psk(ns_b, "wgb")
            assert "(none)" not in (psk(ns_a, "wga"), psk(ns_b, "wgb"))
        finally:
            stop.set()
            thread.join(5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
