"""The KeyStore suite: every test runs against SQLite and PostgreSQL alike.

PostgreSQL is the server at 127.0.0.1:5432, database ``test``, trust authentication
(``CORRIDOR_TEST_POSTGRES_DSN`` overrides the connection string). When it cannot be
reached its tests are skipped, except with ``CI=true``, where they fail. Every store gets
a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.config import DIRECTION_A_TO_B, DIRECTION_B_TO_A, split_block
from corridor.kms.crypto import AtRestDecryptionError, generate_kek
from corridor.kms.interface import (
    MSG_KEYS_NOT_FOUND,
    KeyRequestError,
    KeysUnavailableError,
    Reservation,
    UnauthorizedError,
)
from corridor.kms.store import (
    ROLE_MASTER,
    ROLE_SLAVE,
    SEGMENT_BYTES,
    InvalidReservationError,
    KeyStore,
    PoolExhaustedError,
    ReservationRefusedError,
    StoreUnavailableError,
    _contiguous_runs,
    _uniform_groups,
    all_uuids,
    is_uuid,
    new_key_ids,
)
from corridor.kms.store_open import open_store
from corridor.kms.store_sqlite import SqliteKeyStore

POSTGRES_DSN = os.environ.get("CORRIDOR_TEST_POSTGRES_DSN",
                              "host=127.0.0.1 port=5432 dbname=test user=postgres "
                              "connect_timeout=3")
LINK = "link-1"
AB = DIRECTION_A_TO_B
BIG = 10**9


@functools.cache
def _postgres_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_DSN) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def require_postgres() -> None:
    """Skip (fail under CI=true) when the test PostgreSQL server is not reachable."""
    problem = _postgres_problem()
    if problem is None:
        return
    message = f"PostgreSQL is not reachable ({POSTGRES_DSN}): {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def drop_schema(schema: str) -> None:
    """Remove a test schema and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


StoreFactory = Callable[..., KeyStore]

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def kek() -> bytes:
    return generate_kek()


@contextlib.contextmanager
def store_factory(backend: str, folder: Path, kek: bytes) -> Iterator[StoreFactory]:
    """``factory(kme_id, name=None, kek_bytes=None)`` makes stores of ``backend``; the same
    name reopens the same file or schema. Everything is closed (and schemas dropped) on
    exit."""
    if backend == "postgres":
        require_postgres()
    opened: list[KeyStore] = []
    schemas: set[str] = set()
    token = uuid.uuid4().hex[:12]

    def factory(kme_id: str, name: str | None = None, kek_bytes: bytes | None = None,
                **options) -> KeyStore:
        name = name or kme_id
        key = kek_bytes if kek_bytes is not None else kek
        if backend == "sqlite":
            store: KeyStore = SqliteKeyStore(folder / f"{name}.db", key, kme_id=kme_id,
                                             **options)
        else:
            from corridor.kms.store_postgres import PostgresKeyStore

            schema = f"t_{token}_{name.replace('-', '_')}"
            schemas.add(schema)
            store = PostgresKeyStore(POSTGRES_DSN, key, kme_id=kme_id, schema=schema,
                                     **options)
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            store.close()
        for schema in schemas:
            drop_schema(schema)


@pytest.fixture
def make_store(backend, tmp_path, kek) -> Iterator[StoreFactory]:
    """A store factory for the test's backend."""
    with store_factory(backend, tmp_path, kek) as factory:
        yield factory


def _feed(store: KeyStore, blocks: list[bytes], first_block_id: int = 0,
          capacity: int = BIG) -> None:
    for index, block in enumerate(blocks):
        store.append_block(LINK, first_block_id + index, split_block(block), capacity)


def _stream(blocks: list[bytes], direction: str) -> bytes:
    return b"".join(split_block(block)[direction] for block in blocks)


def _ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def _reserve(store: KeyStore, count: int, length: int, direction: str = AB,
             slaves: tuple[str, ...] = ("s1",)) -> list[Reservation]:
    return store.reserve_front(LINK, direction, key_ids=_ids(count), length_bytes=length,
                               master_sae_id="m1", slave_sae_ids=slaves)


def test_reserve_front_cuts_consecutive_ranges_of_the_stream(make_store):
    store = make_store("kme-a")
    blocks = [os.urandom(10_000), os.urandom(3_001)]
    _feed(store, blocks)
    stream = _stream(blocks, AB)
    assert store.pool_state(LINK, AB).available_bytes == len(stream)
    first = _reserve(store, 3, 32)
    second = _reserve(store, 2, 1024)
    offsets = [(r.byte_offset, r.length_bytes) for r in first + second]
    assert offsets == [(0, 32), (32, 32), (64, 32), (96, 1024), (1120, 1024)]
    keys = store.take_master_keys("m1", [r.key_id for r in first + second])
    assert [k.key for k in keys] == [stream[o:o + n] for o, n in offsets]
    state = store.pool_state(LINK, AB)
    assert state.reserve_offset == 2144
    assert state.available_bytes == len(stream) - 2144
    assert store.count_keys() == 0


