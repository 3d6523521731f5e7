"""Key sources and the LinkFeeder: both KMEs get the same blocks under the same IDs,
both or neither keeps a half, a quarantined link stores nothing, IDs continue across
restarts, and a crash between the two writes of a block is repaired without mismatch."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.kms.alarms import LinkMonitor
from corridor.kms.config import DIRECTIONS, KmeConfig, SaeDirectory
from corridor.kms.interface import KeyRequestError, KeysUnavailableError
from corridor.kms.manager import KeyManager, StorageFailureError, connect_local
from corridor.kms.operator import feeder_state
from corridor.kms.sources.base import SourceBlock
from corridor.kms.sources.feeder import LinkFeeder
from corridor.kms.sources.recorded import RecordedKeyFileSource
from corridor.kms.sources.simulated import SimulatedLinkSource
from corridor.kms.store_sqlite import SqliteKeyStore
from corridor.link.attacks import InterceptResend
from corridor.link.params import preset
from corridor.randomness import RandomSource

LINK = "link-ab"
SAES = {"sae-a": "kme-a", "sae-b": "kme-b"}
# Standard-basis variant of modern-snspd at 5 km: a 1e7-pulse block holds a positive
# finite key (the same set-up as tests/distill/test_pipeline.py, without dead time).
PARAMS = preset("modern-snspd").override({
    "dead_time_s": 0.0, "z_basis_probability": 0.5, "signal_probability": 0.5,
    "decoy_probability": 0.3, "vacuum_probability": 0.2}).with_length(5.0)


@dataclass
class Events:
    """An EventSink that keeps events (public fields only) for assertions."""

    seen: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def emit(self, event: str, **fields: object) -> None:
        self.seen.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def _managers(root: Path, *, max_key_count_a: int = 100_000, max_key_count_b: int = 100_000,
              kek: bytes | None = None) -> tuple[KeyManager, KeyManager]:
    directory = SaeDirectory(SAES, {LINK: ("kme-a", "kme-b")})
    kek = kek if kek is not None else os.urandom(32)
    a = KeyManager(KmeConfig(kme_id="kme-a", max_key_count=max_key_count_a), directory,
                   SqliteKeyStore(root / "a.sqlite", kek, kme_id="kme-a"))
    b = KeyManager(KmeConfig(kme_id="kme-b", max_key_count=max_key_count_b), directory,
                   SqliteKeyStore(root / "b.sqlite", kek, kme_id="kme-b"))
    connect_local(a, b)
    return a, b


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[tuple[KeyManager, KeyManager]]:
    a, b = _managers(tmp_path)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """A recorded link: identical alice.bin and bob.bin of 64 blocks of 512 bytes."""
    directory = tmp_path / "keys"
    directory.mkdir()
    data = os.urandom(64 * 512)
    (directory / "alice.bin").write_bytes(data)
    (directory / "bob.bin").write_bytes(data)
    return directory


def _monitor(events: Events | None = None) -> LinkMonitor:
    return LinkMonitor(events if events is not None else Events())


def _stream_ends(manager: KeyManager) -> dict[str, int]:
    return {d: manager.pool_state(LINK, d).stream_end_offset for d in DIRECTIONS}


def _exchange(a: KeyManager, b: KeyManager, number: int) -> None:
    """Keys both ways: what the master gets equals what the slave gets by ID."""
    for master, slave, m_sae, s_sae in ((a, b, "sae-a", "sae-b"), (b, a, "sae-b", "sae-a")):
        keys = master.enc_keys(m_sae, s_sae, number=number)
        again = slave.dec_keys(s_sae, m_sae, [k.key_id for k in keys])
        assert [k.key for k in keys] == [k.key for k in again]


class ListSource:
    """A KeySource over a fixed list of blocks (for the monitor and capacity rules)."""

    def __init__(self, blocks: list[SourceBlock]) -> None:
        self.link_id = LINK
        self.blocks = blocks
        self.first: int | None = None

    def start(self, first_block_id: int) -> None:
        self.first = first_block_id

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        return self.blocks.pop(0) if self.blocks else None

    @property
    def finished(self) -> bool:
        return not self.blocks

    def close(self) -> None:
        self.blocks = []


def _key_block(block_id: int, length: int = 1024, qber: float = 0.01) -> SourceBlock:
    key = os.urandom(length)
    return SourceBlock(link_id=LINK, block_id=block_id, alice_key=key, bob_key=key, qber=qber)


# -- recorded key files -----------------------------------------------------------------

def test_recorded_source_cuts_blocks_by_id_and_resumes(key_dir: Path) -> None:
    data = (key_dir / "alice.bin").read_bytes()
    source = RecordedKeyFileSource.from_directory(LINK, key_dir, 512)
    assert source.total_blocks == 64
    source.start(62)
    first, second = source.next_block(1.0), source.next_block(1.0)
    assert first is not None and second is not None
    assert (first.block_id, second.block_id) == (62, 63)
    assert first.alice_key == first.bob_key == data[62 * 512:63 * 512]
    assert source.next_block(0.01) is None and source.finished
    source.close()
    alice_only = RecordedKeyFileSource.from_directory(LINK, key_dir, 512, sides=("alice",))
    alice_only.start(5)
    block = alice_only.next_block(1.0)
    assert block is not None and block.bob_key == b"" and block.alice_key == data[2560:3072]
    alice_only.close()


def test_recorded_source_refuses_bad_input_by_name(key_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="block_bytes"):
        RecordedKeyFileSource.from_directory(LINK, key_dir, 511)
    with pytest.raises(ParameterError, match="alice_file"):
        RecordedKeyFileSource(LINK, 512, alice_file=tmp_path / "missing.bin")
    (key_dir / "bob.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ParameterError, match="same length"):
        RecordedKeyFileSource.from_directory(LINK, key_dir, 512)
    with pytest.raises(ParameterError, match="at least one"):
        RecordedKeyFileSource(LINK, 512)


def test_source_block_repr_shows_no_key() -> None:
    block = _key_block(3, 64)
    assert block.alice_key.hex() not in repr(block)
    assert repr(block.alice_key)[2:20] not in repr(block)


# -- the feeder --------------------------------------------------------------------------

def test_feeder_stores_the_same_blocks_at_both_kmes(managers, key_dir: Path) -> None:
    a, b = managers
    events = Events()
    feeder = LinkFeeder(RecordedKeyFileSource.from_directory(LINK, key_dir, 512), a, b,
                        _monitor(events), events, poll_s=0.05)
    feeder.start()
    assert feeder.wait(30.0)
    feeder.stop()
    assert feeder.stats.blocks_stored == 64 and feeder.stats.stopped_reason == "source_finished"
    assert a.store.last_block_id(LINK) == b.store.last_block_id(LINK) == 63
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 64 * 256, "B->A": 64 * 256}
    data = (key_dir / "alice.bin").read_bytes()
    # The first key of A->B is the first 32 bytes of block 0's first half.
    keys = a.enc_keys("sae-a", "sae-b", number=2)
    assert keys[0].key == data[:32] and keys[1].key == data[32:64]
    _exchange(a, b, 5)


def test_block_ids_continue_across_restarts(tmp_path: Path, key_dir: Path) -> None:
    kek = os.urandom(32)
    a, b = _managers(tmp_path, kek=kek)
    source = RecordedKeyFileSource.from_directory(LINK, key_dir, 512)
    feeder = LinkFeeder(source, a, b, _monitor())
    feeder.align()
    source.start(0)
    for _ in range(10):
        block = source.next_block(1.0)
        assert block is not None
        feeder.feed(block)
    a.close()
    b.close()
    a, b = _managers(tmp_path, kek=kek)
    restarted = LinkFeeder(RecordedKeyFileSource.from_directory(LINK, key_dir, 512), a, b,
                           _monitor())
    assert restarted.align() == 10
    restarted.start()
    assert restarted.wait(30.0)
    restarted.stop()
    assert restarted.stats.blocks_stored == 54
    assert a.store.last_block_id(LINK) == b.store.last_block_id(LINK) == 63
    _exchange(a, b, 20)
    a.close()
    b.close()


def test_a_half_that_does_not_fit_at_either_end_is_kept_by_neither(tmp_path: Path) -> None:
    # B's pools hold 40 keys of 32 bytes (1280 bytes), A's 100 000 keys.
    a, b = _managers(tmp_path, max_key_count_b=40)
    events = Events()
    blocks = [_key_block(i, 1024) for i in range(4)]  # 512 bytes per direction each
    feeder = LinkFeeder(ListSource(blocks), a, b, _monitor(), events, full_backoff_s=0)
    feeder.align()
    outcomes = [feeder.feed(block) for block in list(blocks)]
    assert outcomes == ["stored", "stored", "dropped_full", "dropped_full"]
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1024, "B->A": 1024}
    assert a.pool_state(LINK, "A->B").available_bytes == 1024
    assert events.names().count("link_feed_dropped") == 4
    # A block dropped whole still uses its ID: a restart continues after it (block 3 was
    # distilled again, with other bits, after each restart while the pools stayed full).
    assert LinkFeeder(ListSource([]), a, b, _monitor()).align() == 4
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1024, "B->A": 1024}
    # Drain direction A->B only: the next block is stored in A->B and dropped from B->A
    # at both ends.
    a.enc_keys("sae-a", "sae-b", number=32)
    outcome = feeder.feed(_key_block(4, 1024))
    assert outcome == "stored_partly"
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1536, "B->A": 1024}
    _exchange(a, b, 4)
    a.close()
    b.close()


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_pools_pause_the_feed_until_there_is_room_and_read_pool_full(
        tmp_path: Path) -> None:
    # B's pools hold 40 keys of 32 bytes (1280 bytes): two blocks of 512 bytes per
    # direction fit, the third is dropped whole and the feed pauses.
    a, b = _managers(tmp_path, max_key_count_b=40)
    events = Events()
    source = ListSource([_key_block(i, 1024) for i in range(20)])
    feeder = LinkFeeder(source, a, b, _monitor(), events, poll_s=0.02)
    feeder.start()
    try:
        _wait_for(lambda: feeder.stats.paused_full)
        left = len(source.blocks)
        time.sleep(0.3)
        # Paused: no block taken (the old feeder took one every full_backoff_s), the
        # link reads pool_full even long after its last block, never dead.
        assert len(source.blocks) == left == 17
        assert feeder.stats.as_dict()["paused_full"] is True
        last = feeder.stats.last_block_at_monotonic_s
        state, age_s = feeder_state(feeder, False, now_s=last + 600.0)
        assert state == "pool_full" and age_s == pytest.approx(600.0)
        assert events.names().count("link_feed_paused") == 1
        assert "link_feed_resumed" not in events.names()
        # An SAE fetches 16 keys (512 bytes) of A->B: room for one half, the feed resumes,
        # stores that half, drops the next block whole and pauses again.
        a.enc_keys("sae-a", "sae-b", number=16)
        _wait_for(lambda: feeder.stats.pauses_full == 2 and feeder.stats.paused_full)
        assert len(source.blocks) == 15
        assert events.names().count("link_feed_resumed") == 1
        assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1536, "B->A": 1024}
    finally:
        feeder.stop(5.0)
    assert not feeder.stats.paused_full
    a.close()
    b.close()


def test_one_sided_feeders_keep_offsets_aligned_when_capacities_differ(
        tmp_path: Path, key_dir: Path) -> None:
    """Two sites, each feeding only its own KME from its own file (corridor kme serve):
    B's pools are smaller, so B drops halves A keeps; offsets still agree and no key is
    ever delivered with different bytes at the two ends."""
    a, b = _managers(tmp_path, max_key_count_b=40)
    feeders = [LinkFeeder(RecordedKeyFileSource.from_directory(LINK, key_dir, 512,
                                                               sides=(side,)),
                          a if side == "alice" else None, b if side == "bob" else None,
                          _monitor(), poll_s=0.05, full_backoff_s=0)
               for side in ("alice", "bob")]
    for feeder in feeders:
        feeder.start()
    for feeder in feeders:
        assert feeder.wait(30.0)
        feeder.stop()
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 64 * 256, "B->A": 64 * 256}
    assert b.pool_state(LINK, "A->B").dropped_bytes > 0 == a.pool_state(LINK, "A->B").dropped_bytes
    delivered, refused = 0, 0
    for _ in range(60):
        try:
            keys = a.enc_keys("sae-a", "sae-b", number=4)
        except KeysUnavailableError:
            refused += 1
            continue
        delivered += 1
        assert [k.key for k in b.dec_keys("sae-b", "sae-a", [k.key_id for k in keys])] == \
            [k.key for k in keys]
    assert delivered and refused  # B's 40 keys, then the bytes only A holds: fail closed
    a.close()
    b.close()


def test_quarantined_link_stores_nothing_until_it_recovers(managers) -> None:
    a, b = managers
    events = Events()
    aborted = SourceBlock(link_id=LINK, block_id=1, alice_key=b"", bob_key=b"",
                          aborted_reason="qber_above_threshold", qber=0.2)
    blocks = [_key_block(0), aborted, _key_block(2), _key_block(3), _key_block(4),
              _key_block(5)]
    feeder = LinkFeeder(ListSource(blocks), a, b, _monitor(events))
    outcomes = [feeder.feed(block) for block in list(blocks)]
    # Recovery after 3 good blocks (alarms.py); the block completing the streak is stored.
    assert outcomes == ["stored", "aborted", "quarantined", "quarantined", "stored", "stored"]
    assert {"link_quarantined", "link_recovered"} <= set(events.names())
    assert a.store.last_block_id(LINK) == b.store.last_block_id(LINK) == 5
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1536, "B->A": 1536}


def test_block_ids_of_discarded_blocks_are_never_reused(managers) -> None:
    """A restart continues after the last block seen, stored or not: an aborted,
    quarantined or empty block's ID is never given to another block."""
    a, b = managers
    feeder = LinkFeeder(ListSource([]), a, b, _monitor())
    feeder.feed(_key_block(0))
    assert feeder.feed(SourceBlock(link_id=LINK, block_id=1, alice_key=b"", bob_key=b"",
                                   aborted_reason="qber_above_threshold",
                                   qber=0.2)) == "aborted"
    assert feeder.feed(_key_block(2)) == "quarantined"
    assert feeder.feed(SourceBlock(link_id=LINK, block_id=3, alice_key=b"",
                                   bob_key=b"")) == "empty"
    ends = _stream_ends(a)
    restarted = LinkFeeder(ListSource([]), a, b, _monitor())
    assert restarted.align() == 4
    assert _stream_ends(a) == _stream_ends(b) == ends  # no stream position was used


