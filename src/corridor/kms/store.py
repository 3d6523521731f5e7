"""The key store seam (``KeyStore``) and the SQL logic its two back-ends share.

A KME's store holds, per link and direction, the pool: an append-only byte stream
addressed by byte offset, identical at both KMEs of the link, kept as encrypted
segments of at most :data:`SEGMENT_BYTES`; and the reserved keys: one row per key ID
with the SAEs still owed a delivery, the bytes sealed either in the row or, for the
keys of one announced batch, in one ``kms_run`` record. Every operation that moves key
material is one database transaction:

- :meth:`KeyStore.append_block` places a block's two halves at the end of their
  streams (stored if the pool has room, otherwise dropped; the stream position
  advances either way so that both KMEs stay aligned whatever each one decided);
- :meth:`KeyStore.cut_front` (master side) cuts ``number`` contiguous keys from the
  front of a pool, advancing the pool's reserve pointer, which never moves back, and
  returns them (the master holds them in memory until the slave accepted); concurrent
  cuts share one transaction (group commit). :meth:`KeyStore.reserve_front` does the
  same but keeps them as pending master rows;
- :meth:`KeyStore.record_peer_reservations` (slave side) cuts the same byte ranges by
  offset, idempotently, sealing each batch once;
- :meth:`KeyStore.take_master_keys` / :meth:`KeyStore.take_slave_keys` deliver rows and
  delete them after their last recipient.

:class:`SqlKeyStore` implements all of it once over a small dialect interface;
``store_sqlite`` and ``store_postgres`` supply connections, locking and DDL types.
docs/kms-store.md gives the schema and the crash argument.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from corridor.errors import ParameterError
from corridor.kms import store_idruns as idruns
from corridor.kms.config import DIRECTIONS, check_id
from corridor.kms.crypto import AtRestCipher, AtRestDecryptionError
from corridor.kms.interface import (
    MSG_KEYS_NOT_FOUND,
    DeliveredKey,
    KeyRequestError,
    KeysUnavailableError,
    Reservation,
    UnauthorizedError,
    delivered_keys,
)

SEGMENT_BYTES = 4096
SCHEMA_VERSION = "3"
# Version 1 stores lack the kms_run table, which opening creates; version 2 stores lack its
# columns for key-ID runs, which opening adds. Both are upgraded.
_UPGRADABLE_VERSIONS = ("1", "2")
ROLE_MASTER = "master"
ROLE_SLAVE = "slave"
_KEK_CHECK_PLAINTEXT = b"corridor key store KEK check"


class PoolExhaustedError(KeysUnavailableError):
    """The pool cannot serve the request now; nothing was reserved."""


class ReservationRefusedError(KeysUnavailableError):
    """The slave side does not hold the announced bytes (not yet ingested, dropped when its
    pool was full, or already cut); nothing was recorded. A 503: the master fails closed."""


class InvalidReservationError(KeyRequestError):
    """An announcement that can never be accepted (malformed, not the announcer's to make,
    or a key ID already held with other fields); nothing was recorded. A 400."""


class StoreUnavailableError(KeysUnavailableError):
    """The database could not be reached or stayed locked past its timeout."""


class StoreWriteError(StoreUnavailableError):
    """A write or commit of the key store failed (disk full, I/O error, a database that
    went away mid-transaction): nothing of the transaction is durable, and the KME
    raises its storage alarm (a busy or closed store is not a storage failure)."""


@dataclass(frozen=True)
class PoolState:
    """Public figures of one pool (link, direction); all sizes in bytes."""

    link_id: str
    direction: str
    available_bytes: int
    stream_end_offset: int
    reserve_offset: int
    dropped_bytes: int


@dataclass(frozen=True)
class IngestResult:
    """What :meth:`KeyStore.append_block` did with each half, per direction."""

    stored_bytes: dict[str, int]
    dropped_bytes: dict[str, int]
    stream_offsets: dict[str, int]

    @property
    def accepted_bytes(self) -> int:
        """Bytes stored over both directions."""
        return sum(self.stored_bytes.values())


_UUID_FORM = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID = re.compile(_UUID_FORM, re.IGNORECASE)
_HEX_DIGITS = b"0123456789abcdefABCDEF"


def is_uuid(value: Any) -> bool:
    """True for a UUID in its canonical 8-4-4-4-12 hexadecimal form."""
    # fullmatch: "^...$" with match() also took a UUID followed by a newline.
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def all_uuids(values: Sequence[str]) -> bool:
    """True when ``values`` (strings) is not empty and every one is a canonical UUID
    (:func:`is_uuid`), checked on all of them joined, by string operations in C (a
    regular expression over the joined IDs cost 8x as much): 36 characters each, a
    hyphen at 8, 13, 18 and 23 of each, and nothing but hexadecimal digits besides."""
    count = len(values)
    if not count or set(map(len, values)) != {36}:
        return False
    joined = "".join(values)
    if not joined.isascii():
        return False
    dash = "-" * count
    if not (joined[8::36] == joined[13::36] == joined[18::36] == joined[23::36] == dash):
        return False
    digits = joined.replace("-", "").encode("ascii")
    return len(digits) == 32 * count and not digits.translate(None, _HEX_DIGITS)


def new_key_ids(count: int) -> list[str]:
    """``count`` key IDs for the keys of one delivery, as one run: canonical UUIDs of
    version 8 (RFC 9562, section 5.8, the layout below) that share 90 random bits from
    the OS CSPRNG and end in a 32-bit counter, from a random start, that goes up by one
    from key to key.

    Consecutive IDs sort next to each other, so the slave KME's store writes a delivery's
    rows into a few neighbouring index pages instead of one random page per key (random
    version 4 IDs made every announced key dirty its own page: 5x the store's CPU, most of
    it in the kernel; docs/benchmarks.md). Two runs share IDs only if their 90 random bits
    agree. Key IDs are public (ETSI GS QKD 014 sends them in the clear to both SAEs); one
    key ID of a delivery tells the next ones, which belong to the same SAEs and are
    delivered only to them.
    """
    if count <= 0:
        return []
    if count > 1 << 31:
        raise ParameterError("count", count, "at most 2**31 key IDs per run")
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x80   # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80   # RFC 9562 variant
    h = raw.hex()
    prefix = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}"
    start = int.from_bytes(raw[12:], "big") % ((1 << 32) - count + 1)
    return idruns.ids_of(prefix, start, count)


# IDs never contain control characters (config.check_id, UUID key IDs), so these
# separators make the encodings below unambiguous.
_FIELD_SEP = "\x1e"
_LIST_SEP = "\x1f"


def _join_ids(ids: Sequence[str]) -> str:
    return _LIST_SEP.join(ids)


def _split_ids(text: str) -> list[str]:
    return text.split(_LIST_SEP) if text else []


def _segment_aad(link_id: str, direction: str, start: int, length: int) -> bytes:
    return _FIELD_SEP.join(("segment", link_id, direction, str(start), str(length))).encode()


def _key_aad(key_id: str, role: str, link_id: str, direction: str, offset: int, length: int,
             master_sae_id: str, slave_sae_ids: Sequence[str]) -> bytes:
    return _FIELD_SEP.join(("key", key_id, role, link_id, direction, str(offset), str(length),
                            master_sae_id, _join_ids(slave_sae_ids))).encode()


def _run_aad(link_id: str, direction: str, start: int, key_bytes: int, master_sae_id: str,
             slave_sae_ids: Sequence[str], key_ids: Sequence[str]) -> bytes:
    return _FIELD_SEP.join(("run", link_id, direction, str(start), str(key_bytes),
                            master_sae_id, _join_ids(slave_sae_ids),
                            _join_ids(key_ids))).encode()


# A slave key row whose bytes live in a kms_run record instead of its own sealed blob.
_IN_RUN = b""
# A kms_run record without key rows, as SqlKeyStore._rowless_run reads it.
_ROWLESS_COLUMNS = ("link_id, direction, run_start, key_bytes, master_sae_id, slave_sae_ids, "
                    "remaining, data, id_head, id_first, key_count, pending")


@dataclass
class _Run:
    """One sealed record of consecutive keys of one announcement (slave side).

    A record with ``id_head`` set holds its keys without rows (:mod:`store_idruns`): its
    key IDs are ``id_head`` and ``id_first`` onwards, ``pending`` tells the keys still
    owed to its one slave SAE.
    """

    link_id: str
    direction: str
    start: int
    key_bytes: int
    master_sae_id: str
    slave_sae_ids: list[str]
    key_ids: list[str]
    remaining: int
    blob: bytes
    plain: bytes | None = None
    id_head: str | None = None
    id_first: int = 0
    id_count: int = 0
    pending: bytearray | None = None

    def ids(self) -> list[str]:
        """The record's key IDs in order; for a record without key rows built here, when
        needed (the AAD binds them), not at each lookup."""
        if self.id_head is not None and not self.key_ids:
            self.key_ids = idruns.ids_of(self.id_head, self.id_first, self.id_count)
        return self.key_ids

    @property
    def id_end(self) -> int:
        """One past the last counter of a record without key rows."""
        return self.id_first + self.id_count

    @functools.cached_property
    def joined_slaves(self) -> str:
        """``slave_sae_ids`` as a key row stores them."""
        return _join_ids(self.slave_sae_ids)

    @property
    def end(self) -> int:
        count = self.id_count if self.id_head is not None else len(self.key_ids)
        return self.start + self.key_bytes * count


# Columns of a Reservation: (link_id, direction), byte_offset, length_bytes, and the
# fields one sealed record shares (length_bytes, master_sae_id, slave_sae_ids).
_POOL = operator.itemgetter(1, 2)
_OFFSET = operator.itemgetter(3)
_LENGTH = operator.itemgetter(4)
_RECORD_FIELDS = operator.itemgetter(4, 5, 6)
# The fields every key of one delivery shares: link_id, direction, master and slave SAEs.
_SHARED_FIELDS = operator.itemgetter(1, 2, 5, 6)
_KEY_ID = _FIRST_OF_PAIR = operator.itemgetter(0)
_SECOND_OF_PAIR = operator.itemgetter(1)


def _absent(key_ids: Sequence[str], rows: Any) -> list[str]:
    """The IDs of ``key_ids`` without a key row among ``rows`` (a mapping by key ID, or
    rows whose first column is the key ID): the ones a record without rows may hold."""
    held = rows if isinstance(rows, Mapping) else {row[0] for row in rows}
    return [key_id for key_id in key_ids if key_id not in held] if held else list(key_ids)


def _one_value(column: Any) -> bool:
    """True when every value of ``column`` (an iterable) is one hashable value."""
    try:
        return len(set(column)) == 1
    except TypeError:  # an unhashable value (a list of SAEs): the caller's slow path
        return False


def _uniform_groups(run: Sequence[Reservation]) -> list[list[Reservation]]:
    """Split a contiguous run into groups with one key size and the same SAEs (one
    sealed record each)."""
    if run and _one_value(map(_RECORD_FIELDS, run)):
        return [list(run)]  # the common case (one delivery), checked column-wise in C
    groups: list[list[Reservation]] = []
    shared: tuple[Any, ...] | None = None
    group: list[Reservation] = []
    for res in run:
        fields = (res.length_bytes, res.master_sae_id, tuple(res.slave_sae_ids))
        if fields == shared:
            group.append(res)
        else:
            group = [res]
            groups.append(group)
            shared = fields
    return groups


# Reservations in stream order: (link_id, direction, byte_offset).
_STREAM_ORDER = operator.itemgetter(1, 2, 3)


def _contiguous_runs(reservations: Sequence[Reservation]) -> list[list[Reservation]]:
    """Group reservations of one pool whose byte ranges follow each other."""
    if reservations and _one_value(map(_POOL, reservations)):
        # The common case, checked column-wise in C: one pool, already in stream order
        # and contiguous (positive lengths, each range starting where the last ended).
        offsets = list(map(_OFFSET, reservations))
        lengths = list(map(_LENGTH, reservations))
        if (set(map(type, offsets)) == {int} and set(map(type, lengths)) == {int}
                and min(lengths) > 0
                and offsets[1:] == list(map(operator.add, offsets[:-1], lengths[:-1]))):
            return [list(reservations)]
    runs: list[list[Reservation]] = []
    pool: tuple[str, str] | None = None
    end = -1
    run: list[Reservation] = []
    for res in sorted(reservations, key=_STREAM_ORDER):
        if res.byte_offset == end and (res.link_id, res.direction) == pool:
            run.append(res)
        else:
            run = [res]
            runs.append(run)
            pool = (res.link_id, res.direction)
        end = res.byte_offset + res.length_bytes
    return runs


class KeyStore(ABC):
    """One KME's store of pools and reserved keys (ARCHITECTURE.md, seam ``KeyStore``).

    Implementations are thread-safe, and every method is atomic: it either does all of
    its work in one committed transaction or none of it.
    """

    kme_id: str

    @abstractmethod
    def append_block(self, link_id: str, block_id: int, parts: Mapping[str, bytes],
                     capacity_bytes: int) -> IngestResult:
        """Append each direction's part at the end of its stream; store it if the pool
        stays within ``capacity_bytes``, else drop it (position still advances).
        ``block_id`` must exceed the link's last one."""

    @abstractmethod
    def last_block_id(self, link_id: str) -> int | None:
        """The last block appended on ``link_id``, or None."""

    @abstractmethod
    def pool_state(self, link_id: str, direction: str) -> PoolState:
        """Public figures of one pool (zeros for a pool never fed)."""

    @abstractmethod
    def reserve_front(self, link_id: str, direction: str, *, key_ids: Sequence[str],
                      length_bytes: int, master_sae_id: str,
                      slave_sae_ids: Sequence[str]) -> list[Reservation]:
        """Cut ``len(key_ids)`` keys of ``length_bytes`` from the front of a pool and keep
        them as pending master rows; :class:`PoolExhaustedError` with nothing changed
        when the pool cannot serve them all."""

    @abstractmethod
    def cut_front(self, link_id: str, direction: str, *, key_ids: Sequence[str],
                  length_bytes: int, master_sae_id: str,
                  slave_sae_ids: Sequence[str]) -> list[tuple[Reservation, bytes]]:
        """Cut ``len(key_ids)`` keys from the front of a pool like :meth:`reserve_front`,
        in one durable transaction, but keep no master rows: the key bytes are returned to
        the caller, which holds them in memory until the peer accepted (the master's
        delivery path). A crash after the commit burns the bytes (the reserve pointer never
        moves back) and leaves nothing pending. :class:`PoolExhaustedError` with nothing
        changed when the pool cannot serve them all."""

    @abstractmethod
    def record_peer_reservations(self, reservations: Sequence[Reservation]) -> list[Reservation]:
        """Cut announced byte ranges into slave rows, all or none; ranges already recorded
        under the same key ID and fields are skipped (idempotent). Returns the newly
        recorded ones; :class:`ReservationRefusedError` if any range is not held,
        :class:`InvalidReservationError` if a key ID is repeated or held otherwise."""

    @abstractmethod
    def take_ranges(self, reservations: Sequence[Reservation]) -> list[bytes]:
        """Cut announced byte ranges out of the pools and return their bytes, keeping no
        row (a trusted node's hop of a relay: the bytes pad the key once and are
        burned), in one durable transaction, all or none;
        :class:`ReservationRefusedError` if any range is not held."""

    @abstractmethod
    def record_relayed_keys(self, reservations: Sequence[Reservation],
                            unpad: Callable[[list[bytes]], list[bytes]]) -> list[Reservation]:
        """The last hop of a relay: cut the announced ranges (pads) and store, under each
        reservation's key ID and fields, the key that ``unpad`` makes of the pads, as
        slave rows, in one durable transaction, all or none. A repeat with the same key
        IDs and fields is accepted without effect (returns []);
        :class:`ReservationRefusedError` if a range is not held,
        :class:`InvalidReservationError` if a key ID is repeated or held otherwise."""

    @abstractmethod
    def take_master_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[DeliveredKey]:
        """Deliver pending master rows (after the peer accepted) and delete them."""

    @abstractmethod
    def take_slave_keys(self, slave_sae_id: str, master_sae_id: str,
                        key_ids: Sequence[str]) -> list[DeliveredKey]:
        """Deliver slave rows to ``slave_sae_id``, all or none; a row goes once its last
        named slave has it. UnauthorizedError if the caller was not named on a key,
        KeyRequestError(MSG_KEYS_NOT_FOUND) if a key is unknown or already delivered."""

    @abstractmethod
    def trim_pool(self, link_id: str, direction: str, below_offset: int) -> int:
        """Securely delete the pool's bytes at stream offsets below ``below_offset`` that
        were never cut into keys (ranges the master KME burned without announcing);
        returns how many bytes went. Key rows are not touched."""

    @abstractmethod
    def slave_key_links(self, key_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """(link_id, direction) of each slave row among ``key_ids``; reads only."""

    @abstractmethod
    def slave_key_masters(self, key_ids: Sequence[str]) -> dict[str, str]:
        """The master SAE of each slave row among ``key_ids``; reads only."""

    @abstractmethod
    def undelivered_slave_keys(self, slave_sae_id: str, key_ids: Sequence[str]) -> set[str]:
        """The IDs among ``key_ids`` that ``slave_sae_id`` could still fetch (slave rows
        that still name it as a recipient); reads, changes nothing."""

    @abstractmethod
    def pending_reservations(self, older_than_s: float = 0.0) -> list[Reservation]:
        """Master rows reserved at least ``older_than_s`` ago and not yet delivered."""

    @abstractmethod
    def expire_keys(self, role: str, older_than_s: float, limit: int = 10_000) -> list[str]:
        """Delete (securely) at most ``limit`` undelivered rows of ``role`` created at
        least ``older_than_s`` ago, oldest first; returns their key IDs."""

    @abstractmethod
    def discard_keys(self, key_ids: Sequence[str]) -> int:
        """Delete (securely) the rows of ``key_ids``; returns how many existed."""

    @abstractmethod
    def count_keys(self, role: str | None = None) -> int:
        """Number of undelivered key rows (of ``role`` if given)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqlCursor(ABC):
    """The few statements :class:`SqlKeyStore` needs, with ``?`` placeholders."""

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row."""

    @abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""

    @abstractmethod
    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter tuple."""


_KEY_COLUMNS = ("key_id, role, link_id, direction, byte_offset, length_bytes, master_sae_id, "
                "slave_sae_ids, recipients, created_at, data")

SCHEMA_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS kms_meta (name TEXT PRIMARY KEY, value {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kms_link (link_id TEXT PRIMARY KEY, "
    "last_block_id {bigint} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kms_pool (link_id TEXT NOT NULL, direction TEXT NOT NULL, "
    "end_offset {bigint} NOT NULL, available_bytes {bigint} NOT NULL, "
    "reserve_offset {bigint} NOT NULL, dropped_bytes {bigint} NOT NULL, "
    "PRIMARY KEY (link_id, direction))",
    "CREATE TABLE IF NOT EXISTS kms_segment (link_id TEXT NOT NULL, direction TEXT NOT NULL, "
    "seg_start {bigint} NOT NULL, length INTEGER NOT NULL, data {blob} NOT NULL, "
    "PRIMARY KEY (link_id, direction, seg_start))",
    "CREATE TABLE IF NOT EXISTS kms_key (key_id TEXT PRIMARY KEY, "
    "role TEXT NOT NULL CHECK (role IN ('master', 'slave')), link_id TEXT NOT NULL, "
    "direction TEXT NOT NULL, byte_offset {bigint} NOT NULL, length_bytes INTEGER NOT NULL, "
    "master_sae_id TEXT NOT NULL, slave_sae_ids TEXT NOT NULL, recipients TEXT NOT NULL, "
    "created_at {double} NOT NULL, data {blob} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kms_key_role_created ON kms_key (role, created_at)",
    "CREATE TABLE IF NOT EXISTS kms_run (link_id TEXT NOT NULL, direction TEXT NOT NULL, "
    "run_start {bigint} NOT NULL, key_bytes INTEGER NOT NULL, master_sae_id TEXT NOT NULL, "
    "slave_sae_ids TEXT NOT NULL, key_ids TEXT NOT NULL, remaining INTEGER NOT NULL, "
    "data {blob} NOT NULL, id_head TEXT, id_first {bigint}, key_count INTEGER, "
    "pending {blob}, created_at {double}, PRIMARY KEY (link_id, direction, run_start))",
)
# What version 2 stores lack: a run's key IDs as a head and a first counter, its key
# count, the bitmap of keys still owed and its creation time (all NULL on records whose
# keys have rows).
_UPGRADE_2 = tuple(f"ALTER TABLE kms_run ADD COLUMN {column}" for column in (
    "id_head TEXT", "id_first {bigint}", "key_count INTEGER", "pending {blob}",
    "created_at {double}"))
_INDEX_STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS kms_run_ids ON kms_run (id_head, id_first)",
    "CREATE INDEX IF NOT EXISTS kms_run_created ON kms_run (created_at)",
)


_INSERT_CHUNK = 128

# Cuts sharing one master transaction at most (bounds the time the pool stays locked).
_MAX_GROUP_CUTS = 64


class _CutRequest:
    """One caller's cut waiting for a shared transaction (:meth:`SqlKeyStore.cut_front`)."""

    __slots__ = ("direction", "done", "error", "keys", "length_bytes", "link_id", "number")

    def __init__(self, link_id: str, direction: str, number: int, length_bytes: int) -> None:
        self.link_id = link_id
        self.direction = direction
        self.number = number
        self.length_bytes = length_bytes
        self.keys: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self.done = False


@dataclass
class _Pool:
    link_id: str
    direction: str
    end_offset: int
    available_bytes: int
    reserve_offset: int
    dropped_bytes: int


class SqlKeyStore(KeyStore):
    """All of the store's logic over a SQL dialect (SQLite or PostgreSQL).

    Subclasses provide :meth:`_transaction` (a write transaction that serialises with
    every other writer of the rows it locks), ``_for_update`` (row-lock clause) and
    ``_ddl_types`` (the column types that :data:`SCHEMA_STATEMENTS` leave open).
    """

    _for_update = ""
    _ddl_types: ClassVar[Mapping[str, str]] = {
        "blob": "BLOB", "bigint": "INTEGER", "double": "REAL"}

    def __init__(self, kek: bytes, kme_id: str) -> None:
        self.kme_id = check_id("kme_id", kme_id)
        self._cipher = AtRestCipher(kek)
        self._segment_bytes = SEGMENT_BYTES
        self._cut_cond = threading.Condition()
        self._cut_queue: list[_CutRequest] = []
        self._cutting = False

    @abstractmethod
    def _transaction(self, durable: bool = True) -> AbstractContextManager[SqlCursor]:
        """A write transaction: commits on normal exit, rolls back on an exception.

        ``durable=False`` may skip waiting for the commit to reach the disk: only for
        transactions whose loss in a crash is harmless (see :meth:`take_master_keys`).
        """

    # -- setup ------------------------------------------------------------------------

    def _initialise(self, cur: SqlCursor) -> None:
        """Check or record schema version, owning KME, KEK and segment size."""
        meta = dict(cur.rows("SELECT name, value FROM kms_meta"))
        if not meta:
            for name, value in (("schema_version", SCHEMA_VERSION.encode()),
                                ("kme_id", self.kme_id.encode()),
                                ("segment_bytes", str(self._segment_bytes).encode()),
                                ("kek_check", self._cipher.seal(_KEK_CHECK_PLAINTEXT,
                                                                b"kek-check"))):
                cur.run("INSERT INTO kms_meta (name, value) VALUES (?, ?)", (name, value))
            self._create_indexes(cur)
            return
        version = bytes(meta.get("schema_version", b"")).decode()
        if version == "2":
            for statement in _UPGRADE_2:
                cur.run(statement.format(**self._ddl_types))
        if version in _UPGRADABLE_VERSIONS:
            cur.run("UPDATE kms_meta SET value = ? WHERE name = 'schema_version'",
                    (SCHEMA_VERSION.encode(),))
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise ParameterError("store schema_version", version,
                                 f"this Corridor reads schema version {SCHEMA_VERSION}")
        owner = bytes(meta["kme_id"]).decode()
        if owner != self.kme_id:
            raise ParameterError("kme_id", self.kme_id,
                                 f"this store belongs to KME {owner!r}; each KME needs its own "
                                 "store")
        try:
            self._cipher.open(bytes(meta["kek_check"]), b"kek-check")
        except AtRestDecryptionError:
            raise AtRestDecryptionError(
                "the key-encryption key does not match the one this store was created "
                "with") from None
        self._segment_bytes = int(bytes(meta["segment_bytes"]).decode())
        self._create_indexes(cur)

    @staticmethod
    def _create_indexes(cur: SqlCursor) -> None:
        # After the upgrade: a version 2 store gains the columns these index first.
        for statement in _INDEX_STATEMENTS:
            cur.run(statement)

    # -- pools ------------------------------------------------------------------------

    def _lock_pool(self, cur: SqlCursor, link_id: str, direction: str, create: bool) -> _Pool:
        query = ("SELECT end_offset, available_bytes, reserve_offset, dropped_bytes FROM "
                 "kms_pool WHERE link_id = ? AND direction = ?" + self._for_update)
        rows = cur.rows(query, (link_id, direction))
        if not rows and create:
            cur.run("INSERT INTO kms_pool (link_id, direction, end_offset, available_bytes, "
                    "reserve_offset, dropped_bytes) VALUES (?, ?, 0, 0, 0, 0) "
                    "ON CONFLICT DO NOTHING", (link_id, direction))
            rows = cur.rows(query, (link_id, direction))
        if not rows:
            return _Pool(link_id, direction, 0, 0, 0, 0)
        end, available, reserve, dropped = (int(v) for v in rows[0])
        return _Pool(link_id, direction, end, available, reserve, dropped)

    def _save_pool(self, cur: SqlCursor, pool: _Pool) -> None:
        cur.run("UPDATE kms_pool SET end_offset = ?, available_bytes = ?, reserve_offset = ?, "
                "dropped_bytes = ? WHERE link_id = ? AND direction = ?",
                (pool.end_offset, pool.available_bytes, pool.reserve_offset,
                 pool.dropped_bytes, pool.link_id, pool.direction))

    def _put_segments(self, cur: SqlCursor, link_id: str, direction: str, start: int,
                      data: bytes) -> None:
        step = self._segment_bytes
        rows = []
        for index in range(0, len(data), step):
            chunk = data[index:index + step]
            seg_start = start + index
            rows.append((link_id, direction, seg_start, len(chunk),
                         self._cipher.seal(chunk, _segment_aad(link_id, direction, seg_start,
                                                               len(chunk)))))
        cur.many("INSERT INTO kms_segment (link_id, direction, seg_start, length, data) "
                 "VALUES (?, ?, ?, ?, ?)", rows)

    def _open_segment(self, link_id: str, direction: str, start: int, length: int,
                      blob: bytes) -> bytes:
        plain = self._cipher.open(bytes(blob), _segment_aad(link_id, direction, start, length))
        if len(plain) != length:
            raise AtRestDecryptionError("stored segment length does not match its row")
        return plain

    def _delete_segments(self, cur: SqlCursor, link_id: str, direction: str,
                         starts: Sequence[int]) -> None:
        cur.many("DELETE FROM kms_segment WHERE link_id = ? AND direction = ? AND seg_start = ?",
                 [(link_id, direction, start) for start in starts])

    def append_block(self, link_id: str, block_id: int, parts: Mapping[str, bytes],
                     capacity_bytes: int) -> IngestResult:
        check_id("link_id", link_id)
        if isinstance(block_id, bool) or not isinstance(block_id, int) or block_id < 0:
            raise ParameterError("block_id", block_id, "must be a non-negative integer")
        unknown = sorted(set(parts) - set(DIRECTIONS))
        if unknown:
            raise ParameterError("direction", unknown[0], f"must be one of {list(DIRECTIONS)}")
        stored: dict[str, int] = {}
        dropped: dict[str, int] = {}
        offsets: dict[str, int] = {}
        with self._transaction() as cur:
            rows = cur.rows("SELECT last_block_id FROM kms_link WHERE link_id = ?"
                            + self._for_update, (link_id,))
            if rows and block_id <= int(rows[0][0]):
                raise ParameterError("block_id", block_id,
                                     f"must be greater than {int(rows[0][0])}, the last block "
                                     f"ingested on link {link_id!r}")
            if rows:
                cur.run("UPDATE kms_link SET last_block_id = ? WHERE link_id = ?",
                        (block_id, link_id))
            else:
                cur.run("INSERT INTO kms_link (link_id, last_block_id) VALUES (?, ?)",
                        (link_id, block_id))
            for direction in DIRECTIONS:
                data = bytes(parts.get(direction, b""))
                pool = self._lock_pool(cur, link_id, direction, create=True)
                offsets[direction] = pool.end_offset
                if data and pool.available_bytes + len(data) <= capacity_bytes:
                    self._put_segments(cur, link_id, direction, pool.end_offset, data)
                    pool.available_bytes += len(data)
                    stored[direction], dropped[direction] = len(data), 0
                else:
                    pool.dropped_bytes += len(data)
                    stored[direction], dropped[direction] = 0, len(data)
                pool.end_offset += len(data)
                self._save_pool(cur, pool)
        return IngestResult(stored, dropped, offsets)

    def last_block_id(self, link_id: str) -> int | None:
        with self._transaction() as cur:
            rows = cur.rows("SELECT last_block_id FROM kms_link WHERE link_id = ?", (link_id,))
        return int(rows[0][0]) if rows else None

    def pool_state(self, link_id: str, direction: str) -> PoolState:
        with self._transaction() as cur:
            rows = cur.rows("SELECT end_offset, available_bytes, reserve_offset, dropped_bytes "
                            "FROM kms_pool WHERE link_id = ? AND direction = ?",
                            (link_id, direction))
        end, available, reserve, dropped = (int(v) for v in rows[0]) if rows else (0, 0, 0, 0)
        return PoolState(link_id, direction, available, end, reserve, dropped)

    # -- master side ------------------------------------------------------------------

    def _insert_keys(self, cur: SqlCursor, role: str,
                     items: Sequence[tuple[Reservation, bytes | None]]) -> None:
        """Store one row per key; master rows owe the master, slave rows the slaves.
        A key given as None lives in a ``kms_run`` record (its row holds no key bytes);
        any other is sealed into its own row."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        reservations = list(map(_FIRST_OF_PAIR, items))
        if (items and set(map(type, map(_SECOND_OF_PAIR, items))) == {type(None)}
                and _one_value(map(_SHARED_FIELDS, reservations))):
            # The common case (one delivery's keys in a run record), column-wise in C.
            first = reservations[0]
            shared = _join_ids(first.slave_sae_ids)
            rows = list(zip(map(_KEY_ID, reservations), itertools.repeat(role),
                            itertools.repeat(first.link_id), itertools.repeat(first.direction),
                            map(_OFFSET, reservations), map(_LENGTH, reservations),
                            itertools.repeat(first.master_sae_id), itertools.repeat(shared),
                            itertools.repeat(first.master_sae_id if role == ROLE_MASTER
                                             else shared),
                            itertools.repeat(now), itertools.repeat(_IN_RUN)))
            items = ()
        joined: dict[tuple[str, ...], str] = {}
        for res, key in items:
            slaves = joined.get(res.slave_sae_ids)
            if slaves is None:
                slaves = joined[res.slave_sae_ids] = _join_ids(res.slave_sae_ids)
            if key is None:
                data = _IN_RUN
            else:
                data = self._cipher.seal(key, _key_aad(
                    res.key_id, role, res.link_id, res.direction, res.byte_offset,
                    res.length_bytes, res.master_sae_id, res.slave_sae_ids))
            rows.append((res.key_id, role, res.link_id, res.direction, res.byte_offset,
                         res.length_bytes, res.master_sae_id, slaves,
                         res.master_sae_id if role == ROLE_MASTER else slaves, now, data))
        # Multi-row INSERTs: one statement per chunk instead of one per key (PostgreSQL
        # pays a round trip per statement); 11 * 128 parameters stay far below SQLite's
        # limit of 32766.
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start:start + _INSERT_CHUNK]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            cur.run(f"INSERT INTO kms_key ({_KEY_COLUMNS}) VALUES {values}",
                    list(itertools.chain.from_iterable(chunk)))

    def _segments_from(self, cur: SqlCursor, link_id: str, direction: str, after: int,
                       inclusive: bool, limit: int) -> list[tuple[int, int, bytes]]:
        op = ">=" if inclusive else ">"
        rows = cur.rows("SELECT seg_start, length, data FROM kms_segment WHERE link_id = ? AND "
                        f"direction = ? AND seg_start {op} ? ORDER BY seg_start LIMIT ?",
                        (link_id, direction, after, limit))
        return [(int(s), int(n), bytes(d)) for s, n, d in rows]

    def _cut_front(self, cur: SqlCursor, link_id: str, direction: str, number: int,
                   length_bytes: int) -> list[tuple[int, bytes]]:
        """Remove ``number`` contiguous keys from the front of a locked pool and advance its
        reserve pointer; returns ``(byte_offset, key)`` per key."""
        if number < 1 or length_bytes < 1:
            raise ParameterError("reservation", f"{number} keys of {length_bytes} bytes",
                                 "needs at least one key of at least one byte")
        need = number * length_bytes
        pool = self._lock_pool(cur, link_id, direction, create=False)
        if pool.available_bytes < need:
            raise PoolExhaustedError(
                f"pool {link_id} {direction} holds {pool.available_bytes} bytes; "
                f"{number} keys of {length_bytes * 8} bits need {need}")
        batch = max(2, min(256, need // self._segment_bytes + 2))
        visited: list[int] = []
        visited_bytes = 0
        run = bytearray()   # plaintext of the current contiguous run from key_start
        key_start = pool.reserve_offset
        position: int | None = None
        keys: list[tuple[int, bytes]] = []
        cursor, inclusive = pool.reserve_offset, True
        while len(keys) < number:
            segments = self._segments_from(cur, link_id, direction, cursor, inclusive, batch)
            if not segments:
                # Only fragments shorter than a key sit between holes; refuse whole.
                raise PoolExhaustedError(
                    f"pool {link_id} {direction} has no {number} contiguous keys of "
                    f"{length_bytes * 8} bits")
            for start, length, blob in segments:
                plain = self._open_segment(link_id, direction, start, length, blob)
                visited.append(start)
                visited_bytes += length
                if position != start:
                    # A hole (bytes dropped when the pool was full): a key never spans
                    # one, so the fragment before it is burned with the visited rows.
                    run = bytearray()
                    key_start = start
                run += plain
                position = start + length
                take = min(len(run) // length_bytes, number - len(keys))
                if take:
                    # The whole keys of this stretch in one copy, then sliced per key.
                    size = take * length_bytes
                    chunk = bytes(run[:size])
                    del run[:size]
                    keys.extend(zip(range(key_start, key_start + size, length_bytes),
                                    [chunk[i:i + length_bytes]
                                     for i in range(0, size, length_bytes)], strict=True))
                    key_start += size
                if len(keys) == number:
                    break
            cursor, inclusive = segments[-1][0], False
        self._delete_segments(cur, link_id, direction, visited)
        if run:
            self._put_segments(cur, link_id, direction, key_start, bytes(run))
        pool.available_bytes -= visited_bytes - len(run)
        pool.reserve_offset = key_start
        self._save_pool(cur, pool)
        return keys

    def reserve_front(self, link_id: str, direction: str, *, key_ids: Sequence[str],
                      length_bytes: int, master_sae_id: str,
                      slave_sae_ids: Sequence[str]) -> list[Reservation]:
        with self._transaction() as cur:
            keys = self._cut_front(cur, link_id, direction, len(key_ids), length_bytes)
            items = [(Reservation(key_id=key_id, link_id=link_id, direction=direction,
                                  byte_offset=offset, length_bytes=length_bytes,
                                  master_sae_id=master_sae_id,
                                  slave_sae_ids=tuple(slave_sae_ids)), key)
                     for key_id, (offset, key) in zip(key_ids, keys, strict=True)]
            self._insert_keys(cur, ROLE_MASTER, items)
        return [res for res, _ in items]

    def cut_front(self, link_id: str, direction: str, *, key_ids: Sequence[str],
                  length_bytes: int, master_sae_id: str,
                  slave_sae_ids: Sequence[str]) -> list[tuple[Reservation, bytes]]:
        request = _CutRequest(link_id, direction, len(key_ids), length_bytes)
        self._group_commit(request)
        slaves = tuple(slave_sae_ids)
        # Built as the tuple it is (all seven fields, in order): through the named
        # tuple's keyword constructor it cost 4x as much, per key.
        new = tuple.__new__
        return [(new(Reservation, (key_id, link_id, direction, offset, length_bytes,
                                   master_sae_id, slaves)), key)
                for key_id, (offset, key) in zip(key_ids, request.keys, strict=True)]

    def _group_commit(self, mine: _CutRequest) -> None:
        """Run ``mine`` in a transaction shared with the cuts queued at the same time.

        While one transaction runs, other callers queue; one of them then runs every
        queued cut in the next transaction, so concurrent deliveries share one commit
        (one fsync at SQLite ``synchronous=FULL``). A cut that cannot be served raises
        before it writes anything (see :meth:`_cut_front`), so it fails alone; if the
        transaction itself fails, every cut in it fails and none is handed out.
        """
        with self._cut_cond:
            self._cut_queue.append(mine)
            while self._cutting and not mine.done:
                self._cut_cond.wait()
            leader = not mine.done
            if leader:
                self._cutting = True
        if leader:
            try:
                while not mine.done:
                    with self._cut_cond:
                        batch = self._cut_queue[:_MAX_GROUP_CUTS]
                        del self._cut_queue[:_MAX_GROUP_CUTS]
                    committed = False
                    try:
                        with self._transaction() as cur:
                            for item in batch:
                                try:
                                    item.keys = self._cut_front(cur, item.link_id,
                                                                item.direction, item.number,
                                                                item.length_bytes)
                                except (PoolExhaustedError, ParameterError,
                                        AtRestDecryptionError) as exc:
                                    item.error = exc
                        committed = True
                    except Exception as exc:  # nothing of this transaction is durable
                        for item in batch:
                            item.error = exc
                    finally:
                        with self._cut_cond:
                            for item in batch:
                                if not committed and item.error is None:
                                    item.error = StoreUnavailableError("key store interrupted")
                                if item.error is not None:
                                    item.keys = []  # never hand out an uncommitted cut
                                item.done = True
                            self._cut_cond.notify_all()
            finally:
                with self._cut_cond:
                    self._cutting = False
                    self._cut_cond.notify_all()
        if mine.error is not None:
            raise mine.error

    # -- slave side -------------------------------------------------------------------

    def _cut_range(self, cur: SqlCursor, link_id: str, direction: str, offset: int,
                   length: int) -> bytes | None:
        """Remove bytes [offset, offset+length) from the stored stream; None if not held."""
        rows = cur.rows("SELECT seg_start, length, data FROM kms_segment WHERE link_id = ? AND "
                        "direction = ? AND seg_start > ? AND seg_start < ? ORDER BY seg_start",
                        (link_id, direction, offset - self._segment_bytes, offset + length))
        # The lower bound admits segments that end before ``offset``: leave them out.
        segments = [(int(s), int(n), bytes(d)) for s, n, d in rows if int(s) + int(n) > offset]
        if not segments or segments[0][0] > offset:
            return None
        expected = segments[0][0]
        pieces = []
        for start, seg_length, blob in segments:
            if start != expected:
                return None
            pieces.append(self._open_segment(link_id, direction, start, seg_length, blob))
            expected = start + seg_length
        if expected < offset + length:
            return None
        first = segments[0][0]
        plain = b"".join(pieces)
        key = plain[offset - first:offset - first + length]
        self._delete_segments(cur, link_id, direction, [s for s, _, _ in segments])
        if offset > first:
            self._put_segments(cur, link_id, direction, first, plain[:offset - first])
        if expected > offset + length:
            self._put_segments(cur, link_id, direction, offset + length,
                               plain[offset - first + length:])
        return key

    def _already_held(self, cur: SqlCursor, reservations: Sequence[Reservation]) -> set[str]:
        """The key IDs among ``reservations`` already held as slave rows with the same
        fields (a repeat, accepted without effect); :class:`InvalidReservationError` if
        one is held with other fields."""
        key_ids = [res.key_id for res in reservations]
        if len(set(key_ids)) != len(key_ids):
            raise InvalidReservationError("announcement repeats a key ID")
        existing = {row[0]: row for row in cur.rows(
            "SELECT key_id, role, link_id, direction, byte_offset, length_bytes, "
            f"master_sae_id, slave_sae_ids FROM kms_key WHERE key_id IN "
            f"({', '.join('?' * len(key_ids))})" + self._for_update, key_ids)}
        # Keys of records without rows are held too, delivered or not: a repeat of an
        # announcement whose keys were fetched since is accepted without effect.
        for key_id, (run, index) in self._rowless(cur, _absent(key_ids, existing)).items():
            existing[key_id] = (key_id, ROLE_SLAVE, run.link_id, run.direction,
                                run.start + index * run.key_bytes, run.key_bytes,
                                run.master_sae_id, run.joined_slaves)
        for res in reservations:
            row = existing.get(res.key_id)
            if row is not None and not (
                    row[1] == ROLE_SLAVE and row[2] == res.link_id
                    and row[3] == res.direction and int(row[4]) == res.byte_offset
                    and int(row[5]) == res.length_bytes and row[6] == res.master_sae_id
                    and _split_ids(row[7]) == list(res.slave_sae_ids)):
                raise InvalidReservationError(
                    f"key ID {res.key_id} is already held with different fields")
        return set(existing)

    def _cut_runs(self, cur: SqlCursor, reservations: Sequence[Reservation]
                  ) -> list[tuple[list[Reservation], bytes]]:
        """Cut every contiguous run of ``reservations`` out of its pool (locked, the pool
        figures saved): each run with its bytes; :class:`ReservationRefusedError` if a
        range is not held."""
        pools: dict[tuple[str, str], _Pool] = {}
        out: list[tuple[list[Reservation], bytes]] = []
        for run in _contiguous_runs(reservations):
            first, last = run[0], run[-1]
            pool_key = (first.link_id, first.direction)
            if pool_key not in pools:
                pools[pool_key] = self._lock_pool(cur, first.link_id, first.direction,
                                                  create=False)
            end = last.byte_offset + last.length_bytes
            cut = self._cut_range(cur, first.link_id, first.direction, first.byte_offset,
                                  end - first.byte_offset)
            if cut is None:
                raise ReservationRefusedError(
                    f"bytes {first.byte_offset}..{end} of pool {first.link_id} "
                    f"{first.direction} are not all held by KME {self.kme_id} (not yet "
                    "ingested, dropped, or already cut)")
            pools[pool_key].available_bytes -= len(cut)
            out.append((run, cut))
        for pool in pools.values():
            self._save_pool(cur, pool)
        return out

    def record_peer_reservations(self, reservations: Sequence[Reservation]) -> list[Reservation]:
        if not reservations:
            return []
        recorded: list[Reservation] = []
        with self._transaction() as cur:
            held = self._already_held(cur, reservations)
            items: list[tuple[Reservation, bytes | None]] = []
            for run, cut in self._cut_runs(
                    cur, [res for res in reservations if res.key_id not in held]):
                first = run[0]
                for group in _uniform_groups(run):
                    # One sealed record per group instead of one per key. Keys owed to
                    # one slave SAE and named as a run of IDs (store_idruns) need no row;
                    # any other key keeps its own (looked up by ID, its own recipients).
                    head = group[0]
                    start = head.byte_offset - first.byte_offset
                    size = head.length_bytes * len(group)
                    ids = idruns.as_run([res.key_id for res in group]) \
                        if len(head.slave_sae_ids) == 1 else None
                    self._insert_run(cur, group, cut[start:start + size], ids)
                    if ids is None:
                        items.extend((res, None) for res in group)
                recorded.extend(run)
            self._insert_keys(cur, ROLE_SLAVE, items)
        return recorded

    def _take_runs(self, cur: SqlCursor, reservations: Sequence[Reservation]
                   ) -> dict[str, bytes]:
        """Cut every reservation's range out of its pool (locked): key ID -> bytes."""
        taken: dict[str, bytes] = {}
        for run, cut in self._cut_runs(cur, reservations):
            for res in run:
                start = res.byte_offset - run[0].byte_offset
                taken[res.key_id] = cut[start:start + res.length_bytes]
        return taken

    def take_ranges(self, reservations: Sequence[Reservation]) -> list[bytes]:
        key_ids = [res.key_id for res in reservations]
        if len(set(key_ids)) != len(key_ids):
            raise InvalidReservationError("a relay hop repeats a key ID")
        if not reservations:
            return []
        with self._transaction() as cur:
            taken = self._take_runs(cur, reservations)
        return [taken[key_id] for key_id in key_ids]

    def record_relayed_keys(self, reservations: Sequence[Reservation],
                            unpad: Callable[[list[bytes]], list[bytes]]) -> list[Reservation]:
        if not reservations:
            return []
        key_ids = [res.key_id for res in reservations]
        with self._transaction() as cur:
            held = self._already_held(cur, reservations)
            if held:
                if held == set(key_ids):
                    return []  # a repeat of a relay already stored
                raise InvalidReservationError("a relay hop names keys of which only some "
                                              "are held here")
            taken = self._take_runs(cur, reservations)
            keys = unpad([taken[key_id] for key_id in key_ids])
            if len(keys) != len(reservations) or any(
                    len(key) != res.length_bytes for key, res in zip(keys, reservations,
                                                                     strict=False)):
                raise ParameterError("relayed keys", f"{len(keys)} keys",
                                     "must match the reservations one for one, in length")
            self._insert_keys(cur, ROLE_SLAVE, list(zip(reservations, keys, strict=True)))
        return list(reservations)

    def _insert_run(self, cur: SqlCursor, group: Sequence[Reservation], data: bytes,
                    ids: tuple[str, int] | None = None) -> None:
        """One sealed record; with ``ids`` (head, first counter) one without key rows,
        whose key IDs the columns give (the AAD binds them either way)."""
        head = group[0]
        key_ids = [res.key_id for res in group]
        aad = _run_aad(head.link_id, head.direction, head.byte_offset, head.length_bytes,
                       head.master_sae_id, head.slave_sae_ids, key_ids)
        rowless = (ids[0], ids[1], len(group), bytes(idruns.full_bitmap(len(group))),
                   time.time()) if ids is not None else (None, None, None, None, None)
        cur.run("INSERT INTO kms_run (link_id, direction, run_start, key_bytes, master_sae_id, "
                "slave_sae_ids, key_ids, remaining, data, id_head, id_first, key_count, "
                "pending, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (head.link_id, head.direction, head.byte_offset, head.length_bytes,
                 head.master_sae_id, _join_ids(head.slave_sae_ids),
                 "" if ids is not None else _join_ids(key_ids), len(group),
                 self._cipher.seal(data, aad), *rowless))

    def _runs_of(self, cur: SqlCursor, rows: Sequence[tuple[Any, ...]]) -> dict[str, _Run]:
        """Lock and return the run record of every run-backed key row, by key ID.

        Runs are looked up (and, on PostgreSQL, locked) in stream order, so two
        transactions never wait for each other's runs in opposite orders.
        """
        found: dict[str, _Run] = {}
        loaded: dict[tuple[str, str], list[_Run]] = {}
        backed = sorted((row for row in rows if bytes(row[10]) == _IN_RUN),
                        key=lambda row: (row[2], row[3], int(row[4])))
        last: _Run | None = None
        last_end = -1
        for row in backed:
            key_id, link_id, direction, offset = row[0], row[2], row[3], int(row[4])
            if (last is not None and last.start <= offset < last_end
                    and last.link_id == link_id and last.direction == direction):
                found[key_id] = last   # the keys of one request are mostly one run
                continue
            run = next((r for r in loaded.get((link_id, direction), [])
                        if r.start <= offset < r.end), None)
            if run is None:
                hits = cur.rows(
                    "SELECT run_start, key_bytes, master_sae_id, slave_sae_ids, key_ids, "
                    "remaining, data FROM kms_run WHERE link_id = ? AND direction = ? AND "
                    "run_start <= ? ORDER BY run_start DESC LIMIT 1" + self._for_update,
                    (link_id, direction, offset))
                if hits:
                    start, key_bytes, master, slaves, ids, remaining, blob = hits[0]
                    run = _Run(link_id, direction, int(start), int(key_bytes), master,
                               _split_ids(slaves), _split_ids(ids), int(remaining),
                               bytes(blob))
                    loaded.setdefault((link_id, direction), []).append(run)
            if run is None or not run.start <= offset < run.end:
                raise AtRestDecryptionError("a stored key row has no record holding its bytes")
            found[key_id] = run
            last, last_end = run, run.end
        return found

    def _key_from_run(self, row: tuple[Any, ...], run: _Run) -> bytes:
        key_id, _, _, _, offset, length, master, slaves = row[:8]
        index, rest = divmod(int(offset) - run.start, run.key_bytes)
        # The run is authenticated with its key IDs, size and SAEs; a key row edited to
        # point elsewhere or to name other SAEs no longer matches it.
        if (rest or run.key_ids[index] != key_id or int(length) != run.key_bytes
                or master != run.master_sae_id or slaves != run.joined_slaves):
            raise AtRestDecryptionError("a stored key row does not match its record")
        return self._run_key(run, index)

    def _run_key(self, run: _Run, index: int) -> bytes:
        """Key ``index`` of a record, the record opened (and authenticated) once."""
        if run.plain is None:
            plain = self._cipher.open(run.blob, _run_aad(
                run.link_id, run.direction, run.start, run.key_bytes, run.master_sae_id,
                run.slave_sae_ids, run.ids()))
            if len(plain) != run.end - run.start:
                raise AtRestDecryptionError("stored record length does not match its row")
            run.plain = plain
        start = index * run.key_bytes
        return run.plain[start:start + run.key_bytes]

    # -- records without key rows (key-ID runs, store_idruns) --------------------------

    def _rowless(self, cur: SqlCursor, key_ids: Sequence[str]) -> dict[str, tuple[_Run, int]]:
        """The keys among ``key_ids`` that records without key rows hold, owed or not
        (locked, in (head, first counter) order): key ID -> (record, index). One query
        whatever the number of heads (IDs of other forms, such as random ones, each have
        a head of their own)."""
        found: dict[str, tuple[_Run, int]] = {}
        groups = idruns.group_by_head(key_ids)
        if not groups:
            return found
        heads = sorted(groups)
        by_head: dict[str, list[_Run]] = {}
        for row in cur.rows(f"SELECT {_ROWLESS_COLUMNS} FROM kms_run WHERE id_head IN "
                            f"({', '.join('?' * len(heads))}) ORDER BY id_head, id_first"
                            + self._for_update, heads):
            run = self._rowless_run(row)
            by_head.setdefault(str(run.id_head), []).append(run)
        for head, runs in by_head.items():
            ids, counters = groups[head]
            low, high = min(counters), max(counters)
            if len(runs) == 1 and runs[0].id_first <= low and high < runs[0].id_end:
                # The common case: one record holds them all (column-wise, in C).
                run = runs[0]
                found.update(zip(ids, zip(itertools.repeat(run),
                                          map(operator.sub, counters,
                                              itertools.repeat(run.id_first))), strict=True))
                continue
            for key_id, counter in zip(ids, counters, strict=True):
                for run in runs:
                    if run.id_first <= counter < run.id_end:
                        found[key_id] = (run, counter - run.id_first)
                        break
        return found

    @staticmethod
    def _rowless_run(row: Sequence[Any]) -> _Run:
        (link_id, direction, start, key_bytes, master, slaves, remaining, blob, head, first,
         count, pending) = row
        return _Run(link_id, direction, int(start), int(key_bytes), master, _split_ids(slaves),
                    [], int(remaining), bytes(blob), id_head=head, id_first=int(first),
                    id_count=int(count), pending=bytearray(pending))

    def _release(self, cur: SqlCursor, hits: Sequence[tuple[_Run, int]]) -> int:
        """Mark keys of records without rows as no longer owed (a record whose last key
        goes is deleted, securely); returns how many were still owed."""
        by_run: dict[int, tuple[_Run, list[int]]] = {}
        for run, index in hits:
            by_run.setdefault(id(run), (run, []))[1].append(index)
        released = 0
        for run, indices in by_run.values():
            assert run.pending is not None
            live = [i for i in set(indices) if idruns.is_set(run.pending, i)]
            if not live:
                continue
            idruns.clear(run.pending, live)
            run.remaining -= len(live)
            released += len(live)
            if run.remaining > 0:
                cur.run("UPDATE kms_run SET remaining = ?, pending = ? WHERE link_id = ? AND "
                        "direction = ? AND run_start = ?", (run.remaining, bytes(run.pending),
                                                            run.link_id, run.direction,
                                                            run.start))
            else:
                cur.run("DELETE FROM kms_run WHERE link_id = ? AND direction = ? AND "
                        "run_start = ?", (run.link_id, run.direction, run.start))
        return released

    @staticmethod
    def _owed(hits: Mapping[str, tuple[_Run, int]]) -> dict[str, _Run]:
        """The keys of ``hits`` still owed, with their records."""
        return {key_id: run for key_id, (run, index) in hits.items()
                if run.pending is not None and idruns.is_set(run.pending, index)}

    def _remove_keys(self, cur: SqlCursor, key_ids: Sequence[str],
                     runs: Mapping[str, _Run]) -> int:
        """Delete key rows; a run record goes (securely) with the last of its rows."""
        removed = self._delete_keys(cur, key_ids)
        gone: dict[int, tuple[_Run, int]] = {}
        for key_id in key_ids:
            run = runs.get(key_id)
            if run is not None:
                entry = gone.get(id(run))
                gone[id(run)] = (run, entry[1] + 1 if entry else 1)
        for run, count in gone.values():
            run.remaining -= count
            if run.remaining > 0:
                cur.run("UPDATE kms_run SET remaining = ? WHERE link_id = ? AND direction = ? "
                        "AND run_start = ?", (run.remaining, run.link_id, run.direction,
                                              run.start))
            else:
                cur.run("DELETE FROM kms_run WHERE link_id = ? AND direction = ? AND "
                        "run_start = ?", (run.link_id, run.direction, run.start))
        return removed

    # -- delivery ---------------------------------------------------------------------

    def _lock_keys(self, cur: SqlCursor, key_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        rows = cur.rows(f"SELECT {_KEY_COLUMNS} FROM kms_key WHERE key_id IN "
                        f"({', '.join('?' * len(key_ids))}) ORDER BY key_id"
                        + self._for_update, list(key_ids))
        return {row[0]: row for row in rows}

    def _open_key(self, row: tuple[Any, ...]) -> bytes:
        key_id, role, link_id, direction, offset, length, master, slaves = row[:8]
        aad = _key_aad(key_id, role, link_id, direction, int(offset), int(length), master,
                       _split_ids(slaves))
        key = self._cipher.open(bytes(row[10]), aad)
        if len(key) != int(length):
            raise AtRestDecryptionError("stored key length does not match its row")
        return key

    def take_master_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[DeliveredKey]:
        if not key_ids:
            return []
        # Not durable: if this commit is lost in a crash the rows come back as pending
        # master rows, which resolve_pending() discards and nothing ever delivers; the
        # slave's rows (committed before) still serve the keys the master SAE received.
        with self._transaction(durable=False) as cur:
            rows = self._lock_keys(cur, key_ids)
            for key_id in key_ids:
                row = rows.get(key_id)
                if row is None or row[1] != ROLE_MASTER or row[6] != master_sae_id:
                    raise KeysUnavailableError(
                        "a reservation was withdrawn before delivery; nothing was delivered")
            keys = delivered_keys(key_ids, [self._open_key(rows[key_id]) for key_id in key_ids])
            self._delete_keys(cur, key_ids)
        return keys

    def _delete_keys(self, cur: SqlCursor, key_ids: Sequence[str]) -> int:
        return cur.run(f"DELETE FROM kms_key WHERE key_id IN ({', '.join('?' * len(key_ids))})",
                       list(key_ids))

    def take_slave_keys(self, slave_sae_id: str, master_sae_id: str,
                        key_ids: Sequence[str]) -> list[DeliveredKey]:
        if not key_ids:
            raise KeyRequestError(MSG_KEYS_NOT_FOUND, [{"key_IDs": "no key ID given"}])
        if len(set(key_ids)) != len(key_ids):
            raise KeyRequestError(MSG_KEYS_NOT_FOUND, [{"key_IDs": "a key ID is repeated"}])
        # The keys of one request nearly always name the same SAEs: split each joined
        # list once, not once per key.
        split: dict[str, list[str]] = {}

        def names(text: str) -> list[str]:
            found = split.get(text)
            if found is None:
                found = split[text] = _split_ids(text)
            return found

        with self._transaction() as cur:
            rows = self._lock_keys(cur, key_ids)
            rowless = self._rowless(cur, _absent(key_ids, rows))
            unauthorized = False
            missing: list[str] = []
            for key_id in key_ids:
                row = rows.get(key_id)
                if row is None:
                    run, index = rowless.get(key_id, (None, 0))
                    if run is None or run.master_sae_id != master_sae_id:
                        missing.append(key_id)
                    elif slave_sae_id not in run.slave_sae_ids:
                        unauthorized = True
                    elif run.pending is None or not idruns.is_set(run.pending, index):
                        missing.append(key_id)  # delivered already
                elif row[1] != ROLE_SLAVE or row[6] != master_sae_id:
                    missing.append(key_id)
                elif slave_sae_id not in names(row[7]):
                    unauthorized = True
                elif slave_sae_id not in names(row[8]):
                    missing.append(key_id)
            if unauthorized:
                raise UnauthorizedError("an SAE not named on the key asked for it")
            if missing:
                raise KeyRequestError(MSG_KEYS_NOT_FOUND, [{"key_IDs_not_found": missing}])
            runs = self._runs_of(cur, [rows[key_id] for key_id in key_ids if key_id in rows])
            keys = delivered_keys(key_ids, [
                self._run_key(*rowless[key_id]) if key_id not in rows
                else self._key_from_run(rows[key_id], runs[key_id]) if key_id in runs
                else self._open_key(rows[key_id]) for key_id in key_ids])
            done = []
            for key_id in key_ids:
                if key_id not in rows:
                    continue
                remaining = [sae for sae in names(rows[key_id][8]) if sae != slave_sae_id]
                if remaining:
                    cur.run("UPDATE kms_key SET recipients = ? WHERE key_id = ?",
                            (_join_ids(remaining), key_id))
                else:
                    done.append(key_id)
            if done:
                self._remove_keys(cur, done, runs)
            if rowless:
                self._release(cur, list(rowless.values()))
        return keys

    # -- recovery and housekeeping ----------------------------------------------------

    def trim_pool(self, link_id: str, direction: str, below_offset: int) -> int:
        if isinstance(below_offset, bool) or not isinstance(below_offset, int) \
                or below_offset < 0:
            raise ParameterError("below_offset", below_offset, "must be an integer >= 0")
        with self._transaction() as cur:
            pool = self._lock_pool(cur, link_id, direction, create=False)
            rows = cur.rows("SELECT seg_start, length, data FROM kms_segment WHERE link_id = ? "
                            "AND direction = ? AND seg_start < ? ORDER BY seg_start",
                            (link_id, direction, below_offset))
            trimmed = 0
            for start, length, blob in rows:
                start, length = int(start), int(length)
                self._delete_segments(cur, link_id, direction, [start])
                if start + length > below_offset:  # keep the part at or above the mark
                    plain = self._open_segment(link_id, direction, start, length, bytes(blob))
                    self._put_segments(cur, link_id, direction, below_offset,
                                       plain[below_offset - start:])
                    trimmed += below_offset - start
                else:
                    trimmed += length
            if trimmed:
                pool.available_bytes -= trimmed
                self._save_pool(cur, pool)
        return trimmed

    def slave_key_links(self, key_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(key_ids), 500):  # bounded IN lists
            chunk = list(key_ids[start:start + 500])
            with self._transaction(durable=False) as cur:
                rows = cur.rows(f"SELECT key_id, link_id, direction FROM kms_key WHERE role = ? "
                                f"AND key_id IN ({', '.join('?' * len(chunk))})",
                                [ROLE_SLAVE, *chunk])
                owed = self._owed(self._rowless(cur, _absent(chunk, rows)))
            found.update({str(r[0]): (str(r[1]), str(r[2])) for r in rows})
            found.update({k: (run.link_id, run.direction) for k, run in owed.items()})
        return found

    def slave_key_masters(self, key_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(key_ids), 500):  # bounded IN lists
            chunk = list(key_ids[start:start + 500])
            with self._transaction(durable=False) as cur:
                rows = cur.rows(f"SELECT key_id, master_sae_id FROM kms_key WHERE role = ? "
                                f"AND key_id IN ({', '.join('?' * len(chunk))})",
                                [ROLE_SLAVE, *chunk])
                owed = self._owed(self._rowless(cur, _absent(chunk, rows)))
            found.update({str(r[0]): str(r[1]) for r in rows})
            found.update({k: run.master_sae_id for k, run in owed.items()})
        return found

    def undelivered_slave_keys(self, slave_sae_id: str, key_ids: Sequence[str]) -> set[str]:
        if not key_ids:
            return set()
        with self._transaction(durable=False) as cur:
            rows = cur.rows(f"SELECT key_id, recipients FROM kms_key WHERE role = ? AND "
                            f"key_id IN ({', '.join('?' * len(key_ids))})",
                            [ROLE_SLAVE, *key_ids])
            owed = self._owed(self._rowless(cur, _absent(key_ids, rows)))
        return ({row[0] for row in rows if slave_sae_id in _split_ids(row[1])}
                | {k for k, run in owed.items() if slave_sae_id in run.slave_sae_ids})

    def pending_reservations(self, older_than_s: float = 0.0) -> list[Reservation]:
        with self._transaction() as cur:
            rows = cur.rows("SELECT key_id, link_id, direction, byte_offset, length_bytes, "
                            "master_sae_id, slave_sae_ids FROM kms_key WHERE role = ? AND "
                            "created_at <= ? ORDER BY link_id, direction, byte_offset",
                            (ROLE_MASTER, time.time() - older_than_s))
        return [Reservation(key_id=r[0], link_id=r[1], direction=r[2], byte_offset=int(r[3]),
                            length_bytes=int(r[4]), master_sae_id=r[5],
                            slave_sae_ids=tuple(_split_ids(r[6]))) for r in rows]

    def expire_keys(self, role: str, older_than_s: float, limit: int = 10_000) -> list[str]:
        cutoff = time.time() - older_than_s
        with self._transaction() as cur:
            found = cur.rows("SELECT key_id FROM kms_key WHERE role = ? AND created_at <= ? "
                             "ORDER BY created_at LIMIT ?", (role, cutoff, int(limit)))
            key_ids = [str(row[0]) for row in found]
            expired: list[str] = []
            if key_ids:
                rows = self._lock_keys(cur, key_ids)
                self._remove_keys(cur, sorted(rows), self._runs_of(cur, list(rows.values())))
                expired = sorted(rows)
            elif role == ROLE_SLAVE:
                # Records without key rows go whole, oldest first, up to about ``limit``
                # keys (every record still owes at least one key).
                for row in cur.rows(f"SELECT {_ROWLESS_COLUMNS} FROM kms_run WHERE id_head IS "
                                    "NOT NULL AND created_at <= ? ORDER BY created_at LIMIT ?"
                                    + self._for_update, (cutoff, int(limit))):
                    if len(expired) >= limit:
                        break
                    run = self._rowless_run(row)
                    assert run.pending is not None
                    owed = idruns.owed(run.pending, run.id_count)
                    ids = run.ids()
                    expired.extend(ids[i] for i in owed)
                    self._release(cur, [(run, i) for i in owed])
                expired.sort()
        return expired

    def discard_keys(self, key_ids: Sequence[str]) -> int:
        if not key_ids:
            return 0
        with self._transaction() as cur:
            rows = self._lock_keys(cur, key_ids)
            rowless = self._rowless(cur, _absent(key_ids, rows))
            if rows:
                self._remove_keys(cur, sorted(rows), self._runs_of(cur, list(rows.values())))
            released = self._release(cur, list(rowless.values())) if rowless else 0
        return len(rows) + released

    def count_keys(self, role: str | None = None) -> int:
        with self._transaction() as cur:
            if role is None:
                rows = cur.rows("SELECT COUNT(*) FROM kms_key")
            else:
                rows = cur.rows("SELECT COUNT(*) FROM kms_key WHERE role = ?", (role,))
            rowless = 0 if role == ROLE_MASTER else int(cur.rows(
                "SELECT COALESCE(SUM(remaining), 0) FROM kms_run WHERE id_head IS NOT NULL")
                [0][0])
        return int(rows[0][0]) + rowless

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kme_id={self.kme_id!r})"