def test_exhausted_pool_refuses_and_changes_nothing(make_store):
    store = make_store("kme-a")
    _feed(store, [os.urandom(200)])  # 100 bytes per direction
    before = store.pool_state(LINK, AB)
    with pytest.raises(PoolExhaustedError):
        _reserve(store, 4, 32)
    assert store.pool_state(LINK, AB) == before
    assert store.count_keys() == 0
    assert len(_reserve(store, 3, 32)) == 3


def test_slave_cuts_the_same_bytes_idempotently(make_store):
    master, slave = make_store("kme-a"), make_store("kme-b")
    blocks = [os.urandom(20_000)]
    _feed(master, blocks)
    _feed(slave, blocks)
    reservations = _reserve(master, 5, 64, slaves=("s1",))
    assert slave.record_peer_reservations(list(reversed(reservations))) != []
    assert slave.record_peer_reservations(reservations) == []  # repeat: no effect
    assert slave.count_keys(ROLE_SLAVE) == 5
    master_keys = master.take_master_keys("m1", [r.key_id for r in reservations])
    slave_keys = slave.take_slave_keys("s1", "m1", [r.key_id for r in reservations])
    assert master_keys == slave_keys
    assert slave.pool_state(LINK, AB).available_bytes == 10_000 - 5 * 64


def test_slave_refuses_bytes_it_does_not_hold_all_or_nothing(make_store):
    master, slave = make_store("kme-a"), make_store("kme-b")
    blocks = [os.urandom(4_000), os.urandom(4_000)]
    _feed(master, blocks)
    _feed(slave, blocks[:1])  # the slave has not ingested the second block yet
    early = _reserve(master, 1, 1000)
    late = _reserve(master, 1, 1500)  # bytes 1000..2500, the slave holds 0..2000
    before = slave.pool_state(LINK, AB)
    with pytest.raises(ReservationRefusedError):
        slave.record_peer_reservations(early + late)
    assert slave.pool_state(LINK, AB) == before and slave.count_keys() == 0
    assert slave.record_peer_reservations(early) == early
    with pytest.raises(ReservationRefusedError):
        slave.record_peer_reservations([
            Reservation(str(uuid.uuid4()), LINK, AB, 0, 32, "m1", ("s1",))])  # already cut
    changed = Reservation(early[0].key_id, LINK, AB, early[0].byte_offset,
                          early[0].length_bytes, "m1", ("s1", "s2"))
    with pytest.raises(InvalidReservationError, match="different fields"):
        slave.record_peer_reservations([changed])


def test_cut_from_the_middle_of_segments_keeps_the_rest(make_store):
    slave = make_store("kme-b")
    blocks = [os.urandom(8 * SEGMENT_BYTES)]  # 4 segments per direction
    _feed(slave, blocks)
    stream = _stream(blocks, AB)
    pieces = [(100, 64), (SEGMENT_BYTES - 10, 40), (2 * SEGMENT_BYTES + 5, SEGMENT_BYTES + 3)]
    reservations = [Reservation(str(uuid.uuid4()), LINK, AB, o, n, "m1", ("s1",))
                    for o, n in pieces]
    slave.record_peer_reservations(reservations)
    keys = slave.take_slave_keys("s1", "m1", [r.key_id for r in reservations])
    assert [k.key for k in keys] == [stream[o:o + n] for o, n in pieces]
    # What is left is still served, byte-exact, by a later announcement.
    rest = Reservation(str(uuid.uuid4()), LINK, AB, 164, SEGMENT_BYTES - 10 - 164, "m1",
                       ("s1",))
    slave.record_peer_reservations([rest])
    (key,) = slave.take_slave_keys("s1", "m1", [rest.key_id])
    assert key.key == stream[164:SEGMENT_BYTES - 10]


def test_slave_delivery_rules(make_store):
    block = os.urandom(4_000)
    master, slave = make_store("kme-a"), make_store("kme-b")
    _feed(master, [block])
    _feed(slave, [block])
    multicast = _reserve(master, 2, 32, slaves=("s1", "s2"))
    single = _reserve(master, 1, 32, slaves=("s1",))
    slave.record_peer_reservations(multicast + single)
    ids = [r.key_id for r in multicast]
    with pytest.raises(UnauthorizedError):
        slave.take_slave_keys("s3", "m1", ids)
    with pytest.raises(KeyRequestError) as info:
        slave.take_slave_keys("s1", "m2", ids)  # wrong master
    assert info.value.message == MSG_KEYS_NOT_FOUND
    unknown = str(uuid.uuid4())
    with pytest.raises(KeyRequestError):
        slave.take_slave_keys("s1", "m1", [*ids, unknown])  # all or nothing
    with pytest.raises(KeyRequestError):
        slave.take_slave_keys("s1", "m1", [ids[0], ids[0]])
    first = slave.take_slave_keys("s1", "m1", ids)
    with pytest.raises(KeyRequestError) as info:
        slave.take_slave_keys("s1", "m1", ids[:1])
    assert info.value.message == MSG_KEYS_NOT_FOUND
    assert slave.count_keys(ROLE_SLAVE) == 3  # s2 is still owed the multicast keys
    assert slave.take_slave_keys("s2", "m1", ids) == first
    assert slave.count_keys(ROLE_SLAVE) == 1
    with pytest.raises(UnauthorizedError):
        slave.take_slave_keys("s2", "m1", [single[0].key_id])
    # Slave rows are never delivered as master rows, nor master rows to slaves.
    with pytest.raises(KeysUnavailableError):
        slave.take_master_keys("m1", [single[0].key_id])
    with pytest.raises(KeyRequestError):
        master.take_slave_keys("s1", "m1", [single[0].key_id])
    assert len(master.take_master_keys("m1", [single[0].key_id])) == 1
    with pytest.raises(KeysUnavailableError):
        master.take_master_keys("m1", [single[0].key_id])


