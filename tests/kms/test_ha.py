"""Two workers of one KME on one PostgreSQL store behind one port (docs/ha.md).

The feeder lease (corridor.kms.ha) against the real PostgreSQL server: one holder at a
time, the lock gone with its session, the other worker taking the feeder over. Then the
deployment itself: two ``corridor kme serve --worker`` processes of the master KME and a
single slave KME, SAEs fetching keys from several threads, one worker killed with
SIGKILL under load. PostgreSQL as in tests/kms/test_store.py: skipped when it cannot be
reached, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corridor.cli import app
from corridor.errors import CorridorError, ParameterError
from corridor.kms.audit import AuditLog, HighWaterMarks, verify_audit_log
from corridor.kms.client import SaeClient
from corridor.kms.config import DIRECTION_A_TO_B, split_block
from corridor.kms.crypto import generate_kek, load_kek, write_kek_file
from corridor.kms.ha import (
    FeederLease,
    FeederLeases,
    check_worker,
    hold_worker_lock,
    lease_lock_id,
    observe_sibling_chains,
    sibling_audit_paths,
    worker_audit_path,
)
from corridor.kms.interface import DeliveredKey
from corridor.kms.manager import StoreRollbackError
from corridor.kms.node import KmeNode, ensure_pki, parse_corridor
from corridor.kms.pki import init_pki
from corridor.kms.store_postgres import PostgresKeyStore
from corridor.kms.tls import bind_socket
from tests.kms.test_split_site import _free_port, _spec_data, serve, stop_processes
from tests.kms.test_store import POSTGRES_DSN, require_postgres

LINK = "link-ab"


# --- the lease ------------------------------------------------------------------------


def _terminate(lease: FeederLease) -> None:
    """End the lease's PostgreSQL session from outside, as when its process dies."""
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s", (lease.application_name,)).fetchall()
    assert ended == [(True,)]


