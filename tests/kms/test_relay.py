"""Trusted-node relay (corridor.kms.relay) between in-process KMEs on SQLite stores.

Networks: a line k1 - k2 - k3 - k4 (three hops, SAE s1 at k1, s4 at k4) and a diamond
k1 - k2 - k4, k1 - k3 - k4 (two node-disjoint paths). Every hop goes through the wire
form (LocalPeerLink.relay serialises the hop as the HTTPS route would).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from corridor.kms.config import KmeConfig, SaeDirectory
from corridor.kms.crypto import generate_kek
from corridor.kms.interface import KeyRequestError, KeysUnavailableError, Reservation
from corridor.kms.manager import KeyManager, LocalPeerLink, PeerUnreachableError
from corridor.kms.relay import (
    POLICY_DISJOINT_PATHS,
    RelayEngine,
    RelayError,
    RelayHop,
    RelayPolicy,
    local_snapshot,
    xor_bytes,
)
from corridor.kms.store import ROLE_SLAVE, InvalidReservationError
from corridor.kms.store_sqlite import SqliteKeyStore
from tests.kms.test_manager import RecordingSink

LINE = {"l12": ("k1", "k2"), "l23": ("k2", "k3"), "l34": ("k3", "k4")}
DIAMOND = {"l12": ("k1", "k2"), "l24": ("k2", "k4"), "l13": ("k1", "k3"),
           "l34": ("k3", "k4")}
SAES = {"s1": "k1", "s2": "k2", "s3": "k3", "s4": "k4"}


class Net:
    """KMEs of one network, each with its store, events and relay engine."""

    def __init__(self, tmp_path: Path, links: dict[str, tuple[str, str]],
                 policies: dict[tuple[str, str], RelayPolicy] | None = None) -> None:
        self.directory = SaeDirectory(SAES, links)
        self.sinks: dict[str, RecordingSink] = {}
        self.managers: dict[str, KeyManager] = {}
        config = KmeConfig(kme_id="k1")
        for kme in sorted({k for ends in links.values() for k in ends}):
            sink = RecordingSink()
            store = SqliteKeyStore(tmp_path / f"{kme}.sqlite", generate_kek(), kme_id=kme)
            self.managers[kme] = KeyManager(KmeConfig(**{**config.__dict__, "kme_id": kme}),
                                            self.directory, store, events=sink,
                                            coalesce_announcements=False)
            self.sinks[kme] = sink
        self.links: dict[tuple[str, str], Any] = {}
        for a, b in links.values():
            for x, y in ((a, b), (b, a)):
                link = LocalPeerLink(self.managers[y], x)
                self.links[(x, y)] = link
                self.managers[x].set_peer(y, link)
        provider = local_snapshot(self.managers)
        for manager in self.managers.values():
            manager.relay = RelayEngine(manager, provider, policies, hop_timeout_s=1.0)
        for link_id, (a, b) in links.items():
            for block_id in range(3):
                block = os.urandom(4096)
                self.managers[a].ingest_block(link_id, block_id, block)
                self.managers[b].ingest_block(link_id, block_id, block)

    def available(self, kme: str, link_id: str, from_kme: str) -> int:
        spec = self.directory.link(link_id)
        assert spec is not None
        return self.managers[kme].store.pool_state(link_id, spec.direction_from(from_kme)
                                                   ).available_bytes

    def events(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [(kme, fields) for kme, sink in self.sinks.items() for fields in sink.named(name)]

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()


class Dead:
    """A neighbour KME that does not answer (killed)."""

    def relay(self, hop: RelayHop, timeout_s: float) -> None:
        raise PeerUnreachableError("peer KME unreachable")

    def void(self, *args: Any) -> None:
        raise PeerUnreachableError("peer KME unreachable")

    def announce(self, reservations: list[Reservation]) -> None:
        raise PeerUnreachableError("peer KME unreachable")


@pytest.fixture
def line(tmp_path: Path) -> Any:
    net = Net(tmp_path, LINE)
    yield net
    net.close()


def test_three_hop_relay_delivers_the_same_key_at_both_ends(line: Net) -> None:
    before = {(kme, link, frm): line.available(kme, link, frm)
              for link, (a, b) in LINE.items() for kme in (a, b) for frm in (a, b)}
    keys = line.managers["k1"].enc_keys("s1", "s4", number=3, size_bits=256)
    assert len(keys) == 3 and all(len(k.key) == 32 for k in keys)
    fetched = line.managers["k4"].dec_keys("s4", "s1", [k.key_id for k in keys])
    assert [k.key for k in fetched] == [k.key for k in keys]
    # Every hop consumed 3 keys of its pool in the direction of travel, at both ends,
    # and nothing of the opposite direction.
    for link, (a, b) in LINE.items():
        for kme in (a, b):
            assert before[(kme, link, a)] - line.available(kme, link, a) == 96
            assert before[(kme, link, b)] == line.available(kme, link, b)
    # Both trusted nodes audited their hop: key IDs, links and offsets, never bytes.
    forwarded = line.events("relay_forwarded")
    assert sorted(kme for kme, _ in forwarded) == ["k2", "k3"]
    ids = [k.key_id for k in keys]
    for _kme, fields in forwarded:
        assert fields["key_ids"] == ids and len(fields["out_byte_offsets"]) == 3
    stored = line.events("relay_stored")
    assert [kme for kme, _ in stored] == ["k4"] and stored[0][1]["path"] == [
        "k1", "k2", "k3", "k4"]
    text = repr([sink.events for sink in line.sinks.values()])
    for key in keys:
        assert key.key.hex() not in text and key.key.hex().upper() not in text
    # A key already fetched is gone; a second fetch is refused.
    with pytest.raises(KeyRequestError):
        line.managers["k4"].dec_keys("s4", "s1", [keys[0].key_id])


def test_status_of_a_relayed_pair_names_its_path(line: Net) -> None:
    status = line.managers["k1"].status("s1", "s4")
    assert status.target_KME_ID == "k4"
    assert status.status_extension == {"relay": {"policy": "single-path",
                                                 "paths": [["k1", "k2", "k3", "k4"]]}}
    # 3 blocks of 4096 bytes, half per direction: 6144 bytes, 192 keys of 256 bits.
    assert status.stored_key_count == 192


def test_a_dead_trusted_node_fails_closed_and_nothing_is_stored(line: Net) -> None:
    line.managers["k2"].set_peer("k3", Dead())  # type: ignore[arg-type]
    with pytest.raises(KeysUnavailableError, match="could not be relayed"):
        line.managers["k1"].enc_keys("s1", "s4", number=2)
    assert line.managers["k4"].store.count_keys(ROLE_SLAVE) == 0
    rejected = [f for _, f in line.events("request_rejected") if f["endpoint"] == "enc_keys"]
    assert rejected[-1]["reason"] in ("relay_failed", "no_relay_path")
    discarded = line.events("reservations_discarded")
    assert discarded and discarded[0][1]["failed_kme_id"] == "k3"


def test_a_lost_acknowledgement_is_voided_at_the_far_end(line: Net) -> None:
    real = line.links[("k3", "k4")]

    class LostAck:
        def relay(self, hop: RelayHop, timeout_s: float) -> None:
            real.relay(hop, timeout_s)   # k4 stores ...
            raise PeerUnreachableError("peer KME unreachable")   # ... the answer is lost

        def void(self, *args: Any) -> None:
            real.void(*args)

        def announce(self, reservations: list[Reservation]) -> None:
            real.announce(reservations)

        def sync(self, *args: Any) -> None:
            real.sync(*args)

    line.managers["k3"].set_peer("k4", LostAck())  # type: ignore[arg-type]
    line.managers["k1"].relay.max_attempts = 1  # type: ignore[union-attr]
    with pytest.raises(KeysUnavailableError):
        line.managers["k1"].enc_keys("s1", "s4", number=2)
    # k4 had stored the keys; k3 queued their withdrawal and the master voided the relay:
    # nothing stays at k4 that the master SAE never got.
    assert line.managers["k4"].store.count_keys(ROLE_SLAVE) == 0
    assert line.events("relay_voided")


def test_forged_and_malformed_hops_are_refused(line: Net) -> None:
    engine = line.managers["k3"].relay
    assert engine is not None
    res = Reservation(key_id="0" * 8 + "-0000-4000-8000-" + "0" * 12, link_id="l23",
                      direction=line.directory.link("l23").direction_from("k2"),  # type: ignore[union-attr]
                      byte_offset=0, length_bytes=32, master_sae_id="s1", slave_sae_ids=("s4",))
    hop = RelayHop("1" * 8 + "-1111-4111-8111-" + "1" * 12, ("k1", "k2", "k3", "k4"), "s1",
                   ("s4",), (res,), (b"\0" * 32,))
    with pytest.raises(InvalidReservationError, match="previous hop"):
        engine.accept_hop("k4", hop)   # k4 is not k3's predecessor on this path
    with pytest.raises(InvalidReservationError, match="pads"):
        engine.accept_hop("k2", RelayHop(hop.relay_id, hop.path, "s1", ("s4",), (res,), None))
    with pytest.raises(InvalidReservationError, match="attached"):
        engine.accept_hop("k2", RelayHop(hop.relay_id, hop.path, "s2", ("s4",), (res,),
                                         hop.pads))
    for body in ({}, {**hop.to_json(), "path": ["k1", "k1", "k3"]},
                 {**hop.to_json(), "pads": ["zz" * 32]},
                 {**hop.to_json(), "key_size": 12}):
        with pytest.raises(InvalidReservationError):
            RelayHop.from_json(body)
    assert "pads" not in repr(hop) or "00" * 32 not in repr(hop)


def test_disjoint_paths_split_the_key_so_no_trusted_node_sees_it(tmp_path: Path) -> None:
    net = Net(tmp_path, DIAMOND, {("s1", "s4"): RelayPolicy(POLICY_DISJOINT_PATHS, 2)})
    try:
        keys = net.managers["k1"].enc_keys("s1", "s4", number=2, size_bits=256)
        fetched = net.managers["k4"].dec_keys("s4", "s1", [k.key_id for k in keys])
        assert [k.key for k in fetched] == [k.key for k in keys]
        forwarded = net.events("relay_forwarded")
        assert sorted(kme for kme, _ in forwarded) == ["k2", "k3"]
        # Each trusted node relayed one share under its own IDs; only the last path
        # carried the final key IDs.
        shares = {kme: fields["key_ids"] for kme, fields in forwarded}
        assert shares["k2"] != shares["k3"]
        assert [k.key_id for k in keys] in shares.values()
        assert net.events("relay_share_held")
        status = net.managers["k1"].status("s1", "s4")
        assert status.status_extension is not None
        assert len(status.status_extension["relay"]["paths"]) == 2
    finally:
        net.close()


def test_disjoint_paths_refuse_when_the_network_has_one_path(line: Net) -> None:
    line.managers["k1"].relay.policies[("s1", "s4")] = RelayPolicy(  # type: ignore[union-attr]
        POLICY_DISJOINT_PATHS, 2)
    with pytest.raises(KeysUnavailableError, match="disjoint paths"):
        line.managers["k1"].enc_keys("s1", "s4")
    assert line.managers["k4"].store.count_keys(ROLE_SLAVE) == 0


def test_a_failed_path_is_retried_over_another(tmp_path: Path) -> None:
    net = Net(tmp_path, DIAMOND)
    try:
        first = net.managers["k1"].relay.routes("s1", "s4", 256)  # type: ignore[union-attr]
        via = first[0].kmes[1]
        other = "k3" if via == "k2" else "k2"

        net.managers["k1"].set_peer(via, Dead())  # type: ignore[arg-type]
        keys = net.managers["k1"].enc_keys("s1", "s4", number=1)
        assert net.managers["k4"].dec_keys("s4", "s1", [keys[0].key_id])[0].key == keys[0].key
        assert [kme for kme, _ in net.events("relay_forwarded")] == [other]
        assert net.managers["k4"].store.count_keys(ROLE_SLAVE) == 0
    finally:
        net.close()


def test_key_aware_routing_prefers_the_fuller_path(tmp_path: Path) -> None:
    net = Net(tmp_path, DIAMOND)
    try:
        engine = net.managers["k1"].relay
        assert engine is not None
        # Drain most of k1 -> k2 (burned by a cut at k1): the route turns to k3.
        spec = net.directory.link("l12")
        assert spec is not None
        net.managers["k1"].store.cut_front(
            "l12", spec.direction_from("k1"), key_ids=[f"{i:08d}-0000-4000-8000-000000000000"
                                                       for i in range(180)],
            length_bytes=32, master_sae_id="s1", slave_sae_ids=("s2",))
        assert engine.routes("s1", "s4", 256 * 8)[0].kmes == ("k1", "k3", "k4")
    finally:
        net.close()


def test_xor_bytes_is_a_one_time_pad() -> None:
    key, pad = os.urandom(32), os.urandom(32)
    assert bytes(xor_bytes(xor_bytes(key, pad), pad)) == key
    with pytest.raises(Exception, match="equal lengths"):
        xor_bytes(key, pad[:31])


def test_relay_error_names_the_failed_kme() -> None:
    assert RelayError("x", failed_kme_id="k3").failed_kme_id == "k3"


def test_corridor_up_relays_over_mutual_tls_and_shows_the_relay(tmp_path: Path) -> None:
    """`corridor up` machinery (every KME in one process, HTTPS between them): a relay
    over one trusted node, visible in the status at all three KMEs and in the table."""
    from rich.console import Console

    from corridor.cli.up import status_table
    from corridor.kms.client import SaeClient
    from corridor.kms.node import Corridor, load_corridor

    lines = ['name = "line"', "", "[kme]", "max_key_count = 10000", ""]
    for kme in ("k1", "k2", "k3"):
        lines += ["[[kmes]]", f'id = "{kme}"', "port = 0", ""]
    for link_id, (alice, bob) in {"l12": ("k1", "k2"), "l23": ("k2", "k3")}.items():
        keys = tmp_path / "keys" / link_id
        keys.mkdir(parents=True)
        data = os.urandom(64 * 1024)
        (keys / "alice.bin").write_bytes(data)
        (keys / "bob.bin").write_bytes(data)
        lines += ["[[links]]", f'id = "{link_id}"', f'alice_kme = "{alice}"',
                  f'bob_kme = "{bob}"', 'source = "recorded"', f'keys_dir = "{keys}"',
                  "block_bytes = 4096", ""]
    lines += ["[[saes]]", 'id = "s1"', 'kme = "k1"', "", "[[saes]]", 'id = "s3"', 'kme = "k3"']
    config = tmp_path / "line.toml"
    config.write_text("\n".join(lines))
    with Corridor(load_corridor(config), tmp_path / "run") as corridor:
        pki = corridor.pki
        assert pki is not None

        def client(sae: str, kme: str) -> SaeClient:
            return SaeClient(corridor.nodes[kme].url or "", pki.saes[sae].cert,
                             pki.saes[sae].key, pki.ca_cert, expected_kme_id=kme)

        with client("s1", "k1") as s1, client("s3", "k3") as s3:
            deadline = time.monotonic() + 30
            while s1.status("s3").stored_key_count < 10:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            keys = s1.get_key("s3", number=2)
            again = s3.get_key_with_id("s1", [k.key_id for k in keys])
        assert [k.key for k in again] == [k.key for k in keys]
        relays = corridor.status()["relays"]
        assert sorted((r["kme_id"], r["role"], r["state"]) for r in relays) == [
            ("k1", "master", "delivered"), ("k2", "trusted-node", "forwarded"),
            ("k3", "slave", "stored")]
        assert all(r["paths"] == [["k1", "k2", "k3"]] for r in relays)
        console = Console(record=True, width=200)
        console.print(status_table(corridor))
        text = console.export_text()
        assert "key relays" in text and "k1 > k2 > k3" in text


def test_a_quarantined_link_is_routed_around(tmp_path: Path) -> None:
    net = Net(tmp_path, DIAMOND)
    try:
        quarantined = {"l24"}
        provider = local_snapshot(net.managers, quarantined=lambda link: link in quarantined)
        for manager in net.managers.values():
            assert manager.relay is not None
            manager.relay.snapshot = provider
        keys = net.managers["k1"].enc_keys("s1", "s4", number=1)
        assert net.managers["k4"].dec_keys("s4", "s1", [keys[0].key_id])[0].key == keys[0].key
        assert [kme for kme, _ in net.events("relay_forwarded")] == ["k3"]
        quarantined.add("l34")   # no path left: refused, nothing cut anywhere
        before = net.available("k1", "l13", "k1")
        with pytest.raises(KeysUnavailableError, match="no usable relay path"):
            net.managers["k1"].enc_keys("s1", "s4", number=1)
        assert net.available("k1", "l13", "k1") == before
        assert net.managers["k1"].status("s1", "s4").stored_key_count == 0
    finally:
        net.close()


def test_a_path_short_of_key_is_refused_before_anything_is_cut(line: Net) -> None:
    # Drain k2 -> k3 (a cut at k2 burns it): the master sees the pool short and refuses
    # without cutting its own first hop.
    spec = line.directory.link("l23")
    assert spec is not None
    available = line.available("k2", "l23", "k2")
    line.managers["k2"].store.cut_front(
        "l23", spec.direction_from("k2"), key_ids=[f"{i:08d}-0000-4000-8000-000000000000"
                                                   for i in range(available // 32)],
        length_bytes=32, master_sae_id="s2", slave_sae_ids=("s3",))
    before = line.available("k1", "l12", "k1")
    with pytest.raises(KeysUnavailableError, match="short of key"):
        line.managers["k1"].enc_keys("s1", "s4", number=1)
    assert line.available("k1", "l12", "k1") == before
    assert line.managers["k1"].status("s1", "s4").stored_key_count == 0


def test_concurrent_relays_deliver_every_key_once(line: Net) -> None:
    import threading

    got: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            try:
                keys = line.managers["k1"].enc_keys("s1", "s4", number=2)
            except KeysUnavailableError as exc:  # a pool short under contention: fine
                errors.append(exc)
                continue
            with lock:
                got.extend(keys)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got) >= 40
    ids = [k.key_id for k in got]
    assert len(set(ids)) == len(ids) and len({k.key for k in got}) == len(got)
    fetched = line.managers["k4"].dec_keys("s4", "s1", ids[:100])
    assert [k.key for k in fetched] == [k.key for k in got[:100]]
    assert line.managers["k4"].store.count_keys(ROLE_SLAVE) == len(got) - len(fetched)
