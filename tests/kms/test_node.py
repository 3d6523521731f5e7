"""The corridor file, one KME assembled from it, and the embedded corridor over real
mutual-TLS sockets: keys flow, the state survives a restart, the audit chains verify."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corridor.errors import ParameterError
from corridor.kms.audit import verify_audit_log
from corridor.kms.client import KmeResponseError, SaeClient
from corridor.kms.crypto import load_kek
from corridor.kms.node import Corridor, load_corridor, parse_corridor
from corridor.kms.tls import client_ssl_context

LINK = "link-ab"


def _spec_data(keys_dir: Path | None = None, **link: Any) -> dict[str, Any]:
    """A two-KME corridor; recorded key files when ``keys_dir`` is given."""
    link_entry: dict[str, Any] = {"id": LINK, "alice_kme": "kme-a", "bob_kme": "kme-b",
                                  "preset": "modern-snspd", "parameters": {"length_km": 5.0},
                                  **link}
    if keys_dir is not None:
        link_entry.update(source="recorded", keys_dir=str(keys_dir), block_bytes=1024)
    return {"name": "test", "kme": {"max_key_count": 10_000},
            "kmes": [{"id": "kme-a", "site": "north"}, {"id": "kme-b", "site": "south"}],
            "links": [link_entry],
            "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}]}


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    data = os.urandom(200 * 1024)
    (directory / "alice.bin").write_bytes(data)
    (directory / "bob.bin").write_bytes(data)
    return directory


def test_embedded_default_describes_two_sites_one_link_two_saes() -> None:
    spec = load_corridor()
    assert sorted(spec.kmes) == ["kme-a", "kme-b"]
    assert spec.saes == {"sae-a": "kme-a", "sae-b": "kme-b"}
    link = spec.links["link-ab"]
    assert (link.alice_kme, link.bob_kme, link.source) == ("kme-a", "kme-b", "simulated")
    assert link.params.fibre.length_km == 5.0 and link.params.name == "modern-snspd"
    assert spec.kmes["kme-a"].config.key_size_bits == 256


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.update(colour="red"), "corridor.colour"),
    # A typo in [kme] or in a [[kmes]] table is named where it sits (it read "--kme").
    (lambda d: d.update(kme={"key_size_bit": 256}), "kme.key_size_bit"),
    (lambda d: d["kmes"][0].update(kek_fle="x.kek"), "kmes.kme-a.kek_fle"),
    (lambda d: d["kmes"][0].update(port=70000), "kmes.kme-a.port"),
    (lambda d: d["kmes"][0].update(max_key_count=0), "max_key_count"),
    (lambda d: d["links"][0].update(bob_kme="kme-z"), "links.link-ab.bob_kme"),
    (lambda d: d["links"][0].update(source="recorded"), "links.link-ab.keys_dir"),
    (lambda d: d["links"][0]["parameters"].update(length_miles=3),
     "links.link-ab.parameters"),
    (lambda d: d["links"][0]["parameters"].update(efficiency=2.0),
     "links.link-ab.parameters.efficiency"),
    (lambda d: d["links"][0].update(preset="modern-snpd"), "links.link-ab.preset"),
    (lambda d: d["saes"][0].update(kme="kme-z"), "saes.sae-a.kme"),
    (lambda d: d["kmes"].pop(), "kmes"),
    # Beyond the link's reach (issue 7: every block aborted, the link quarantined at
    # block 0, nothing said): refused at start with the reach of these settings.
    (lambda d: d["links"][0]["parameters"].update(length_km=200.0), "links.link-ab.parameters"),
    # No key even at 0 km: the block size (or the source settings) is named, not the
    # length with "shorten the link".
    (lambda d: d["links"][0].update(block_pulses=100_000), "links.link-ab.block_pulses"),
    # No key at any block size (the error rate): the parameters are named, not
    # block_pulses with "raise block_pulses" (that read even at 1e14).
    (lambda d: (d["links"][0]["parameters"].update(misalignment_error=0.2),
                d["links"][0].update(block_pulses=1e14)), "links.link-ab.parameters"),
    (lambda d: d["links"][0].update(block_pulses=1.5), "links.link-ab.block_pulses"),
    # [[relay]] policies (docs/relay.md)
    (lambda d: d.update(relay=[{"master_sae_id": "sae-a", "slave_sae_id": "sae-z"}]),
     "relay[0].slave_sae_id"),
    (lambda d: d.update(relay=[{"master_sae_id": "sae-a", "slave_sae_id": "sae-b",
                                "policy": "flooding"}]), "relay[0].policy"),
    (lambda d: d.update(relay=[{"master_sae_id": "sae-a", "slave_sae_id": "sae-b",
                                "policy": "disjoint-paths", "paths": 1}]), "relay[0].paths"),
    (lambda d: d.update(relay=[{"master_sae_id": "sae-a", "slave_sae_id": "sae-b",
                                "hops": 3}]), "relay[0].hops"),
    (lambda d: d.update(relay=[{"master_sae_id": "sae-a", "slave_sae_id": "sae-a"}]),
     "relay[0].slave_sae_id"),
])
def test_bad_corridor_files_name_the_field(change: Any, field: str) -> None:
    data = _spec_data()
    change(data)
    with pytest.raises(ParameterError) as excinfo:
        parse_corridor(data)
    assert excinfo.value.field == field


def test_a_count_written_as_a_float_is_read_as_the_whole_number() -> None:
    """TOML writes 1e10 as a float; a count is read as --pulses 1e10 is (refused with
    "must be an integer")."""
    data = _spec_data()
    data["links"][0]["block_pulses"] = 1e10
    link = parse_corridor(data).links["link-ab"]
    assert link.block_pulses == 10_000_000_000 and isinstance(link.block_pulses, int)


def test_missing_or_broken_file_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="--config"):
        load_corridor(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(ParameterError, match="not valid TOML"):
        load_corridor(broken)


def _wait_for_keys(client: SaeClient, slave: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.status(slave).stored_key_count < 4:
        assert time.monotonic() < deadline, "no key reached the pool in time"
        time.sleep(0.1)


def _clients(corridor: Corridor) -> tuple[SaeClient, SaeClient]:
    pki = corridor.pki
    assert pki is not None
    return tuple(  # type: ignore[return-value]
        SaeClient(corridor.nodes[kme].url or "", pki.saes[sae].cert, pki.saes[sae].key,
                  pki.ca_cert, expected_kme_id=kme)
        for sae, kme in (("sae-a", "kme-a"), ("sae-b", "kme-b")))


def test_corridor_serves_keys_and_survives_a_restart(tmp_path: Path, keys_dir: Path) -> None:
    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        up = json.loads(corridor.up_file.read_text())
        assert [k["kme_id"] for k in up["kmes"]] == ["kme-a", "kme-b"]
        assert all((workdir / s[name]).is_file() for s in up["saes"]
                   for name in ("cert", "key", "ca_cert"))
        assert oct((workdir / up["saes"][0]["key"]).stat().st_mode & 0o777) == "0o600"
        [operator] = up["operators"]
        assert operator["name"] == "operator"
        assert all((workdir / operator[name]).is_file() for name in ("cert", "key", "ca_cert"))
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            _wait_for_keys(sae_a, "sae-b")
            _wait_for_keys(sae_b, "sae-a")
            issued = sae_a.get_key("sae-b", number=3)
            assert [k.key for k in sae_b.get_key_with_id("sae-a", [k.key_id for k in issued])] \
                == [k.key for k in issued]
            other_way = sae_b.get_key("sae-a", number=2)
            assert [k.key for k in sae_a.get_key_with_id("sae-b", [k.key_id for k in
                                                                    other_way])] \
                == [k.key for k in other_way]
            undelivered = sae_a.get_key("sae-b", number=2)
        node = corridor.nodes["kme-a"]
        assert node.kek_path is not None
        pki = corridor.pki
        assert pki is not None
        context = client_ssl_context(pki.operators["operator"].cert,
                                     pki.operators["operator"].key, pki.ca_cert)
        with httpx.Client(verify=context) as http:
            metrics = http.get(f"{node.url}/metrics").text
        assert 'corridor_pool_stored_keys{direction="A->B",kme_id="kme-a",link_id="link-ab"}' \
            in metrics
        assert "corridor_link_blocks_total" in metrics
        with pytest.raises(ParameterError, match="in use by another corridor"):
            Corridor(spec, workdir, host="127.0.0.1").start()
        last_before = node.manager.store.last_block_id(LINK) if node.manager else None
    assert last_before is not None
    secrets = [k.key for k in issued + other_way + undelivered]
    for kme in ("kme-a", "kme-b"):
        result = verify_audit_log(workdir / kme / "audit.jsonl",
                                  load_kek(workdir / kme / "kek.hex"))
        assert result.ok and result.entries > 3, result
        log = (workdir / kme / "audit.jsonl").read_text()
        assert "link_block" in log and "keys_delivered" in log
        for key in secrets:  # no key, in any encoding, in the audit trail
            assert key.hex() not in log and base64.b64encode(key).decode() not in log
    # Same working directory: PKI reused, block IDs continue, delivered keys stay delivered,
    # keys issued before the restart are still served once at the slave.
    ca_before = (workdir / "pki" / "ca.pem").read_bytes()
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        assert (workdir / "pki" / "ca.pem").read_bytes() == ca_before
        manager = corridor.nodes["kme-b"].manager
        assert manager is not None
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            _wait_for_keys(sae_a, "sae-b")
            # The pools still hold keys from before the restart, so wait for the feeder to
            # store a new block rather than for keys.
            deadline = time.monotonic() + 30.0
            while (manager.store.last_block_id(LINK) or 0) <= last_before:
                assert time.monotonic() < deadline, "no new block after the restart"
                time.sleep(0.1)
            with pytest.raises(KmeResponseError) as excinfo:
                sae_b.get_key_with_id("sae-a", [issued[0].key_id])
            assert excinfo.value.status_code == 400
            again = sae_b.get_key_with_id("sae-a", [k.key_id for k in undelivered])
            assert [k.key for k in again] == [k.key for k in undelivered]
            fresh = sae_a.get_key("sae-b", number=2)
            assert not {k.key for k in fresh} & {k.key for k in issued + undelivered}
    for kme in ("kme-a", "kme-b"):
        assert verify_audit_log(workdir / kme / "audit.jsonl",
                                load_kek(workdir / kme / "kek.hex")).ok


def test_kek_from_environment_and_no_kek_file_written(tmp_path: Path, keys_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = _spec_data(keys_dir)
    for entry, var in zip(data["kmes"], ("TEST_KEK_A", "TEST_KEK_B"), strict=True):
        entry["kek_env"] = var
        monkeypatch.setenv(var, os.urandom(32).hex())
    workdir = tmp_path / "run"
    with Corridor(parse_corridor(data), workdir, host="127.0.0.1") as corridor:
        assert corridor.nodes["kme-a"].kek_path is None
    assert not (workdir / "kme-a" / "kek.hex").exists()
    assert verify_audit_log(workdir / "kme-a" / "audit.jsonl",
                            load_kek(None, "TEST_KEK_A")).ok


def test_a_broken_audit_chain_stops_the_kme_unless_an_operator_accepts_it(
        tmp_path: Path, keys_dir: Path) -> None:
    """The whole chain is verified at start, not only its tail: an entry edited in the
    middle of the log refuses the start; an operator's reason lets it start, audited."""
    from corridor.kms.audit import AuditLogError
    from corridor.kms.node import KmeNode, load_pki

    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1"):
        pass
    log = workdir / "kme-a" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    lines[1] = lines[1].replace('"time":"2', '"time":"1', 1)  # back-date entry 2
    log.write_text("".join(lines))
    pki = load_pki(workdir / "pki")
    with pytest.raises(AuditLogError, match=r"broken at seq 2.*--accept-broken-audit"):
        KmeNode(spec, "kme-a", workdir, pki).open_manager()
    with pytest.raises(ParameterError, match="accept-broken-audit"):
        KmeNode(spec, "kme-a", workdir, pki, accept_broken_audit="  ")
    node = KmeNode(spec, "kme-a", workdir, pki, accept_broken_audit="restored from backup")
    try:
        node.open_manager()
    finally:
        node.close()
    check = verify_audit_log(log, load_kek(workdir / "kme-a" / "kek.hex"))
    assert not check.ok and check.first_bad_seq == 2  # nothing rewrote history
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    accepted = [e for e in entries if e["event"] == "audit_chain_broken_accepted"]
    assert len(accepted) == 1
    assert accepted[0]["fields"]["operator_reason"] == "restored from backup"
    assert accepted[0]["fields"]["first_bad_seq"] == 2
    # corridor up (one Corridor) takes the same override: the refusal named an option
    # only `kme serve` had.
    with pytest.raises(AuditLogError, match="broken at seq 2"):
        Corridor(spec, workdir, host="127.0.0.1").start()
    with pytest.raises(ParameterError, match="accept-broken-audit"):
        Corridor(spec, workdir, host="127.0.0.1", accept_broken_audit="")
    with Corridor(spec, workdir, host="127.0.0.1", accept_broken_audit="checked: backup"):
        pass
    reasons = [json.loads(line)["fields"]["operator_reason"] for line in
               log.read_text().splitlines() if '"audit_chain_broken_accepted"' in line]
    assert reasons == ["restored from backup", "checked: backup"]