def test_full_pool_drops_the_block_but_keeps_offsets_aligned(make_store):
    store = make_store("kme-a")
    capacity = 3000
    blocks = [os.urandom(4000), os.urandom(4000), os.urandom(4000)]
    results = [store.append_block(LINK, i, split_block(b), capacity)
               for i, b in enumerate(blocks)]
    assert [r.stored_bytes[AB] for r in results] == [2000, 0, 0]
    assert [r.stream_offsets[AB] for r in results] == [0, 2000, 4000]
    state = store.pool_state(LINK, AB)
    assert (state.stream_end_offset, state.dropped_bytes) == (6000, 4000)
    keys = _reserve(store, 1, 1600)
    store.take_master_keys("m1", [k.key_id for k in keys])
    # Room again: block 3 lands at stream offset 6000, after the hole 2000..6000.
    block = os.urandom(4000)
    store.append_block(LINK, 3, split_block(block), capacity)
    # A 512-byte key cannot use the 400-byte fragment before the hole: it starts at 6000
    # and the fragment is burned.
    (after_hole,) = _reserve(store, 1, 512)
    assert after_hole.byte_offset == 6000
    (key,) = store.take_master_keys("m1", [after_hole.key_id])
    assert key.key == split_block(block)[AB][:512]
    assert store.pool_state(LINK, AB).available_bytes == 2000 - 512


def test_block_ids_must_increase(make_store):
    store = make_store("kme-a")
    _feed(store, [os.urandom(100)], first_block_id=5)
    assert store.last_block_id(LINK) == 5
    with pytest.raises(ParameterError, match="block_id"):
        _feed(store, [os.urandom(100)], first_block_id=5)
    assert store.pool_state(LINK, AB).stream_end_offset == 50


def test_pending_reservations_and_discard(make_store):
    store = make_store("kme-a")
    _feed(store, [os.urandom(2000)])
    reservations = _reserve(store, 3, 32)
    pending = store.pending_reservations()
    assert pending == reservations
    assert store.pending_reservations(older_than_s=3600) == []
    assert store.discard_keys([r.key_id for r in reservations]) == 3
    assert store.count_keys(ROLE_MASTER) == 0
    # The pointer never moves back: the discarded bytes are not reserved again.
    (fresh,) = _reserve(store, 1, 32)
    assert fresh.byte_offset == 96


def test_reopen_checks_owner_and_kek(make_store):
    store = make_store("kme-a")
    _feed(store, [os.urandom(1000)])
    (res,) = _reserve(store, 1, 32)
    store.close()
    with pytest.raises(AtRestDecryptionError, match="does not match"):
        make_store("kme-a", kek_bytes=generate_kek())
    with pytest.raises(ParameterError, match="belongs to KME 'kme-a'"):
        make_store("kme-z", name="kme-a")
    again = make_store("kme-a")
    assert again.pending_reservations() == [res]
    assert again.last_block_id(LINK) == 0
    assert len(again.take_master_keys("m1", [res.key_id])) == 1


def test_rows_are_bound_to_their_identity(make_store):
    store = make_store("kme-a")
    _feed(store, [os.urandom(1000)])
    first, second = _reserve(store, 2, 32)
    # Swap the two ciphertexts: each row now fails authentication instead of serving the
    # other key.
    with store._transaction() as cur:  # type: ignore[attr-defined]
        blobs = dict(cur.rows("SELECT key_id, data FROM kms_key"))
        for target, source in ((first, second), (second, first)):
            cur.run("UPDATE kms_key SET data = ? WHERE key_id = ?",
                    (blobs[source.key_id], target.key_id))
    for res in (first, second):
        with pytest.raises(AtRestDecryptionError):
            store.take_master_keys("m1", [res.key_id])
    assert store.count_keys() == 2
    # Re-labelling a key for other slaves breaks it too (the AAD binds the SAE IDs).
    (third,) = _reserve(store, 1, 32)
    with store._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_key SET slave_sae_ids = ? WHERE key_id = ?", ("intruder",
                                                                         third.key_id))
    with pytest.raises(AtRestDecryptionError):
        store.take_master_keys("m1", [third.key_id])


