"""Delivery under faults: a full audit volume at each step, and kill -9 at each step.

The promise (corridor.kms.manager, "Write-ahead audit"): after any failure every key is
either still fetchable or recorded as delivered, nothing is delivered twice, a failing
audit or store answers 503 (never a 500) and raises the storage alarm.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corridor.kms.audit import AuditLog, DeliveryJournal, verify_audit_log
from corridor.kms.config import DIRECTION_A_TO_B, KmeConfig
from corridor.kms.crypto import generate_kek
from corridor.kms.interface import FanOutEventSink, KeyRequestError, KeysUnavailableError
from corridor.kms.manager import KeyManager, StorageFailureError, connect_local
from corridor.kms.store import StoreWriteError
from corridor.kms.store_sqlite import SqliteKeyStore
from tests.kms.test_manager import LINK, RecordingSink, directory

REPO = Path(__file__).resolve().parents[2]


class FullDisk:
    """An event sink standing in for an audit log on a volume that fills up: ``emit`` of
    the events in ``failing`` raises ENOSPC until :meth:`heal`; ``entries`` holds what
    was written, as the log would."""

    def __init__(self, *failing: str) -> None:
        self.failing = set(failing)
        self.entries: list[dict[str, Any]] = []

    def heal(self) -> None:
        self.failing.clear()

    def emit(self, event: str, **fields: Any) -> None:
        if event in self.failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.entries.append({"event": event, "seq": len(self.entries) + 1, "fields": fields})


def _pair(tmp_path: Path, disk_a: FullDisk, disk_b: FullDisk
          ) -> tuple[KeyManager, KeyManager, RecordingSink]:
    kek = generate_kek()
    record = RecordingSink()
    a, b = (KeyManager(KmeConfig(kme), directory(),
                       SqliteKeyStore(tmp_path / f"{kme}.db", kek, kme_id=kme),
                       events=FanOutEventSink(disk, record))
            for kme, disk in (("kme-a", disk_a), ("kme-b", disk_b)))
    connect_local(a, b)
    for block_id in range(2):
        block = os.urandom(8192)
        a.ingest_block(LINK, block_id, block)
        b.ingest_block(LINK, block_id, block)
    return a, b, record


def test_full_audit_volume_before_dec_keys_commits_keeps_the_key_fetchable(tmp_path):
    disk_b = FullDisk()
    a, b, record = _pair(tmp_path, FullDisk(), disk_b)
    keys = a.enc_keys("a1", "b1", number=2)
    disk_b.failing.add("keys_delivering")
    with pytest.raises(StorageFailureError, match="audit trail"):
        b.dec_keys("b1", "a1", [k.key_id for k in keys])
    assert b.storage_alarm is not None and "No space left on device" in b.storage_alarm
    assert record.named("storage_alarm_raised")
    disk_b.heal()
    assert b.dec_keys("b1", "a1", [k.key_id for k in keys]) == keys
    assert b.storage_alarm is None and record.named("storage_alarm_cleared")


def test_full_audit_volume_after_dec_keys_commits_still_delivers_and_is_resolved(tmp_path):
    disk_b = FullDisk("keys_delivered")
    a, b, record = _pair(tmp_path, FullDisk(), disk_b)
    keys = a.enc_keys("a1", "b1", number=1)
    assert b.dec_keys("b1", "a1", [keys[0].key_id]) == keys  # handed over: intent on record
    assert b.storage_alarm is not None
    # What the restarted KME finds in its trail: an intent with no outcome, resolved as
    # delivered because the store no longer holds the key.
    journal = DeliveryJournal()
    for entry in disk_b.entries:
        journal.observe(entry)
    (intent,) = journal.unfinished
    assert intent["event"] == "keys_delivering"
    disk_b.heal()
    assert b.resolve_unfinished(journal.unfinished) == 1
    (resolved,) = record.named("delivery_resolved")
    assert resolved["outcome"] == "delivered" and resolved["delivered_key_ids"] == [keys[0].key_id]


def test_full_audit_volume_before_enc_keys_cuts_changes_nothing(tmp_path):
    disk_a = FullDisk("keys_reserving")
    a, b, _ = _pair(tmp_path, disk_a, FullDisk())
    before = a.pool_state(LINK, DIRECTION_A_TO_B).available_bytes
    with pytest.raises(StorageFailureError):
        a.enc_keys("a1", "b1", number=3)
    assert a.pool_state(LINK, DIRECTION_A_TO_B).available_bytes == before
    assert b.store.count_keys() == 0


def test_full_audit_volume_after_the_cut_fails_closed_and_announces_nothing(tmp_path):
    disk_a = FullDisk("keys_reserved")
    a, b, record = _pair(tmp_path, disk_a, FullDisk())
    with pytest.raises(StorageFailureError):
        a.enc_keys("a1", "b1", number=3)
    assert b.store.count_keys() == 0  # the slave was never told
    assert not record.named("keys_delivered")


def test_full_audit_volume_in_a_rejection_path_is_a_503_not_an_os_error(tmp_path):
    disk_b = FullDisk("request_rejected")
    _, b, _ = _pair(tmp_path, FullDisk(), disk_b)
    with pytest.raises(StorageFailureError):
        b.dec_keys("b1", "a1", ["00000000-0000-4000-8000-000000000000"])
    disk_b.heal()
    with pytest.raises(KeyRequestError):
        b.dec_keys("b1", "a1", ["00000000-0000-4000-8000-000000000000"])


def _fill_store(manager: KeyManager) -> None:
    """Let the store's database grow no further: SQLite then fails the next write that
    needs a page with SQLITE_FULL ("database or disk is full"), as on a full volume."""
    conn = manager.store._conn  # type: ignore[attr-defined]
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def test_full_store_volume_at_the_slave_is_a_503_with_the_alarm_at_the_slave(tmp_path):
    """The slave's store cannot record an announcement: the master's caller gets a 503
    and nothing, and the slave (whose disk it is) raises its storage alarm; a new block
    cannot be stored either. The alarm was missing: a store failure read as a refusal."""
    a, b, record = _pair(tmp_path, FullDisk(), FullDisk())
    for block_id in range(2, 12):
        block = os.urandom(1 << 16)
        a.ingest_block(LINK, block_id, block)
        b.ingest_block(LINK, block_id, block)
    _fill_store(b)
    delivered = []
    with pytest.raises(KeysUnavailableError):  # once the free room of its last pages is used
        for _ in range(100):
            delivered += a.enc_keys("a1", "b1", number=100)
    assert b.storage_alarm is not None and "key store write" in b.storage_alarm
    assert record.named("storage_alarm_raised")
    assert b.store.count_keys() == len(delivered)  # what was refused left nothing behind
    with pytest.raises(StorageFailureError):
        b.ingest_block(LINK, 12, os.urandom(1 << 20))
    assert b.storage_alarm is not None


def test_a_store_alarm_is_cleared_by_the_store_not_by_the_audit_trail(tmp_path, monkeypatch):
    """A rejected request's audit entry succeeds while the store still fails: the alarm
    must stay up (it was cleared by the first audit write that worked)."""
    a, b, record = _pair(tmp_path, FullDisk(), FullDisk())
    real_cut = a.store.cut_front

    def failing_cut(*args: Any, **kwargs: Any) -> Any:
        raise StoreWriteError("key store commit failed: database or disk is full")

    monkeypatch.setattr(a.store, "cut_front", failing_cut)
    with pytest.raises(StorageFailureError):
        a.enc_keys("a1", "b1", number=1)
    assert a.storage_alarm is not None
    with pytest.raises(KeyRequestError):  # audited: request_rejected is written
        a.enc_keys("a1", "b1", number=0)
    assert a.storage_alarm is not None and not record.named("storage_alarm_cleared")
    monkeypatch.setattr(a.store, "cut_front", real_cut)
    keys = a.enc_keys("a1", "b1", number=1)
    assert a.storage_alarm is None and record.named("storage_alarm_cleared")
    assert b.dec_keys("b1", "a1", [keys[0].key_id]) == keys


# -- kill -9 at each step ----------------------------------------------------------------

_WORKER = textwrap.dedent('''
    import os, signal, sys
    from corridor.kms.audit import AuditLog
    from corridor.kms.config import KmeConfig
    from corridor.kms.interface import FanOutEventSink
    from corridor.kms.manager import KeyManager, connect_local
    from corridor.kms.store_sqlite import SqliteKeyStore
    from tests.kms.test_manager import directory

    folder, victim, event, when = sys.argv[1:5]
    kek = bytes.fromhex(os.environ["TEST_KEK"])

    class Killer:
        def emit(self, name, **fields):
            if name == event:
                os.kill(os.getpid(), signal.SIGKILL)

    managers = {}
    for kme in ("kme-a", "kme-b"):
        audit = AuditLog(os.path.join(folder, kme + ".audit.jsonl"), kek)
        sinks = [audit]
        if kme == victim:
            sinks = [Killer(), audit] if when == "before" else [audit, Killer()]
        managers[kme] = KeyManager(KmeConfig(kme), directory(),
                                   SqliteKeyStore(os.path.join(folder, kme + ".db"), kek,
                                                  kme_id=kme),
                                   events=FanOutEventSink(*sinks))
    connect_local(managers["kme-a"], managers["kme-b"])
    keys = managers["kme-a"].enc_keys("a1", "b1", number=2)
    with open(os.path.join(folder, "issued.txt"), "w") as out:
        out.write(" ".join(k.key_id for k in keys))
        out.flush()
        os.fsync(out.fileno())
    managers["kme-b"].dec_keys("b1", "a1", [k.key_id for k in keys])
    print("no crash", flush=True)
''')


def _restart(folder: Path, kme: str, kek: bytes) -> tuple[KeyManager, list[dict[str, Any]]]:
    """What KmeNode does at start: verify the whole chain, collect unfinished
    deliveries, resolve them against the store."""
    path = folder / f"{kme}.audit.jsonl"
    audit = AuditLog(path, kek)
    journal = DeliveryJournal()
    assert verify_audit_log(path, kek, on_entry=journal.observe).ok
    manager = KeyManager(KmeConfig(kme), directory(),
                         SqliteKeyStore(folder / f"{kme}.db", kek, kme_id=kme), events=audit)
    manager.resolve_unfinished(journal.unfinished)
    entries: list[dict[str, Any]] = []
    verify_audit_log(path, kek, on_entry=entries.append)
    return manager, entries


@pytest.mark.slow
@pytest.mark.parametrize(("victim", "event", "when"), [
    ("kme-b", "keys_delivering", "after"),   # intent durable, store not yet committed
    ("kme-b", "keys_delivered", "before"),   # store committed, outcome not written
    ("kme-b", "keys_delivered", "after"),    # outcome written, answer not sent
    ("kme-a", "keys_reserving", "after"),    # master intent durable, nothing cut
    ("kme-a", "keys_reserved", "after"),     # bytes cut, slave not told
    ("kme-a", "keys_delivered", "before"),   # slave holds the keys, master not recorded
])
def test_kill_9_at_each_step_leaves_every_key_fetchable_or_recorded(tmp_path, victim, event,
                                                                    when):
    kek = generate_kek()
    for kme in ("kme-a", "kme-b"):
        manager = KeyManager(KmeConfig(kme), directory(),
                             SqliteKeyStore(tmp_path / f"{kme}.db", kek, kme_id=kme))
        for block_id in range(2):
            manager.ingest_block(LINK, block_id, bytes([block_id + 1]) * 8192)
        manager.close()
    (tmp_path / "issued.txt").write_text("")
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), victim, event, when],
                          cwd=REPO, env={**os.environ, "TEST_KEK": kek.hex(),
                                         "PYTHONPATH": os.pathsep.join(
                                             [str(REPO / "src"), str(REPO)])},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    issued = (tmp_path / "issued.txt").read_text().split()
    a, a_entries = _restart(tmp_path, "kme-a", kek)
    b, b_entries = _restart(tmp_path, "kme-b", kek)
    # Every intent in either trail now has an outcome.
    for entries in (a_entries, b_entries):
        journal = DeliveryJournal()
        for entry in entries:
            journal.observe(entry)
        assert journal.unfinished == []
    resolved = [e["fields"] for e in a_entries + b_entries if e["event"] == "delivery_resolved"]
    if victim == "kme-b":
        assert len(issued) == 2
        recorded = {k for entry in b_entries for k in entry["fields"].get("key_ids", [])
                    if entry["event"] == "keys_delivered"}
        recorded |= {k for r in resolved for k in r.get("delivered_key_ids", [])}
        fetchable = b.store.undelivered_slave_keys("b1", issued)
        assert fetchable | recorded == set(issued) and not fetchable & recorded
        if fetchable:  # still fetchable means fetchable, once
            assert [k.key_id for k in b.dec_keys("b1", "a1", sorted(fetchable))] == \
                sorted(fetchable)
            with pytest.raises(KeyRequestError):
                b.dec_keys("b1", "a1", sorted(fetchable))
        expected = {("keys_delivering", "after"): "not_delivered",
                    ("keys_delivered", "before"): "delivered"}.get((event, when))
        assert [r["outcome"] for r in resolved] == ([expected] if expected else [])
    else:
        # Once the cut is on record the master cannot tell from its own trail whether
        # the slave accepted (and the SAE got the keys): it says so.
        (outcome,) = [r["outcome"] for r in resolved]
        assert outcome == ("not_delivered" if event == "keys_reserving" else "unconfirmed")
        # Nothing is cut before the intent is durable, and cut bytes are never reused:
        # the reserve pointer stays past them after the restart.
        cut = 64 if event in ("keys_reserved", "keys_delivered") else 0
        assert a.pool_state(LINK, DIRECTION_A_TO_B).available_bytes == 8192 - cut
        assert b.store.count_keys() == (2 if event == "keys_delivered" else 0)