def test_crash_between_the_two_writes_is_realigned_without_mismatch(managers) -> None:
    a, b = managers
    feeder = LinkFeeder(ListSource([]), a, b, _monitor())
    for block_id in range(3):
        feeder.feed(_key_block(block_id, 1024))
    # A crash after A stored block 3 and before B did.
    orphan = os.urandom(1000)
    a.ingest_block(LINK, 3, orphan)
    assert _stream_ends(a) != _stream_ends(b)
    events = Events()
    restarted = LinkFeeder(ListSource([]), a, b, _monitor(), events)
    assert restarted.align() == 4
    assert _stream_ends(a) == _stream_ends(b)
    assert events.names().count("link_streams_aligned") == 2
    for block_id in (4, 5):
        restarted.feed(_key_block(block_id, 1024))
    # Pool A->B at A: 3 blocks, the orphan half, 2 blocks. Keys cut from before the orphan
    # agree; a reservation over the orphan's bytes is refused by B and burned (fail closed);
    # keys after it agree again. No key is ever delivered with different bytes.
    delivered: dict[str, bytes] = {}
    refused = 0
    for _ in range(70):
        try:
            keys = a.enc_keys("sae-a", "sae-b", number=1)
        except KeysUnavailableError:
            refused += 1
            continue
        delivered[keys[0].key_id] = keys[0].key
    assert refused >= 1
    for key_id, key in delivered.items():
        assert b.dec_keys("sae-b", "sae-a", [key_id])[0].key == key
    assert not any(hashlib.sha256(k).digest() in {hashlib.sha256(orphan[i:i + 32]).digest()
                                                  for i in range(0, 500, 32)}
                   for k in delivered.values())
    _exchange(a, b, 2)