def test_status_tells_a_full_pool_from_a_dead_link(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    data = os.urandom(6 * 1024)  # six blocks of 1024 bytes: two fit, then the pools are full
    (keys / "alice.bin").write_bytes(data)
    (keys / "bob.bin").write_bytes(data)
    spec_data = _spec_data(keys)
    spec_data["kme"] = {"max_key_count": 40}  # 40 keys of 32 bytes: 1280 bytes per pool
    spec = parse_corridor(spec_data)
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as corridor:
        def link_state() -> str:
            [link] = corridor.status()["links"]
            return str(link["state"])

        deadline = time.monotonic() + 20.0
        while link_state() != "pool_full":
            assert link_state() in ("starting", "ok"), corridor.status()
            assert time.monotonic() < deadline, corridor.status()
            time.sleep(0.05)
        [link] = corridor.status()["links"]
        assert link["halves_dropped_full"] > 0 and not link["quarantined"]
        assert link["last_block_age_s"] is not None
        # The operator endpoint of either KME reads the same state.
        pki = corridor.pki
        assert pki is not None
        operator = pki.operators["operator"]
        from corridor.kms.client import OperatorClient

        with OperatorClient(corridor.nodes["kme-b"].url or "", operator.cert, operator.key,
                            pki.ca_cert, expected_kme_id="kme-b") as ops:
            [seen] = ops.alarms()["links"]
        assert seen["link_id"] == LINK and seen["state"] == "pool_full"
        # The feed is paused, not reading the file on only to drop its blocks: it stays
        # pool_full (never dead), and the file's last blocks are still unread.
        deadline = time.monotonic() + 20.0
        while not corridor.status()["links"][0]["paused_full"]:
            assert time.monotonic() < deadline, corridor.status()
            time.sleep(0.05)
        time.sleep(0.5)
        [link] = corridor.status()["links"]
        assert link["state"] == "pool_full" and link["blocks_seen"] == 3
        # SAEs fetch keys: the feed resumes and takes the rest of the file. Once it is
        # used up no block comes any more: the link is dead, whatever the pools hold.
        manager = corridor.nodes["kme-a"].manager
        assert manager is not None
        deadline = time.monotonic() + 30.0
        while link_state() != "dead":
            assert time.monotonic() < deadline, corridor.status()
            if manager.pool_state(LINK, "A->B").available_bytes >= 512:
                manager.enc_keys("sae-a", "sae-b", number=16)
            time.sleep(0.05)
        [link] = corridor.status()["links"]
        assert link["stopped_reason"] == "source_finished" and link["blocks_seen"] == 6


def test_a_pki_from_before_operators_gets_an_operator_certificate(tmp_path: Path) -> None:
    from corridor.kms.node import ensure_pki
    from corridor.kms.pki import init_pki

    spec = load_corridor(None)
    init_pki(tmp_path / "pki", list(spec.kmes), list(spec.saes.items()))
    layout = ensure_pki(spec, tmp_path / "pki")
    assert list(layout.operators) == ["operator"]
    assert "operator" in json.loads((tmp_path / "pki" / "pki.json").read_text())["operators"]


def test_a_store_restored_from_an_older_copy_is_refused(tmp_path: Path, keys_dir: Path) -> None:
    """Anti-rollback: a store behind its own audit trail would cut the same key bytes
    again under new key IDs; the KME refuses to start on it, naming the link and the
    marks, and starts again once the newest store is back."""
    import shutil

    from corridor.kms.manager import StoreRollbackError

    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            _wait_for_keys(sae_a, "sae-b")
    backup = tmp_path / "backup.sqlite"
    shutil.copy(workdir / "kme-a" / "store.sqlite", backup)
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        manager = corridor.nodes["kme-a"].manager
        assert manager is not None
        before = manager.store.last_block_id(LINK) or 0
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            sae_a.get_key("sae-b", number=2)
            deadline = time.monotonic() + 30.0
            while (manager.store.last_block_id(LINK) or 0) <= before:
                assert time.monotonic() < deadline, "no new block"
                time.sleep(0.1)
    newest = tmp_path / "newest.sqlite"
    shutil.copy(workdir / "kme-a" / "store.sqlite", newest)
    shutil.copy(backup, workdir / "kme-a" / "store.sqlite")
    with pytest.raises(StoreRollbackError, match="kme-a is older than its audit trail: link "
                       "link-ab ends at block"):
        Corridor(spec, workdir, host="127.0.0.1").start()
    shutil.copy(newest, workdir / "kme-a" / "store.sqlite")
    with Corridor(spec, workdir, host="127.0.0.1"):
        pass


def test_kme_ports_are_remembered_across_restarts(tmp_path: Path, keys_dir: Path) -> None:
    """KMEs with port = 0 get a free port the first time and the same one after a
    restart in the same working directory (SAEs keep their URLs); a port taken in the
    meantime gives another, with corridor-up.json telling the new URL."""
    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        first = {kme: node.url for kme, node in corridor.nodes.items()}
    assert json.loads((workdir / "ports.json").read_text()).keys() == {"kme-a", "kme-b"}
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        assert {kme: node.url for kme, node in corridor.nodes.items()} == first
    port_a = int(str(first["kme-a"]).rsplit(":", 1)[1])
    from corridor.kms.tls import bind_socket

    squatter = bind_socket("127.0.0.1", port_a)
    squatter.listen()
    try:
        with Corridor(spec, workdir, host="127.0.0.1") as corridor:
            moved = corridor.nodes["kme-a"].url
            assert moved != first["kme-a"] and corridor.nodes["kme-b"].url == first["kme-b"]
            up = json.loads(corridor.up_file.read_text())
            assert {k["kme_id"]: k["base_url"] for k in up["kmes"]}["kme-a"] == moved
    finally:
        squatter.close()


def test_a_slave_store_restored_after_a_delivery_is_refused(tmp_path: Path,
                                                            keys_dir: Path) -> None:
    """The link has stood still since the copy (every recorded block ingested), so the
    block marks cannot tell; the keys the slave delivered since the copy can: they are
    in the restored store again, and would be delivered twice."""
    import shutil

    from corridor.kms.manager import StoreRollbackError

    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        manager = corridor.nodes["kme-b"].manager
        assert manager is not None
        deadline = time.monotonic() + 30.0
        while manager.store.last_block_id(LINK) != 199:  # 200 KiB in 1 KiB blocks
            assert time.monotonic() < deadline, "the recording was not fed to the end"
            time.sleep(0.1)
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            issued = sae_a.get_key("sae-b", number=2)
    backup = tmp_path / "kme-b.sqlite"
    shutil.copy(workdir / "kme-b" / "store.sqlite", backup)
    with Corridor(spec, workdir, host="127.0.0.1") as corridor:
        sae_a, sae_b = _clients(corridor)
        with sae_a, sae_b:
            got = sae_b.get_key_with_id("sae-a", [k.key_id for k in issued])
            assert [k.key for k in got] == [k.key for k in issued]
    shutil.copy(backup, workdir / "kme-b" / "store.sqlite")
    with pytest.raises(StoreRollbackError, match=r"2 key\(s\) it delivered to SAE 'sae-b'"):
        Corridor(spec, workdir, host="127.0.0.1").start()


def test_a_links_monitor_events_reach_only_its_own_kmes(tmp_path: Path, keys_dir: Path) -> None:
    """In one process running several KMEs, a link's block events are audited at the
    link's two KMEs, not at every KME of the corridor."""
    data = _spec_data(keys_dir)
    data["kmes"].append({"id": "kme-c", "site": "east"})
    data["links"].append({**data["links"][0], "id": "link-bc", "alice_kme": "kme-b",
                          "bob_kme": "kme-c"})
    data["saes"].append({"id": "sae-c", "kme": "kme-c"})
    workdir = tmp_path / "run"
    with Corridor(parse_corridor(data), workdir, host="127.0.0.1") as corridor:
        deadline = time.monotonic() + 30.0
        while not all(link["blocks_stored"] for link in corridor.status()["links"]):
            assert time.monotonic() < deadline, corridor.status()
            time.sleep(0.1)
    seen = {}
    for kme in ("kme-a", "kme-b", "kme-c"):
        lines = (workdir / kme / "audit.jsonl").read_text().splitlines()
        seen[kme] = {json.loads(line)["fields"]["link_id"] for line in lines
                     if json.loads(line)["event"] == "link_block"}
    assert seen == {"kme-a": {LINK}, "kme-b": {LINK, "link-bc"}, "kme-c": {"link-bc"}}


def test_a_second_process_of_the_same_kme_on_one_state_is_refused(
        tmp_path: Path, keys_dir: Path) -> None:
    """Two ``kme serve`` of one KME on one working directory appended to one audit chain
    (two kme_started, no stop between): the second is refused, naming the first's pid,
    and a start that failed leaves nothing locked."""
    from corridor.kms.node import KmeNode, load_pki

    spec = parse_corridor(_spec_data(keys_dir))
    workdir = tmp_path / "run"
    with Corridor(spec, workdir, host="127.0.0.1"):
        pass
    pki = load_pki(workdir / "pki")
    first = KmeNode(spec, "kme-a", workdir, pki)
    try:
        first.open_manager()
        code = ("import sys\nfrom pathlib import Path\n"
                "from corridor.kms.node import KmeNode, load_pki, parse_corridor\n"
                "import json\n"
                "spec = parse_corridor(json.loads(sys.argv[1]))\n"
                "w = Path(sys.argv[2])\n"
                "KmeNode(spec, 'kme-a', w, load_pki(w / 'pki')).open_manager()\n")
        other = subprocess.run([sys.executable, "-c", code, json.dumps(_spec_data(keys_dir)),
                                str(workdir)], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0
        assert f"already holds KME kme-a, served by pid {os.getpid()}" in other.stderr
    finally:
        first.close()
    second = KmeNode(spec, "kme-a", workdir, pki)  # free again once the first closed
    second.open_manager()
    second.close()


def test_a_port_in_use_is_named_in_the_file_and_leaves_no_state(
        tmp_path: Path, keys_dir: Path) -> None:
    """The port is bound before the store, KEK and audit log are made: a port in use
    left them behind (with a kme_started entry) and named only ``port``."""
    import socket

    from corridor.kms.node import KmeNode, ensure_pki

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        data = _spec_data(keys_dir)
        data["kmes"][0]["port"] = taken.getsockname()[1]
        spec = parse_corridor(data)
        workdir = tmp_path / "run"
        pki = ensure_pki(spec, workdir / "pki")
        node = KmeNode(spec, "kme-a", workdir, pki)
        with pytest.raises(ParameterError) as info:
            node.start()
        assert info.value.field == "kmes.kme-a.port"
        assert not (workdir / "kme-a" / "audit.jsonl").exists()
        assert not (workdir / "kme-a" / "kek.hex").exists()
    finally:
        taken.close()


def test_a_missing_kek_file_beside_an_existing_log_is_refused_not_made(
        tmp_path: Path, keys_dir: Path) -> None:
    """A typo in kek_file on a restart made a fresh KEK, then failed on the audit chain;
    now the missing file is named and nothing is made."""
    from corridor.kms.node import KmeNode, ensure_pki

    data = _spec_data(keys_dir)
    data["kmes"][0]["kek_file"] = str(tmp_path / "kme-a.kek")
    spec = parse_corridor(data)
    workdir = tmp_path / "run"
    pki = ensure_pki(spec, workdir / "pki")
    node = KmeNode(spec, "kme-a", workdir, pki)
    node.open_manager()
    node.close()
    data["kmes"][0]["kek_file"] = str(tmp_path / "kme-a2.kek")  # the typo
    node = KmeNode(parse_corridor(data), "kme-a", workdir, pki)
    with pytest.raises(ParameterError) as info:
        node.open_manager()
    assert info.value.field == "kmes.kme-a.kek_file"
    assert not (tmp_path / "kme-a2.kek").exists()