def test_no_plaintext_at_rest(make_store, backend, tmp_path):
    store = make_store("kme-a")
    blocks = [os.urandom(9000)]
    _feed(store, blocks)
    reservations = _reserve(store, 4, 32)
    stream = _stream(blocks, AB)
    if backend == "sqlite":
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("kme-a"))
    else:
        with store._transaction() as cur:  # type: ignore[attr-defined]
            raw = b"".join(bytes(row[0]) for row in
                           cur.rows("SELECT data FROM kms_segment UNION ALL "
                                    "SELECT data FROM kms_key"))
    assert len(raw) > len(stream)
    windows = {stream[i:i + 16] for i in range(0, len(stream) - 16, 8)}
    assert not any(raw.find(w) >= 0 for w in windows)
    assert all(store.take_master_keys("m1", [r.key_id]) for r in reservations)


def test_concurrent_reservations_from_two_store_instances(make_store):
    # Two store objects on one file or schema stand for two API worker processes.
    first = make_store("kme-a")
    second = make_store("kme-a")
    _feed(first, [os.urandom(40_000)])
    results: list[Reservation] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(store: KeyStore, seed: int) -> None:
        try:
            for i in range(15):
                got = _reserve(store, 1 + (seed + i) % 3, 32)
                store.take_master_keys("m1", [r.key_id for r in got])
                with lock:
                    results.extend(got)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(store, n))
               for n, store in enumerate([first, second, first, second])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    spans = sorted((r.byte_offset, r.byte_offset + r.length_bytes) for r in results)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert spans[-1][1] == sum(r.length_bytes for r in results)  # no gaps either


def test_open_store_urls(tmp_path, kek):
    store = open_store(f"sqlite:///{tmp_path}/x.db", kek, kme_id="kme-a")
    assert isinstance(store, SqliteKeyStore) and Path(store.path) == tmp_path / "x.db"
    store.close()
    with pytest.raises(ParameterError, match="store_url"):
        open_store("mysql://db", kek, kme_id="kme-a")
    with pytest.raises(KeysUnavailableError):
        store.pool_state(LINK, AB)  # closed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_lengths=st.lists(st.integers(1, 3 * SEGMENT_BYTES), min_size=1, max_size=5),
       requests=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 700)), min_size=1,
                         max_size=12),
       capacity=st.integers(1000, 20_000))
def test_property_reservations_are_disjoint_and_match_at_both_ends(block_lengths, requests,
                                                                  capacity):
    kek = generate_kek()
    with tempfile.TemporaryDirectory() as folder:
        master = SqliteKeyStore(Path(folder) / "a.db", kek, kme_id="kme-a",
                                synchronous="NORMAL")
        slave = SqliteKeyStore(Path(folder) / "b.db", kek, kme_id="kme-b",
                               synchronous="NORMAL")
        blocks = [os.urandom(n) for n in block_lengths]
        stored = {}
        for block_id, block in enumerate(blocks):
            for store in (master, slave):
                result = store.append_block(LINK, block_id, split_block(block), capacity)
            stored[block_id] = result.stored_bytes[DIRECTION_B_TO_A]
        # Rebuild the B->A stream as stored (dropped halves are holes).
        stream: dict[int, int] = {}
        position = 0
        for block_id, block in enumerate(blocks):
            half = split_block(block)[DIRECTION_B_TO_A]
            if stored[block_id]:
                stream.update((position + i, byte) for i, byte in enumerate(half))
            position += len(half)
        taken: set[int] = set()
        for number, length in requests:
            try:
                reservations = master.reserve_front(
                    LINK, DIRECTION_B_TO_A, key_ids=_ids(number), length_bytes=length,
                    master_sae_id="m1", slave_sae_ids=("s1",))
            except PoolExhaustedError:
                continue
            slave.record_peer_reservations(reservations)
            ids = [r.key_id for r in reservations]
            master_keys = master.take_master_keys("m1", ids)
            assert master_keys == slave.take_slave_keys("s1", "m1", ids)
            for res, key in zip(reservations, master_keys, strict=True):
                span = range(res.byte_offset, res.byte_offset + res.length_bytes)
                assert taken.isdisjoint(span)
                taken.update(span)
                assert key.key == bytes(stream[i] for i in span)
        master.close()
        slave.close()


def test_unreachable_postgres_is_unavailable_not_a_traceback(kek):
    from corridor.kms.store_postgres import PostgresKeyStore

    with pytest.raises(StoreUnavailableError, match="not reachable"):
        PostgresKeyStore("host=127.0.0.1 port=1 dbname=test connect_timeout=1", kek,
                         kme_id="kme-a", timeout_s=1.0)
    with pytest.raises(ParameterError, match="schema"):
        PostgresKeyStore(POSTGRES_DSN, kek, kme_id="kme-a", schema="Bad-Name")


def _cut(store: KeyStore, count: int, length: int,
         slaves: tuple[str, ...] = ("s1",)) -> list[tuple[Reservation, bytes]]:
    return store.cut_front(LINK, AB, key_ids=_ids(count), length_bytes=length,
                           master_sae_id="m1", slave_sae_ids=slaves)