def test_feeder_refuses_the_same_kme_at_both_ends(managers) -> None:
    a, _ = managers
    with pytest.raises(ParameterError, match="bob_side"):
        LinkFeeder(ListSource([]), a, a, _monitor())
    with pytest.raises(ParameterError, match="at least one"):
        LinkFeeder(ListSource([]), None, None, _monitor())


# -- the simulated link -----------------------------------------------------------------

def test_simulated_link_feeds_identical_keys(managers) -> None:
    a, b = managers
    events = Events()
    source = SimulatedLinkSource(PARAMS, link_id=LINK, block_pulses=10_000_000,
                                 rng=RandomSource.seeded(7), max_blocks=2)
    feeder = LinkFeeder(source, a, b, _monitor(events), events, poll_s=0.1)
    feeder.start()
    assert feeder.wait(120.0)
    feeder.stop()
    assert feeder.stats.blocks_stored == 2, feeder.stats.as_dict()
    # QBER of the standard preset at e_d = 1 %: the corrected-error rate sits near 1 %.
    assert feeder.stats.last_qber is not None and 0.005 < feeder.stats.last_qber < 0.02
    assert feeder.stats.last_key_rate_bits_per_second is not None
    blocks = [f for name, f in events.seen if name == "link_block"]
    assert [f["outcome"] for f in blocks] == ["accepted", "accepted"]
    _exchange(a, b, 10)