def _eventually(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_lock_id_is_a_stable_signed_64_bit_number_per_link_end() -> None:
    one = lease_lock_id("kme-a", LINK)
    assert one == lease_lock_id("kme-a", LINK)
    assert -2**63 <= one < 2**63
    assert len({one, lease_lock_id("kme-b", LINK), lease_lock_id("kme-a", "link-ac"),
                lease_lock_id("kme-alink", "-ab")}) == 4


@pytest.mark.postgres
def test_one_holder_wins_and_the_other_takes_over_when_its_session_ends() -> None:
    require_postgres()
    kme = f"kme-{uuid.uuid4().hex[:8]}"
    first = FeederLease(POSTGRES_DSN, kme, LINK, application_name=f"t-{kme}-1")
    second = FeederLease(POSTGRES_DSN, kme, LINK, application_name=f"t-{kme}-2")
    other_link = FeederLease(POSTGRES_DSN, kme, "link-other", application_name=f"t-{kme}-3")
    try:
        assert first.try_acquire() and first.held
        assert not second.try_acquire() and not second.held
        assert other_link.try_acquire()  # another link end is another lease
        assert first.try_acquire() and first.check()  # still held, not taken twice
        # The holder's session ends (its process died): the lock goes with it.
        _terminate(first)
        assert not first.check() and not first.held
        assert _eventually(second.try_acquire)
        assert not first.try_acquire()  # it comes back as a follower
        # A clean release hands the lease on at once.
        second.release()
        assert first.try_acquire()
    finally:
        for lease in (first, second, other_link):
            lease.release()


class _RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


class _FakeFeeder:
    """Stands in for a LinkFeeder: the leases decide when it runs."""

    def __init__(self, link_id: str, fail: bool = False) -> None:
        self.link_id = link_id
        self.started = self.stopped = False
        self.fail = fail
        self.error: Exception | None = None

    @property
    def running(self) -> bool:
        return self.started and not self.stopped and self.error is None

    def start(self) -> None:
        if self.fail:
            raise CorridorError("store unavailable")
        self.started = True

    def stop(self, timeout_s: float = 60.0) -> None:
        self.stopped = True


@pytest.mark.postgres
def test_feeder_runs_only_where_the_lease_is_and_moves_with_it() -> None:
    require_postgres()
    kme = f"kme-{uuid.uuid4().hex[:8]}"
    built: dict[str, list[_FakeFeeder]] = {"w1": [], "w2": []}
    sinks = {"w1": _RecordingSink(), "w2": _RecordingSink()}
    running: dict[str, list[list[str]]] = {"w1": [], "w2": []}

    def workers(name: str) -> FeederLeases:
        def build() -> Any:
            built[name].append(_FakeFeeder(LINK))
            return built[name][-1]

        return FeederLeases(POSTGRES_DSN, kme, name, {LINK: build}, sinks[name],
                            on_change=lambda feeders: running[name].append(sorted(feeders)),
                            retry_s=0.1,
                            lease_factory=lambda url, k, link: FeederLease(
                                url, k, link, application_name=f"t-{k}-{name}"))

    w1, w2 = workers("w1"), workers("w2")
    try:
        w1.run_round()
        w2.run_round()
        assert w1.held == [LINK] and w2.held == []
        assert len(built["w1"]) == 1 and built["w1"][0].started and built["w2"] == []
        assert running["w1"] == [[LINK]]
        (event, fields), = sinks["w1"].events
        assert event == "feeder_lease_gained" and fields["takeover"] is False
        assert fields["lock_id"] == lease_lock_id(kme, LINK) and fields["worker"] == "w1"
        # w1's session dies: w1 stops its feeder at its next round, w2 takes over.
        _terminate(w1.leases[LINK])
        w1.run_round()
        assert built["w1"][0].stopped and w1.held == [] and running["w1"][-1] == []
        assert sinks["w1"].events[-1][0] == "feeder_lease_lost"
        assert sinks["w1"].events[-1][1]["reason"] == "lease_connection_lost"
        w2.start()  # the thread retries by itself
        assert _eventually(lambda: w2.held == [LINK])
        assert built["w2"][0].started and running["w2"] == [[LINK]]
        gained = [f for e, f in sinks["w2"].events if e == "feeder_lease_gained"]
        assert gained and gained[0]["takeover"] is True
        w1.run_round()
        assert w1.held == [] and len(built["w1"]) == 1  # no second writer
    finally:
        w2.close()
        w1.close()
    assert built["w2"][0].stopped
    assert sinks["w2"].events[-1][0] == "feeder_lease_lost"
    assert sinks["w2"].events[-1][1]["reason"] == "worker_stopped"


@pytest.mark.postgres
def test_a_feeder_that_cannot_start_hands_the_lease_back() -> None:
    require_postgres()
    kme = f"kme-{uuid.uuid4().hex[:8]}"
    sink = _RecordingSink()
    leases = FeederLeases(POSTGRES_DSN, kme, "w1", {LINK: lambda: _FakeFeeder(LINK, True)},
                          sink)
    other = FeederLease(POSTGRES_DSN, kme, LINK, application_name=f"t-{kme}-o")
    try:
        leases.run_round()
        assert leases.held == []
        assert sink.events == [("feeder_lease_lost", {
            "kme_id": kme, "worker": "w1", "link_id": LINK,
            "lock_id": lease_lock_id(kme, LINK), "reason": "feeder_failed_to_start"})]
        assert other.try_acquire()
        other.release()
        leases.run_round()  # it waits before trying again
        assert leases.held == [] and len(sink.events) == 1
    finally:
        other.release()
        leases.close()


@pytest.mark.postgres
def test_a_feeder_stopped_by_an_error_hands_the_lease_on() -> None:
    require_postgres()
    kme = f"kme-{uuid.uuid4().hex[:8]}"
    sink = _RecordingSink()
    built: list[_FakeFeeder] = []

    def build() -> Any:
        built.append(_FakeFeeder(LINK))
        return built[-1]

    leases = FeederLeases(POSTGRES_DSN, kme, "w1", {LINK: build}, sink)
    other = FeederLease(POSTGRES_DSN, kme, LINK, application_name=f"t-{kme}-o")
    try:
        leases.run_round()
        assert leases.held == [LINK] and not other.try_acquire()
        leases.run_round()  # running: nothing changes
        assert leases.held == [LINK] and len(built) == 1
        built[0].error = CorridorError("block_id refused")  # the feed loop stopped
        leases.run_round()
        assert leases.held == [] and built[0].stopped
        assert sink.events[-1][0] == "feeder_lease_lost"
        assert sink.events[-1][1]["reason"] == "feeder_error"
        assert other.try_acquire()  # another worker may feed now
    finally:
        other.release()
        leases.close()


# --- per-worker files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a/b", "..", "-w", "w" * 33, "w 1"])
def test_bad_worker_names_are_refused(name: str) -> None:
    with pytest.raises(ParameterError) as excinfo:
        check_worker(name)
    assert excinfo.value.field == "--worker"


def test_one_process_per_worker_name(tmp_path: Path) -> None:
    fd = hold_worker_lock(tmp_path, "w1")
    try:
        with pytest.raises(ParameterError, match="already running"):
            hold_worker_lock(tmp_path, "w1")
        os.close(hold_worker_lock(tmp_path, "w2"))
    finally:
        os.close(fd)
    os.close(hold_worker_lock(tmp_path, "w1"))  # free again once its holder is gone


def test_marks_come_from_every_other_chain_of_the_kme(tmp_path: Path) -> None:
    kek = generate_kek()
    own = worker_audit_path(tmp_path, "w1")
    with AuditLog(worker_audit_path(tmp_path, "w2"), kek) as log:
        log.emit("block_ingested", link_id=LINK, block_id=7)
    with AuditLog(tmp_path / "audit.jsonl", kek) as log:
        log.emit("block_ingested", link_id=LINK, block_id=3)
    (tmp_path / "hybrid-audit.jsonl").write_text("")  # another trail, not this KME's
    with AuditLog(own, kek) as log:
        log.emit("block_ingested", link_id=LINK, block_id=1)
    siblings = sibling_audit_paths(tmp_path, own)
    assert [p.name for p in siblings] == ["audit.jsonl", "audit-w2.jsonl"]
    marks = HighWaterMarks()
    assert observe_sibling_chains(siblings, kek, marks) == []
    assert marks.last_block_id == {LINK: 7}
    # A chain that does not verify is reported; its authentic entries still count.
    with (tmp_path / "audit-w2.jsonl").open("a") as stream:
        stream.write('{"seq": 2}\n')
    marks = HighWaterMarks()
    warnings = observe_sibling_chains(siblings, kek, marks)
    assert len(warnings) == 1 and "audit-w2.jsonl" in warnings[0]
    assert marks.last_block_id == {LINK: 7}


def test_worker_on_an_sqlite_store_is_refused_naming_the_field(tmp_path: Path) -> None:
    config = _write_config(tmp_path, {"kme-a": _free_port(), "kme-b": _free_port()}, None,
                           tmp_path / "keys")
    result = CliRunner().invoke(app, ["kme", "serve", "--config", str(config), "--kme",
                                      "kme-a", "--workdir", str(tmp_path / "state"),
                                      "--worker", "w1", "--log-text"])
    assert result.exit_code == 2, result.output
    assert "kmes.kme-a.store" in result.output and "postgresql://" in result.output
    assert not (tmp_path / "state").exists()


@pytest.mark.postgres
def test_a_starting_worker_respects_the_other_workers_chains_and_requests(
        tmp_path: Path, fresh_database: str) -> None:
    """Worker w1 starts on an empty store while w2's chain saw block 5 ingested: the
    store was rolled back behind the other worker's trail, so w1 refuses it. Its own
    chain is audit-w1.jsonl and says which worker started; it leaves young pending
    reservations (another worker's requests in flight) alone."""
    data = _spec_data(_free_port())
    data["kmes"][0]["store"] = fresh_database
    spec = parse_corridor(data)
    pki = ensure_pki(spec, tmp_path / "pki")
    state_dir = tmp_path / "run" / "kme-a"
    state_dir.mkdir(parents=True)
    kek = load_kek(write_kek_file(state_dir / "kek.hex"))
    with AuditLog(worker_audit_path(state_dir, "w2"), kek) as log:
        log.emit("block_ingested", link_id=LINK, block_id=5)
    node = KmeNode(spec, "kme-a", tmp_path / "run", pki, worker="w1",
                   sock=bind_socket("127.0.0.1", 0, reuse_port=True))
    with pytest.raises(StoreRollbackError, match="block 5 was ingested"):
        node.start()
    assert node.audit_path == state_dir / "audit-w1.jsonl"
    # Without the other chain's mark the same store is fine. It holds two pending master
    # reservations: one an hour old (left by a dead worker), one just made (another
    # worker's request in flight); the starting worker discards only the old one.
    (state_dir / "audit-w2.jsonl").unlink()
    store = PostgresKeyStore(fresh_database, kek, kme_id="kme-a")
    try:
        store.append_block(LINK, 0, split_block(os.urandom(4096)), 10**9)
        old, young = store.reserve_front(LINK, DIRECTION_A_TO_B,
                                         key_ids=[str(uuid.uuid4()) for _ in range(2)],
                                         length_bytes=32, master_sae_id="sae-a",
                                         slave_sae_ids=("sae-b",))
        import psycopg

        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("UPDATE corridor.kms_key SET created_at = created_at - 3600 "
                         "WHERE key_id = %s", (old.key_id,))
    finally:
        store.close()
    node = KmeNode(spec, "kme-a", tmp_path / "run", pki, worker="w1",
                   sock=bind_socket("127.0.0.1", 0, reuse_port=True))
    try:
        node.start()
        assert node.pending_discarded == 1
        assert node.manager is not None
        assert [r.key_id for r in node.manager.store.pending_reservations()] == [young.key_id]
    finally:
        node.close()
    started = _events(state_dir / "audit-w1.jsonl", "kme_started")
    assert [f.get("worker") for f in started] == ["w1"]  # the refused start never began


def test_a_worker_needs_a_postgresql_store(tmp_path: Path) -> None:
    spec = parse_corridor(_spec_data(_free_port()))
    pki = ensure_pki(spec, tmp_path / "pki")
    with pytest.raises(ParameterError) as excinfo:
        KmeNode(spec, "kme-a", tmp_path / "run", pki, worker="w1")
    assert excinfo.value.field == "kmes.kme-a.store"


# --- two workers under load, one killed ------------------------------------------------


def _write_config(tmp_path: Path, ports: dict[str, int], store_a: str | None,
                  keys_dir: Path) -> Path:
    store = f'store = "{store_a}"\n' if store_a else ""
    config = tmp_path / "corridor.toml"
    config.write_text(f'''name = "ha"
pki_dir = "pki"

[kme]
max_key_count = 20000

[[kmes]]
id = "kme-a"
host = "127.0.0.1"
port = {ports["kme-a"]}
{store}
[[kmes]]
id = "kme-b"
host = "127.0.0.1"
port = {ports["kme-b"]}

[[links]]
id = "{LINK}"
alice_kme = "kme-a"
bob_kme = "kme-b"
source = "recorded"
keys_dir = "{keys_dir}"
block_bytes = 4096
block_interval_s = 0.25

[[saes]]
id = "sae-a"
kme = "kme-a"

[[saes]]
id = "sae-b"
kme = "kme-b"
''')
    return config


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database of its own (the KME's store uses the fixed schema ``corridor``)."""
    require_postgres()
    import psycopg
    from psycopg import sql

    name = f"corridor_ha_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}?connect_timeout=3"
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _events(path: Path, name: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by SIGKILL
        if entry.get("event") == name:
            out.append(entry["fields"])
    return out


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_killing_one_worker_under_load_loses_no_key_and_moves_the_feeder(
        tmp_path: Path, fresh_database: str) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    recording = os.urandom(4096 * 2000)  # both parties' verified key: the same bytes
    for party in ("alice.bin", "bob.bin"):
        (keys_dir / party).write_bytes(recording)
    ports = {"kme-a": _free_port(), "kme-b": _free_port()}
    config = _write_config(tmp_path, ports, fresh_database, keys_dir)
    pki = init_pki(tmp_path / "pki", list(ports), [("sae-a", "kme-a"), ("sae-b", "kme-b")])
    state = tmp_path / "state"
    logs = {name: tmp_path / f"{name}.log" for name in ("w1", "w2", "kme-b")}
    chains = {w: state / "kme-a" / f"audit-{w}.jsonl" for w in ("w1", "w2")}
    processes: dict[str, subprocess.Popen[str]] = {}

    def client(sae: str, kme: str) -> SaeClient:
        return SaeClient(f"https://127.0.0.1:{ports[kme]}", pki.saes[sae].cert,
                         pki.saes[sae].key, pki.ca_cert, expected_kme_id=kme, timeout_s=10.0)

    def stored_at_a() -> int:
        try:
            with client("sae-a", "kme-a") as sae:
                return sae.status("sae-b").stored_key_count
        except CorridorError:
            return -1

    def wait_until(condition: Any, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for name, process in processes.items():
                assert process.poll() is None or name == "w1-killed", \
                    (name, logs[name].read_text())
            assert time.monotonic() < deadline, (what, {k: v.read_text()
                                                        for k, v in logs.items()})
            time.sleep(0.2)

    issued: dict[str, bytes] = {}  # key ID -> key, as the master SAE got it
    fetched: dict[str, bytes] = {}  # key ID -> key, as the slave SAE got it
    unfetched: list[str] = []
    failures = {"enc": 0, "dec": 0}
    served_after_kill = [0]
    killed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    duplicate_ids: list[str] = []

    def record(keys: list[DeliveredKey], into: dict[str, bytes]) -> None:
        for key in keys:
            if key.key_id in into:
                duplicate_ids.append(key.key_id)
            into[key.key_id] = key.key

    def load() -> None:
        master, slave = client("sae-a", "kme-a"), client("sae-b", "kme-b")
        requests = 0
        try:
            while not stop.is_set():
                requests += 1
                if requests % 4 == 0:  # new connections: the kernel spreads them over both
                    master.close()
                    master = client("sae-a", "kme-a")
                try:
                    keys = master.get_key("sae-b", number=4)
                except CorridorError:
                    with lock:
                        failures["enc"] += 1
                    master.close()
                    master = client("sae-a", "kme-a")
                    time.sleep(0.05)
                    continue
                with lock:
                    record(keys, issued)
                    if killed.is_set():
                        served_after_kill[0] += 1
                ids = [key.key_id for key in keys]
                try:
                    got = slave.get_key_with_id("sae-a", ids)
                except CorridorError:
                    with lock:
                        failures["dec"] += 1
                        unfetched.extend(ids)
                    continue
                with lock:
                    record(got, fetched)
        finally:
            master.close()
            slave.close()

    threads = [threading.Thread(target=load, name=f"load-{i}") for i in range(4)]
    try:
        processes["kme-b"] = serve(config, "kme-b", state, logs["kme-b"])
        # The first worker creates the KEK; the second starts once it serves.
        processes["w1"] = serve(config, "kme-a", state, logs["w1"], "--worker", "w1")
        wait_until(lambda: stored_at_a() >= 8, "first keys at kme-a")
        processes["w2"] = serve(config, "kme-a", state, logs["w2"], "--worker", "w2")
        wait_until(lambda: "serving at" in logs["w2"].read_text(), "second worker serving")
        assert [f["worker"] for f in _events(chains["w1"], "feeder_lease_gained")] == ["w1"]
        assert _events(chains["w2"], "feeder_lease_gained") == []
        for thread in threads:
            thread.start()
        # Both workers serve master SAEs behind the one port before the kill.
        wait_until(lambda: all(_events(chains[w], "keys_delivered") for w in chains),
                   "deliveries at both workers", 30.0)
        time.sleep(1.0)
        processes["w1"].send_signal(signal.SIGKILL)
        processes["w1-killed"] = processes.pop("w1")
        assert processes["w1-killed"].wait(10) == -signal.SIGKILL
        killed.set()
        wait_until(lambda: _events(chains["w2"], "feeder_lease_gained"), "takeover", 20.0)
        gained = _events(chains["w2"], "feeder_lease_gained")[0]
        assert gained["takeover"] is True and gained["link_id"] == LINK
        # The survivor serves, and its feeder stores new blocks.
        wait_until(lambda: served_after_kill[0] >= 20, "requests served after the kill")
        wait_until(lambda: len(_events(chains["w2"], "block_ingested")) >= 3,
                   "blocks fed by the survivor", 30.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        # The pool keeps growing once the load stops: the link is fed again.
        first = stored_at_a()
        wait_until(lambda: stored_at_a() > first + 64, "pool growth after the kill", 20.0)
        # Keys whose dec_keys answer was lost: fetchable now, exactly once.
        with client("sae-b", "kme-b") as slave:
            for start in range(0, len(unfetched), 100):
                record(slave.get_key_with_id("sae-a", unfetched[start:start + 100]), fetched)
            # A delivered key is never delivered again.
            again = next(iter(fetched))
            with pytest.raises(CorridorError):
                slave.get_key_with_id("sae-a", [again])
        # The killed worker comes back: its own chain, the survivor's deliveries in the
        # shared store do not stop it (anti-rollback reads every worker's chain).
        processes["w1"] = serve(config, "kme-a", state, logs["w1"], "--worker", "w1")
        wait_until(lambda: logs["w1"].read_text().count("serving at") == 2,
                   "the killed worker restarted")
        assert _events(chains["w1"], "feeder_lease_gained")[-1]["worker"] == "w1"
        assert len(_events(chains["w1"], "feeder_lease_gained")) == 1  # w2 still feeds
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(30)
        codes = stop_processes(processes)
    assert codes == {"kme-b": 0, "w1-killed": -signal.SIGKILL, "w2": 0, "w1": 0}, \
        {k: v.read_text() for k, v in logs.items()}
    assert duplicate_ids == []
    assert set(fetched) == set(issued) and len(issued) > 200
    assert all(fetched[key_id] == key for key_id, key in issued.items())
    # Some requests in flight at the kill may fail; the rest were served.
    assert failures["enc"] + failures["dec"] < len(issued) // 4, failures
    # Each worker's chain verifies on its own (the killed one perhaps with a cut tail).
    kek = load_kek(state / "kme-a" / "kek.hex")
    for worker, chain in chains.items():
        result = verify_audit_log(chain, kek)
        assert result.ok, (worker, result)
    assert _events(chains["w2"], "feeder_lease_lost")[-1]["reason"] == "worker_stopped"
    for log in logs.values():
        text = log.read_text()
        assert all(key.hex() not in text for key in list(issued.values())[:50])