def test_cut_front_keeps_no_rows_and_never_moves_back(make_store):
    blocks = [os.urandom(6_000)]
    stream = _stream(blocks, AB)
    master = make_store("kme-a")
    _feed(master, blocks)
    first = _cut(master, 3, 100)
    assert [res.byte_offset for res, _ in first] == [0, 100, 200]
    assert [key for _, key in first] == [stream[o:o + 100] for o in (0, 100, 200)]
    # Nothing at rest: no master row to deliver, discard or leak; the bytes left the pool.
    assert master.count_keys() == 0 and master.pending_reservations() == []
    state = master.pool_state(LINK, AB)
    assert (state.reserve_offset, state.available_bytes) == (300, 3_000 - 300)
    with pytest.raises(PoolExhaustedError):
        _cut(master, 1, 3_000)  # nothing changed by a refusal
    assert master.pool_state(LINK, AB) == state
    (after,) = _cut(master, 1, 100)
    assert after[0].byte_offset == 300


def test_cut_front_survives_a_reopen_as_burned_bytes(make_store):
    blocks = [os.urandom(4_000)]
    master = make_store("kme-a", name="a")
    _feed(master, blocks)
    _cut(master, 2, 50)  # "crash" before the announcement: the keys were only in memory
    master.close()
    again = make_store("kme-a", name="a")
    assert again.pending_reservations() == [] and again.count_keys() == 0
    ((res, key),) = _cut(again, 1, 50)
    assert res.byte_offset == 100 and key == _stream(blocks, AB)[100:150]


def _run_count(store: KeyStore) -> int:
    with store._transaction() as cur:  # type: ignore[attr-defined]
        return int(cur.rows("SELECT COUNT(*) FROM kms_run")[0][0])


def test_slave_keeps_one_record_per_announced_batch_with_per_key_delivery(make_store):
    blocks = [os.urandom(20_000)]
    stream = _stream(blocks, AB)
    master, slave = make_store("kme-a"), make_store("kme-b")
    _feed(master, blocks)
    _feed(slave, blocks)
    batch = _cut(master, 6, 32, slaves=("s1", "s2"))
    other = _cut(master, 2, 16)  # contiguous, other size and SAEs: a record of its own
    slave.record_peer_reservations([res for res, _ in batch + other])
    assert _run_count(slave) == 2 and slave.count_keys(ROLE_SLAVE) == 8
    ids = [res.key_id for res, _ in batch]
    # A subset, in any order: exactly once per key and recipient.
    got = slave.take_slave_keys("s1", "m1", [ids[4], ids[1]])
    assert [k.key for k in got] == [key for _, key in (batch[4], batch[1])]
    with pytest.raises(KeyRequestError):
        slave.take_slave_keys("s1", "m1", [ids[1], ids[2]])  # all or nothing
    rest = slave.take_slave_keys("s1", "m1", [ids[0], ids[2], ids[3], ids[5]])
    assert [k.key for k in rest] == [batch[i][1] for i in (0, 2, 3, 5)]
    assert slave.count_keys(ROLE_SLAVE) == 8 and _run_count(slave) == 2  # s2 still owed
    with pytest.raises(UnauthorizedError):
        slave.take_slave_keys("s3", "m1", ids[:1])
    assert [k.key for k in slave.take_slave_keys("s2", "m1", ids)] == \
        [key for _, key in batch]
    assert _run_count(slave) == 1 and slave.count_keys(ROLE_SLAVE) == 2
    assert slave.discard_keys([other[0][0].key_id]) == 1
    ((key_id, key),) = [(k.key_id, k.key) for k in
                        slave.take_slave_keys("s1", "m1", [other[1][0].key_id])]
    assert key == stream[other[1][0].byte_offset:other[1][0].byte_offset + 16]
    # Every key delivered to every party: the record is gone (secure_delete zeroes it).
    assert _run_count(slave) == 0 and slave.count_keys() == 0
    assert key_id == other[1][0].key_id


def test_a_key_row_edited_to_name_another_sae_fails_authentication(make_store):
    blocks = [os.urandom(4_000)]
    master, slave = make_store("kme-a"), make_store("kme-b")
    _feed(master, blocks)
    _feed(slave, blocks)
    batch = _cut(master, 2, 32)
    slave.record_peer_reservations([res for res, _ in batch])
    with slave._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_key SET slave_sae_ids = 's9', recipients = 's9' WHERE key_id = ?",
                (batch[0][0].key_id,))
        # and one row pointed at its neighbour's bytes
        cur.run("UPDATE kms_key SET byte_offset = byte_offset - 32 WHERE key_id = ?",
                (batch[1][0].key_id,))
    with pytest.raises(AtRestDecryptionError):
        slave.take_slave_keys("s9", "m1", [batch[0][0].key_id])
    with pytest.raises(AtRestDecryptionError):
        slave.take_slave_keys("s1", "m1", [batch[1][0].key_id])