def test_one_site_feeders_stay_aligned_when_their_monitors_disagree(managers) -> None:
    """Split sites: A's monitor is quarantined (say after a restart), B's is not; the
    blocks A refuses still use their stream positions, so A's and B's offsets agree and
    a key cut at either end is the same key at the other."""
    a, b = managers
    blocks = [_key_block(i) for i in range(3)]
    feeder_a = LinkFeeder(ListSource(blocks), a, None, _monitor())
    feeder_b = LinkFeeder(ListSource(blocks), None, b, _monitor())
    assert feeder_a.monitor.observe_block(LINK, 99, aborted_reason="qber_above_threshold",
                                          qber=0.2, secret_bits=0).quarantined
    # Recovery takes 3 good blocks (alarms.py): A refuses two, stores the third.
    assert [feeder_a.feed(block) for block in blocks] == ["quarantined", "quarantined",
                                                          "stored"]
    assert [feeder_b.feed(block) for block in blocks] == ["stored"] * 3
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 1536, "B->A": 1536}
    assert a.pool_state(LINK, "A->B").available_bytes == 512  # only block 2 kept at A
    # A -> B: A cuts from what it holds (block 2), which B holds too.
    keys = a.enc_keys("sae-a", "sae-b", number=4)
    assert [k.key for k in b.dec_keys("sae-b", "sae-a", [k.key_id for k in keys])] == \
        [k.key for k in keys]
    # B -> A: B's front bytes are A's holes; A refuses them and B fails closed (503),
    # burning them, until it reaches bytes both hold. Never a mismatched key.
    refused = 0
    while True:
        try:
            keys = b.enc_keys("sae-b", "sae-a", number=4)
        except KeysUnavailableError:
            refused += 1
            assert refused <= 1024 // 128
            continue
        break
    assert refused == 1024 // 128
    assert [k.key for k in a.dec_keys("sae-a", "sae-b", [k.key_id for k in keys])] == \
        [k.key for k in keys]


