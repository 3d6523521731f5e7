"""A simulated link split over two sites: each KME process runs its own party, the two
parties' classical channel over real TCP on 127.0.0.1 (ARCHITECTURE.md, "Processes").

An SAE gets a key at one KME and the same key by ID at the other; both sides agree the
first block ID of a session (the larger of the two proposals); a wrong pre-shared key
stops both sides at the first authenticated message and stores nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corridor.errors import CorridorError, ParameterError
from corridor.kms.client import OperatorClient, SaeClient
from corridor.kms.config import DIRECTIONS
from corridor.kms.manager import KeyManager
from corridor.kms.node import KmeNode, ensure_pki, own_link_feeders, parse_corridor
from corridor.kms.pki import init_pki
from corridor.kms.sources.base import SourceBlock
from corridor.kms.sources.feeder import LinkFeeder
from corridor.kms.sources.party import (
    SimulatedLinkPartySource,
    block_simulation_rng,
    session_auth_key,
)
from corridor.kms.tls import bind_socket
from corridor.link.params import preset

LINK = "link-ab"
# The standard-basis variant of modern-snspd at 5 km (tests/kms/test_source.py), without
# dead time as there. A 4e7-pulse block's finite key is several times what authenticating
# its messages costs; at 1e7 pulses, with both directions of Cascade counted, it was
# barely more, and a block was now and then discarded as output_used_for_authentication.
PARAMETERS = {"length_km": 5.0, "dead_time_s": 0.0, "z_basis_probability": 0.5,
              "signal_probability": 0.5, "decoy_probability": 0.3, "vacuum_probability": 0.2}
PARAMS = preset("modern-snspd").override(PARAMETERS)
BLOCK_PULSES = 40_000_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spec_data(port: int, **link: Any) -> dict[str, Any]:
    link_entry: dict[str, Any] = {
        "id": LINK, "alice_kme": "kme-a", "bob_kme": "kme-b", "preset": "modern-snspd",
        "parameters": PARAMETERS, "block_pulses": BLOCK_PULSES,
        "channel_listen": "bob", "channel_address": f"127.0.0.1:{port}",
        "simulation_seed": 11, **link}
    return {"name": "split", "kme": {"max_key_count": 10_000},
            "kmes": [{"id": "kme-a", "site": "north"}, {"id": "kme-b", "site": "south"}],
            "links": [link_entry],
            "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}]}


def _party(role: str, port: int, *, psk: bytes = bytes(range(64)) * 4,
           max_blocks: int | None = 1) -> SimulatedLinkPartySource:
    return SimulatedLinkPartySource(PARAMS, link_id=LINK, role=role,
                                    address=("127.0.0.1", port), listen=role == "bob",
                                    simulation_seed=5, psk=psk, block_pulses=BLOCK_PULSES,
                                    max_blocks=max_blocks, connect_timeout_s=20.0)


def _blocks(source: SimulatedLinkPartySource, timeout_s: float = 50.0) -> list[SourceBlock]:
    """Every block the source hands out until it finishes."""
    out: list[SourceBlock] = []
    deadline = time.monotonic() + timeout_s
    while not source.finished:
        assert time.monotonic() < deadline, "the source did not finish in time"
        block = source.next_block(0.2)
        if block is not None:
            out.append(block)
    return out


def _run_pair(alice: SimulatedLinkPartySource, bob: SimulatedLinkPartySource,
              first_alice: int, first_bob: int) -> dict[str, list[SourceBlock]]:
    got: dict[str, list[SourceBlock]] = {}

    def collect(name: str, source: SimulatedLinkPartySource) -> None:
        got[name] = _blocks(source)

    threads = [threading.Thread(target=collect, args=pair) for pair in
               (("alice", alice), ("bob", bob))]
    alice.start(first_alice)
    bob.start(first_bob)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    alice.close()
    bob.close()
    return got


def test_both_sides_start_at_the_larger_proposal_and_hold_the_same_key() -> None:
    port = _free_port()
    alice, bob = _party("alice", port), _party("bob", port)
    got = _run_pair(alice, bob, first_alice=3, first_bob=7)
    assert alice.first_block_id == bob.first_block_id == 7
    assert [b.block_id for b in got["alice"]] == [b.block_id for b in got["bob"]] == [7]
    (a_block,), (b_block,) = got["alice"], got["bob"]
    assert a_block.aborted_reason is None and b_block.aborted_reason is None
    assert a_block.alice_key and a_block.bob_key == b"" and b_block.alice_key == b""
    assert a_block.alice_key == b_block.bob_key
    # QBER of the standard preset at e_d = 1 %; both sites' monitors judge the same figure.
    assert a_block.qber is not None and 0.005 < a_block.qber < 0.02
    assert a_block.qber == b_block.qber and a_block.meta == b_block.meta
    assert a_block.alice_key.hex() not in repr(a_block)  # key material never in a repr


def test_wrong_pre_shared_key_aborts_both_sides_before_any_block() -> None:
    port = _free_port()
    alice = _party("alice", port)
    bob = _party("bob", port, psk=bytes(reversed(range(64))) * 4)
    got = _run_pair(alice, bob, 0, 0)
    for name in ("alice", "bob"):
        blocks = got[name]
        # One aborted block each, no key: the side that checks the first tag fails
        # authentication, the other sees its abort notice (or the closed connection).
        assert len(blocks) == 1 and blocks[0].secret_bits == 0
        assert blocks[0].aborted_reason is not None
    assert got["alice"][0].aborted_reason == "authentication_failed" or \
        got["bob"][0].aborted_reason == "authentication_failed"
    assert alice.first_block_id is None and bob.first_block_id is None


def test_session_keys_and_block_streams_are_derived_not_reused() -> None:
    psk = bytes(64)
    one = session_auth_key(psk, b"a" * 32, b"b" * 32, LINK, 256)
    assert len(one) == 256
    assert one != session_auth_key(psk, b"a" * 32, b"c" * 32, LINK, 256)
    assert one != session_auth_key(psk, b"a" * 32, b"b" * 32, "link-other", 256)
    draws = [block_simulation_rng(5, k).bytes(16) for k in (0, 1, 0)]
    assert draws[0] == draws[2] != draws[1]


@pytest.mark.parametrize(("change", "field"), [
    ({"channel_listen": "carol"}, "links.link-ab.channel_listen"),
    ({"channel_address": "nohost"}, "links.link-ab.channel_address"),
    ({"simulation_seed": -1}, "links.link-ab.simulation_seed"),
    ({"source": "recorded", "keys_dir": "k"}, "links.link-ab.channel_listen"),
])
def test_bad_channel_fields_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterError) as excinfo:
        parse_corridor(_spec_data(7700, **change))
    assert excinfo.value.field == field


def test_channel_fields_come_together() -> None:
    data = _spec_data(7700)
    del data["links"][0]["simulation_seed"]
    with pytest.raises(ParameterError) as excinfo:
        parse_corridor(data)
    assert excinfo.value.field == "links.link-ab.simulation_seed"


def test_a_site_s_psk_file_seeds_its_sessions_at_64_bytes(tmp_path: Path) -> None:
    """``kme serve`` derives each session's pool from ``psk_file`` (session_auth_key), so
    64 bytes suffice there, unlike ``link run --psk-file``, whose file is the pool."""
    from corridor.kms.node import make_source

    psk = tmp_path / "link-ab.psk"
    psk.write_bytes(os.urandom(64))
    psk.chmod(0o600)
    spec = parse_corridor(_spec_data(7700, psk_file=str(psk)))
    source = make_source(spec.links[LINK], ("alice",))
    assert source._psk == psk.read_bytes()  # type: ignore[attr-defined]
    psk.chmod(0o644)
    with pytest.raises(ParameterError, match="mode 0644"):
        make_source(spec.links[LINK], ("alice",))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, KmeNode]]:
    """Two KME nodes of a split corridor, each serving mutual TLS on its own socket."""
    spec = parse_corridor(_spec_data(_free_port()))
    pki = ensure_pki(spec, tmp_path / "pki")
    socks = {kme: bind_socket("127.0.0.1", 0) for kme in spec.kmes}
    urls = {kme: f"https://127.0.0.1:{sock.getsockname()[1]}" for kme, sock in socks.items()}
    started: dict[str, KmeNode] = {}
    try:
        for kme in spec.kmes:
            node = KmeNode(spec, kme, tmp_path / "run", pki, peer_urls=urls, sock=socks[kme],
                           public_url=urls[kme])
            node.start()
            started[kme] = node
        yield started
    finally:
        for node in started.values():
            node.close()


def _run_session(nodes: dict[str, KmeNode], blocks: int) -> list[LinkFeeder]:
    """Start each node's own feeder for a session of ``blocks`` blocks, wait until both
    have fed them all, then check a key issued at one KME is the same key by ID at the
    other, both directions."""
    feeders: list[LinkFeeder] = []
    for kme, node in nodes.items():
        assert node.manager is not None
        found, skipped = own_link_feeders(node.spec, kme, node.manager, node.events)
        assert skipped == [] and len(found) == 1
        source = found[0].source
        assert isinstance(source, SimulatedLinkPartySource)
        source.max_blocks = blocks
        feeders += found
    for feeder in feeders:
        feeder.start()
    try:
        for feeder in feeders:
            assert feeder.wait(40.0), feeder.stats.as_dict()
            assert feeder.error is None and feeder.stats.stopped_reason == "source_finished"
            assert feeder.stats.blocks_stored == blocks, feeder.stats.as_dict()
        pki = nodes["kme-a"].pki
        sae_a, sae_b = (SaeClient(nodes[kme].url or "", pki.saes[sae].cert, pki.saes[sae].key,
                                  pki.ca_cert, expected_kme_id=kme)
                        for sae, kme in (("sae-a", "kme-a"), ("sae-b", "kme-b")))
        with sae_a, sae_b:
            for master, slave, m_sae, s_sae in ((sae_a, sae_b, "sae-a", "sae-b"),
                                                (sae_b, sae_a, "sae-b", "sae-a")):
                issued = master.get_key(s_sae, number=2)
                again = slave.get_key_with_id(m_sae, [k.key_id for k in issued])
                assert [k.key for k in again] == [k.key for k in issued]
                assert len(issued[0].key) == nodes["kme-a"].site.config.key_size_bytes
    finally:
        for feeder in feeders:
            feeder.stop()
    return feeders


def _ends(manager: KeyManager | None) -> dict[str, int]:
    assert manager is not None
    return {d: manager.pool_state(LINK, d).stream_end_offset for d in DIRECTIONS}


def test_two_kme_nodes_fed_over_tcp_deliver_the_same_key(nodes: dict[str, KmeNode]) -> None:
    a, b = nodes["kme-a"].manager, nodes["kme-b"].manager
    assert a is not None and b is not None
    _run_session(nodes, 2)
    assert a.store.last_block_id(LINK) == b.store.last_block_id(LINK) == 1
    assert _ends(a) == _ends(b)
    # A crash between the two sites' writes of one block: B holds a block A never got.
    b.ingest_block(LINK, 2, os.urandom(2048))
    ends_b = _ends(b)
    # The next session starts after the highest block either site holds, A's streams are
    # padded over B's extra block, and both sites hold identical streams after it.
    feeders = _run_session(nodes, 1)
    firsts = [f.source.first_block_id for f in feeders
              if isinstance(f.source, SimulatedLinkPartySource)]
    assert firsts == [3, 3]
    assert a.store.last_block_id(LINK) == b.store.last_block_id(LINK) == 3
    assert _ends(a) == _ends(b)
    assert all(_ends(a)[d] > ends_b[d] for d in DIRECTIONS)


def _serve_files(tmp_path: Path) -> tuple[dict[str, int], Path, Any]:
    """The corridor file of two `corridor kme serve` processes on loopback, and its PKI."""
    ports = {"kme-a": _free_port(), "kme-b": _free_port()}
    data = _spec_data(_free_port())
    kmes = "\n".join(f'[[kmes]]\nid = "{kme}"\nhost = "127.0.0.1"\nport = {port}\n'
                     for kme, port in ports.items())
    link = data["links"][0]
    parameters = "\n".join(f"{name} = {value}" for name, value in PARAMETERS.items())
    config = tmp_path / "corridor.toml"
    config.write_text(f'''name = "split"
pki_dir = "pki"

{kmes}
[[links]]
id = "{LINK}"
alice_kme = "kme-a"
bob_kme = "kme-b"
source = "simulated"
block_pulses = {BLOCK_PULSES}
channel_listen = "bob"
channel_address = "{link["channel_address"]}"
simulation_seed = 11

[links.parameters]
{parameters}

[[saes]]
id = "sae-a"
kme = "kme-a"

[[saes]]
id = "sae-b"
kme = "kme-b"
''')
    pki = init_pki(tmp_path / "pki", list(ports), [("sae-a", "kme-a"), ("sae-b", "kme-b")],
                   operators=["ops"])
    return ports, config, pki


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_kme_serve_processes_share_a_simulated_link_over_tcp(tmp_path: Path) -> None:
    """The deployment itself: two `corridor kme serve` processes from one corridor file,
    the link's parties next to their KMEs; a key issued at A is the same key by ID at B."""
    ports, config, pki = _serve_files(tmp_path)
    corridor = str(Path(sys.executable).parent / "corridor")
    processes: dict[str, subprocess.Popen[str]] = {}
    logs = {kme: tmp_path / f"{kme}.log" for kme in ports}
    try:
        for kme in ports:
            with logs[kme].open("w") as log:
                processes[kme] = subprocess.Popen(
                    [corridor, "kme", "serve", "--config", str(config), "--kme", kme,
                     "--workdir", str(tmp_path / "state"), "--log-text"],
                    stdout=log, stderr=subprocess.STDOUT, text=True)
        clients = {sae: SaeClient(f"https://127.0.0.1:{ports[kme]}", pki.saes[sae].cert,
                                  pki.saes[sae].key, pki.ca_cert, expected_kme_id=kme,
                                  timeout_s=10.0)
                   for sae, kme in (("sae-a", "kme-a"), ("sae-b", "kme-b"))}
        deadline = time.monotonic() + 60.0
        while True:
            for kme, process in processes.items():
                assert process.poll() is None, logs[kme].read_text()
            try:
                if clients["sae-a"].status("sae-b").stored_key_count >= 2 and \
                        clients["sae-b"].status("sae-a").stored_key_count >= 2:
                    break
            except CorridorError:
                pass  # not serving yet
            assert time.monotonic() < deadline, {k: v.read_text() for k, v in logs.items()}
            time.sleep(0.2)
        issued = clients["sae-a"].get_key("sae-b", number=2)
        again = clients["sae-b"].get_key_with_id("sae-a", [k.key_id for k in issued])
        assert [k.key for k in again] == [k.key for k in issued]
        for client in clients.values():
            client.close()
        # Each process judges its own side of the link: both KMEs answer for it.
        for kme, port in ports.items():
            with OperatorClient(f"https://127.0.0.1:{port}", pki.operators["ops"].cert,
                                pki.operators["ops"].key, pki.ca_cert,
                                expected_kme_id=kme) as ops:
                [link_seen] = ops.alarms()["links"]
            assert link_seen["link_id"] == LINK and link_seen["fed_here"], link_seen
            assert link_seen["state"] in ("ok", "pool_full") and not link_seen["alarms"]
    finally:
        codes = stop_processes(processes)
    assert codes == {"kme-a": 0, "kme-b": 0}, {k: v.read_text() for k, v in logs.items()}
    for kme in ports:
        log = logs[kme].read_text()
        assert "feeding 1 link(s)" in log and "stopped cleanly" in log
        for key in issued:
            assert key.key.hex() not in log