def test_concurrent_cuts_share_one_transaction_and_fail_alone(make_store):
    blocks = [os.urandom(8_000)]
    stream = _stream(blocks, AB)
    store = make_store("kme-a")
    _feed(store, blocks)
    original = store._transaction  # type: ignore[attr-defined]
    transactions = []
    release, entered = threading.Event(), threading.Event()

    @contextlib.contextmanager
    def gated(durable: bool = True):
        transactions.append(durable)
        if len(transactions) == 1:  # hold the first one until the others have queued
            entered.set()
            assert release.wait(30)
        with original(durable) as cur:
            yield cur

    store._transaction = gated  # type: ignore[attr-defined]
    requests = [(1, 32), *[(2, 32)] * 5, (1, 50_000)]  # the last cannot be served
    results: dict[int, object] = {}

    def call(index: int) -> None:
        try:
            results[index] = _cut(store, *requests[index])
        except PoolExhaustedError as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    assert entered.wait(30)
    for thread in threads[1:]:
        thread.start()
    for _ in range(30_000):
        if len(store._cut_queue) == len(requests) - 1:  # type: ignore[attr-defined]
            break
        threading.Event().wait(0.001)
    release.set()
    for thread in threads:
        thread.join(30)
    assert len(transactions) == 2  # the six queued cuts shared the second transaction
    assert isinstance(results[6], PoolExhaustedError)
    cuts = [item for i in range(6) for item in results[i]]  # type: ignore[attr-defined]
    offsets = sorted(res.byte_offset for res, _ in cuts)
    assert offsets == list(range(0, 11 * 32, 32))  # disjoint, nothing skipped
    assert all(key == stream[res.byte_offset:res.byte_offset + 32] for res, key in cuts)
    assert store.pool_state(LINK, AB).reserve_offset == 11 * 32


_VERSION_2_RUN_TABLE = (
    "CREATE TABLE kms_run (link_id TEXT NOT NULL, direction TEXT NOT NULL, run_start {bigint} "
    "NOT NULL, key_bytes INTEGER NOT NULL, master_sae_id TEXT NOT NULL, slave_sae_ids TEXT "
    "NOT NULL, key_ids TEXT NOT NULL, remaining INTEGER NOT NULL, data {blob} NOT NULL, "
    "PRIMARY KEY (link_id, direction, run_start))")


@pytest.mark.parametrize("old_version", ["1", "2"])
def test_an_older_store_is_upgraded_and_a_newer_one_refused(make_store, old_version):
    store = make_store("kme-a", name="v")
    with store._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_meta SET value = ? WHERE name = 'schema_version'",
                (old_version.encode(),))
        cur.run("DROP TABLE kms_run")  # what a version 1 store lacks
        if old_version == "2":  # the table without the columns of key-ID runs
            cur.run(_VERSION_2_RUN_TABLE.format(**store._ddl_types))  # type: ignore[attr-defined]
    store.close()
    again = make_store("kme-a", name="v")
    _feed(again, [os.urandom(2_000)])
    slave_side = [Reservation(str(uuid.uuid4()), LINK, AB, 0, 32, "m1", ("s1",))]
    assert again.record_peer_reservations(slave_side) == slave_side  # kms_run exists
    run = [Reservation(key_id, LINK, AB, 32 * (1 + i), 32, "m1", ("s1",))
           for i, key_id in enumerate(new_key_ids(3))]
    assert again.record_peer_reservations(run) == run  # and has the columns of ID runs
    assert again.count_keys(ROLE_SLAVE) == 4
    with again._transaction() as cur:  # type: ignore[attr-defined]
        assert bytes(cur.rows("SELECT value FROM kms_meta WHERE name = 'schema_version'")
                     [0][0]) == b"3"
        cur.run("UPDATE kms_meta SET value = ? WHERE name = 'schema_version'", (b"9",))
    again.close()
    with pytest.raises(ParameterError, match="schema_version"):
        make_store("kme-a", name="v")


# -- grouping of reservations: the column-wise fast paths against the plain loops ----

def _runs_by_loop(reservations: list[Reservation]) -> list[list[Reservation]]:
    runs: list[list[Reservation]] = []
    pool, end = None, -1
    for res in sorted(reservations, key=lambda r: (r.link_id, r.direction, r.byte_offset)):
        if res.byte_offset == end and (res.link_id, res.direction) == pool:
            runs[-1].append(res)
        else:
            runs.append([res])
            pool = (res.link_id, res.direction)
        end = res.byte_offset + res.length_bytes
    return runs


def _groups_by_loop(run: list[Reservation]) -> list[list[Reservation]]:
    groups: list[list[Reservation]] = []
    shared = None
    for res in run:
        fields = (res.length_bytes, res.master_sae_id, tuple(res.slave_sae_ids))
        if fields == shared:
            groups[-1].append(res)
        else:
            groups.append([res])
            shared = fields
    return groups