def test_attacked_link_is_quarantined_and_stores_nothing(managers) -> None:
    a, b = managers
    events = Events()
    # Full intercept-resend gives 25 % QBER: every block aborts at estimation.
    source = SimulatedLinkSource(PARAMS, link_id=LINK, block_pulses=2_000_000,
                                 rng=RandomSource.seeded(8), max_blocks=2,
                                 attack=InterceptResend(1.0))
    feeder = LinkFeeder(source, a, b, _monitor(events), events, poll_s=0.1)
    feeder.start()
    assert feeder.wait(120.0)
    feeder.stop()
    assert feeder.stats.blocks_stored == 0
    assert feeder.stats.last_abort_reason == "qber_above_threshold"
    assert "link_quarantined" in events.names()
    assert _stream_ends(a) == _stream_ends(b) == {"A->B": 0, "B->A": 0}
    with pytest.raises(KeysUnavailableError):
        a.enc_keys("sae-a", "sae-b")
    with pytest.raises(KeyRequestError):
        b.dec_keys("sae-b", "sae-a", ["00000000-0000-4000-8000-000000000000"])


def test_block_slots_are_granted_in_order_and_never_over_the_limit() -> None:
    from corridor.kms.sources.simulated import BlockSlots

    slots = BlockSlots(1)
    stop = threading.Event()
    assert slots.acquire(stop)
    order: list[int] = []

    def wait_turn(n: int) -> None:
        assert slots.acquire(stop)
        order.append(n)
        slots.release()

    threads = []
    for n in range(3):
        thread = threading.Thread(target=wait_turn, args=(n,))
        thread.start()
        threads.append(thread)
        time.sleep(0.2)  # each asks after the one before
    assert order == []  # the only slot is held
    slots.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]
    slots.release(5)  # giving back more than was taken never exceeds the limit
    assert slots.acquire(stop)
    stop.set()
    assert not slots.acquire(stop)  # a stop while waiting ends the wait
    with pytest.raises(ParameterError, match="slots"):
        BlockSlots(0)