def stop_processes(processes: dict[str, subprocess.Popen[str]]) -> dict[str, int]:
    """SIGTERM every process still running, wait for each (kill after 40 s: -1); their
    exit codes by name."""
    codes = {}
    for name, process in processes.items():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            codes[name] = process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = -1
    return codes


def serve(config: Path, kme: str, workdir: Path, log_path: Path,
          *options: str) -> subprocess.Popen[str]:
    """``corridor kme serve`` of ``kme`` (and ``options``), its output appended to
    ``log_path``."""
    corridor = str(Path(sys.executable).parent / "corridor")
    with log_path.open("a") as log:
        return subprocess.Popen([corridor, "kme", "serve", "--config", str(config), "--kme",
                                 kme, "--workdir", str(workdir), "--log-text", *options],
                                stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(("stopped", "how"), [
    ("kme-a", signal.SIGTERM),  # Alice's site, the side that connects: a clean restart
    ("kme-b", signal.SIGKILL),  # Bob's site, the listening side: a crash
])
def test_a_restarted_kme_serve_site_reconnects_without_a_latched_alarm(
        tmp_path: Path, stopped: str, how: signal.Signals) -> None:
    """Stop one of two `corridor kme serve` processes and start it again: the survivor's
    party reconnects by itself, keys flow again and neither site latches an alarm."""
    ports, config, pki = _serve_files(tmp_path)
    logs = {kme: tmp_path / f"{kme}.log" for kme in ports}
    processes = {kme: serve(config, kme, tmp_path / "state", logs[kme]) for kme in ports}
    survivor = "kme-b" if stopped == "kme-a" else "kme-a"
    sae_of = {"kme-a": ("sae-a", "sae-b"), "kme-b": ("sae-b", "sae-a")}

    def client(kme: str) -> SaeClient:
        sae = sae_of[kme][0]
        return SaeClient(f"https://127.0.0.1:{ports[kme]}", pki.saes[sae].cert,
                         pki.saes[sae].key, pki.ca_cert, expected_kme_id=kme, timeout_s=10.0)

    def stored(kme: str) -> int:
        try:
            with client(kme) as sae:
                return sae.status(sae_of[kme][1]).stored_key_count
        except CorridorError:
            return -1  # not serving (yet)

    def wait_until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 60.0
        while not condition():
            for kme, process in processes.items():
                assert process.poll() is None, (kme, logs[kme].read_text())
            assert time.monotonic() < deadline, (what, {k: v.read_text()
                                                        for k, v in logs.items()})
            time.sleep(0.2)

    try:
        wait_until(lambda: min(stored(kme) for kme in ports) >= 2, "first keys")
        processes[stopped].send_signal(how)
        assert processes[stopped].wait(40) in (0, -how)
        # The survivor keeps serving and keeps its link: no latched alarm meanwhile.
        before = stored(survivor)
        processes[stopped] = serve(config, stopped, tmp_path / "state", logs[stopped])
        # Keys flow again: both KMEs store new blocks after the restart.
        wait_until(lambda: stored(survivor) > before and stored(stopped) > before,
                   "keys after the restart")
        with client("kme-a") as sae_a, client("kme-b") as sae_b:
            issued = sae_a.get_key("sae-b", number=2)
            again = sae_b.get_key_with_id("sae-a", [k.key_id for k in issued])
        assert [k.key for k in again] == [k.key for k in issued]
        for kme, port in ports.items():
            with OperatorClient(f"https://127.0.0.1:{port}", pki.operators["ops"].cert,
                                pki.operators["ops"].key, pki.ca_cert,
                                expected_kme_id=kme) as ops:
                [link_seen] = ops.alarms()["links"]
            assert link_seen["state"] in ("ok", "pool_full"), (kme, link_seen)
            assert not [a for a in link_seen["alarms"] if a["latched"]], (kme, link_seen)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
    survivor_log = logs[survivor].read_text()
    assert "classical channel lost" in survivor_log, survivor_log
    assert "classical channel restored after" in survivor_log, survivor_log
    assert "integrity" not in survivor_log