@st.composite
def _reservation_lists(draw: st.DrawFn) -> list[Reservation]:
    """Mostly one delivery (one pool, contiguous, in order), sometimes disturbed: a
    second pool, a gap, a swap, another size or SAE list, a list of SAEs."""
    count = draw(st.integers(0, 12))
    start = draw(st.integers(0, 1000))
    length = draw(st.sampled_from([16, 32]))
    items = [Reservation(f"k{i}", "link-ab", DIRECTION_A_TO_B, start + i * length, length,
                         "a1", ("b1",)) for i in range(count)]
    for _ in range(draw(st.integers(0, 2))):
        if not items:
            break
        i = draw(st.integers(0, len(items) - 1))
        change = draw(st.sampled_from(["pool", "gap", "swap", "size", "saes", "list", "zero"]))
        res = items[i]
        if change == "pool":
            items[i] = res._replace(direction=DIRECTION_B_TO_A)
        elif change == "gap":
            items[i] = res._replace(byte_offset=res.byte_offset + 3)
        elif change == "swap":
            j = draw(st.integers(0, len(items) - 1))
            items[i], items[j] = items[j], items[i]
        elif change == "size":
            items[i] = res._replace(length_bytes=res.length_bytes // 2)
        elif change == "saes":
            items[i] = res._replace(slave_sae_ids=("b1", "b2"))
        elif change == "list":
            items[i] = res._replace(slave_sae_ids=["b1"])
        else:
            items[i] = res._replace(length_bytes=0)
    return items


@settings(max_examples=400)
@given(_reservation_lists())
def test_runs_and_groups_are_those_of_the_plain_loops(reservations: list[Reservation]
                                                      ) -> None:
    runs = _contiguous_runs(reservations)
    assert runs == _runs_by_loop(reservations)
    for run in runs:
        assert _uniform_groups(run) == _groups_by_loop(run)


_A_UUID = "0f1e2d3c-4b5a-8978-9685-a4b3c2d1e0f9"


@st.composite
def _key_id_lists(draw: st.DrawFn) -> list[str]:
    """Canonical UUIDs (either case), some spoiled in one character or in length."""
    values = []
    for _ in range(draw(st.integers(0, 6))):
        value = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
        if draw(st.booleans()):
            value = value.upper()
        spoil = draw(st.sampled_from(["none", "none", "char", "cut", "add", "newline",
                                      "move"]))
        at = draw(st.integers(0, 35))
        if spoil == "move":   # a hyphen swapped with the digit after it
            dash = draw(st.sampled_from([8, 13, 18, 23]))
            value = value[:dash] + value[dash + 1] + "-" + value[dash + 2:]
        elif spoil == "char":
            value = value[:at] + draw(st.sampled_from(["-", "g", "G", " ", "\u0661", "0", "\n"])) \
                + value[at + 1:]
        elif spoil == "cut":
            value = value[:at] + value[at + 1:]
        elif spoil == "add":
            value = value[:at] + "a" + value[at:]
        elif spoil == "newline":
            value += "\n"
        values.append(value)
    return values


@settings(max_examples=400)
@given(_key_id_lists())
def test_all_uuids_agrees_with_is_uuid_on_every_value(values: list[str]) -> None:
    assert all_uuids(values) == (bool(values) and all(is_uuid(v) for v in values))


def test_is_uuid_takes_the_canonical_form_only() -> None:
    assert is_uuid(_A_UUID) and is_uuid(_A_UUID.upper())
    for bad in (_A_UUID + "\n", " " + _A_UUID, _A_UUID[:-1], _A_UUID.replace("-", ""),
                "{" + _A_UUID + "}", _A_UUID[:8] + "_" + _A_UUID[9:], 5, None):
        assert not is_uuid(bad), bad


# -- records without key rows: a run of key IDs owed to one slave SAE ------------------

def _announced_run(master: KeyStore, slave: KeyStore, count: int, length: int,
                   slaves: tuple[str, ...] = ("s1",)) -> list[tuple[Reservation, bytes]]:
    cut = master.cut_front(LINK, AB, key_ids=new_key_ids(count), length_bytes=length,
                           master_sae_id="m1", slave_sae_ids=slaves)
    reservations = [res for res, _ in cut]
    assert slave.record_peer_reservations(reservations) == reservations
    return cut


def _fed_pair(make_store: StoreFactory, size: int) -> tuple[KeyStore, KeyStore]:
    """A master's and a slave's store fed the same block of ``size`` bytes."""
    blocks = [os.urandom(size)]
    master, slave = make_store("kme-a"), make_store("kme-b")
    _feed(master, blocks)
    _feed(slave, blocks)
    return master, slave


def _key_rows(store: KeyStore) -> int:
    with store._transaction() as cur:  # type: ignore[attr-defined]
        return int(cur.rows("SELECT COUNT(*) FROM kms_key")[0][0])


def test_a_run_of_key_ids_for_one_sae_is_held_without_key_rows(make_store):
    master, slave = _fed_pair(make_store, 20_000)
    batch = _announced_run(master, slave, 10, 32)
    ids = [res.key_id for res, _ in batch]
    assert _key_rows(slave) == 0 and _run_count(slave) == 1
    assert slave.count_keys() == slave.count_keys(ROLE_SLAVE) == 10
    assert slave.count_keys(ROLE_MASTER) == 0
    assert slave.slave_key_links(ids[:3]) == {k: (LINK, AB) for k in ids[:3]}
    assert slave.slave_key_masters(ids[:2]) == {k: "m1" for k in ids[:2]}
    got = slave.take_slave_keys("s1", "m1", [ids[7], ids[2]])
    assert [(k.key_id, k.key) for k in got] == [(ids[i], batch[i][1]) for i in (7, 2)]
    # Delivered once: asking again, alone or with an owed key, gets nothing.
    for request in ([ids[2]], [ids[0], ids[7]]):
        with pytest.raises(KeyRequestError):
            slave.take_slave_keys("s1", "m1", request)
    with pytest.raises(UnauthorizedError):
        slave.take_slave_keys("s2", "m1", [ids[0]])
    with pytest.raises(KeyRequestError):  # another master's SAE: not found, as for rows
        slave.take_slave_keys("s1", "m2", [ids[0]])
    with pytest.raises(KeyRequestError):  # an ID next to the run, one past its end
        slave.take_slave_keys("s1", "m1", [ids[-1][:28] + f"{int(ids[-1][28:], 16) + 1:08x}"])
    assert slave.count_keys() == 8
    assert slave.undelivered_slave_keys("s1", ids) == set(ids) - {ids[2], ids[7]}
    assert slave.undelivered_slave_keys("s2", ids) == set()
    assert set(slave.slave_key_links(ids)) == set(ids) - {ids[2], ids[7]}
    assert slave.discard_keys([ids[0], ids[2]]) == 1  # ids[2] was delivered already
    rest = [ids[i] for i in (1, 3, 4, 5, 6, 8, 9)]
    assert [k.key for k in slave.take_slave_keys("s1", "m1", rest)] == \
        [batch[i][1] for i in (1, 3, 4, 5, 6, 8, 9)]
    # The last key gone, the record goes too.
    assert _run_count(slave) == 0 and slave.count_keys() == 0


def test_a_repeated_announcement_of_a_run_changes_nothing(make_store):
    master, slave = _fed_pair(make_store, 8_000)
    batch = _announced_run(master, slave, 4, 32)
    reservations = [res for res, _ in batch]
    slave.take_slave_keys("s1", "m1", [reservations[1].key_id])
    # A retry of the same announcement: held already, delivered or not; nothing re-owed.
    assert slave.record_peer_reservations(reservations) == []
    assert slave.count_keys() == 3 and _run_count(slave) == 1
    with pytest.raises(KeyRequestError):
        slave.take_slave_keys("s1", "m1", [reservations[1].key_id])
    # The same ID announced with other fields is refused, nothing recorded.
    moved = reservations[0]._replace(byte_offset=reservations[0].byte_offset + 4_000)
    other_sae = reservations[2]._replace(slave_sae_ids=("s9",))
    for bad in (moved, other_sae):
        with pytest.raises(InvalidReservationError, match="different fields"):
            slave.record_peer_reservations([bad])
    assert slave.count_keys() == 3
    # A key row with an ID inside the run is refused as well.
    with pytest.raises(InvalidReservationError, match="different fields"):
        slave.record_peer_reservations([moved._replace(slave_sae_ids=("s1", "s2"))])


def test_a_run_for_several_saes_or_of_scattered_ids_keeps_key_rows(make_store):
    master, slave = _fed_pair(make_store, 8_000)
    _announced_run(master, slave, 3, 32, slaves=("s1", "s2"))
    assert _key_rows(slave) == 3
    ids = new_key_ids(4)
    scattered = master.cut_front(LINK, AB, key_ids=[ids[0], ids[2], ids[1], ids[3]],
                                 length_bytes=32, master_sae_id="m1", slave_sae_ids=("s1",))
    slave.record_peer_reservations([res for res, _ in scattered])
    assert _key_rows(slave) == 7 and slave.count_keys() == 7


def test_a_run_record_edited_to_name_other_keys_or_saes_fails_authentication(make_store):
    master, slave = _fed_pair(make_store, 8_000)
    ids = [res.key_id for res, _ in _announced_run(master, slave, 4, 32)]
    with slave._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_run SET id_first = id_first + 1")  # every ID shifted by one
    with pytest.raises(AtRestDecryptionError):
        slave.take_slave_keys("s1", "m1", [ids[1]])
    with slave._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_run SET id_first = id_first - 1, slave_sae_ids = 's9'")
    with pytest.raises(AtRestDecryptionError):
        slave.take_slave_keys("s9", "m1", [ids[1]])
    assert slave.count_keys() == 4  # nothing was delivered


def test_undelivered_run_keys_expire_whole_records_oldest_first(make_store):
    master, slave = _fed_pair(make_store, 8_000)
    old = [res.key_id for res, _ in _announced_run(master, slave, 5, 32)]
    young = [res.key_id for res, _ in _announced_run(master, slave, 3, 32)]
    slave.take_slave_keys("s1", "m1", [old[3]])
    with slave._transaction() as cur:  # type: ignore[attr-defined]
        cur.run("UPDATE kms_run SET created_at = created_at - 3600 WHERE id_head = ?",
                (old[0][:28],))
    assert slave.expire_keys(ROLE_MASTER, 60) == []
    assert slave.expire_keys(ROLE_SLAVE, 60) == sorted(set(old) - {old[3]})
    assert slave.expire_keys(ROLE_SLAVE, 60) == []
    assert _run_count(slave) == 1 and slave.count_keys() == 3
    assert sorted(slave.expire_keys(ROLE_SLAVE, 0)) == sorted(young)
    assert _run_count(slave) == 0