def test_sources_sharing_one_slot_take_turns_and_give_it_back(managers) -> None:
    from corridor.kms.sources.simulated import BlockSlots

    slots = BlockSlots(1)
    sources = [SimulatedLinkSource(PARAMS, link_id=LINK, block_pulses=2_000_000,
                                   rng=RandomSource.seeded(20 + n), max_blocks=2, slots=slots)
               for n in range(2)]
    for source in sources:
        source.start(0)
    try:
        for source in sources:  # both links get their blocks through the single slot
            for _ in range(2):
                assert source.next_block(120.0) is not None
    finally:
        for source in sources:
            source.close()
    stop = threading.Event()
    assert slots.acquire(stop), "a slot was not given back"


def test_a_link_whose_feeder_waits_gives_the_shared_slot_to_the_others(managers) -> None:
    # One slot for two links; nobody takes the first link's blocks (its feeder paused
    # for full pools). It simulates queue_blocks blocks, finishes them and then waits
    # without a slot: the second link gets all of its blocks through.
    from corridor.kms.sources.simulated import BlockSlots

    slots = BlockSlots(1)
    waiting, served = (SimulatedLinkSource(PARAMS, link_id=LINK, block_pulses=2_000_000,
                                           rng=RandomSource.seeded(40 + n), slots=slots,
                                           queue_blocks=2, max_blocks=max_blocks)
                       for n, max_blocks in ((0, None), (1, 5)))
    waiting.start(0)
    try:
        time.sleep(1.0)   # the waiting link fills what it may hold
        served.start(0)
        for _ in range(5):
            assert served.next_block(120.0) is not None
        # What the waiting link holds is whole: its blocks come out when asked for.
        assert waiting.next_block(120.0) is not None
    finally:
        waiting.close()
        served.close()


def test_a_feed_stopped_by_a_full_volume_stops_quietly_when_the_stop_cannot_be_audited(
        managers, monkeypatch) -> None:
    """The volume that failed the block's write fails the ``link_source_stopped`` entry
    too: the feed stops with the error kept for the operator, no traceback from its
    thread (one escaped from the handler)."""
    a, b = managers

    class FullVolume(Events):
        def emit(self, event: str, **fields: object) -> None:
            if event == "link_source_stopped":
                raise OSError(28, "No space left on device")
            super().emit(event, **fields)

    def failing_ingest(*args: object, **kwargs: object) -> int:
        raise StorageFailureError("the key store cannot be written now")

    escaped: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda info: escaped.append(info.exc_value))
    monkeypatch.setattr(b, "ingest_block", failing_ingest)
    feeder = LinkFeeder(ListSource([_key_block(0), _key_block(1)]), a, b, _monitor(),
                        FullVolume())
    feeder.start()
    _wait_for(lambda: not feeder.running)
    assert isinstance(feeder.error, StorageFailureError)
    assert feeder.stats.stopped_reason == "error" and not escaped
