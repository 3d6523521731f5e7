"""The embedded key store: one SQLite file per KME.

WAL journal (readers never block the writer), ``secure_delete`` (freed cells are
zeroed, so consumed segments and delivered keys do not linger in the file), a busy
timeout for several processes on one file, and ``BEGIN IMMEDIATE`` for every
transaction that may write, so that two writers never interleave a reservation.
``synchronous=FULL`` by default: a transaction the slave KME has answered for survives
power loss as well as ``kill -9``; ``NORMAL`` is faster and still safe against a process
crash (the WAL is in the OS page cache), not against the OS or power failing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.store import (
    SCHEMA_STATEMENTS,
    SqlCursor,
    SqlKeyStore,
    StoreUnavailableError,
    StoreWriteError,
)

_SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


class _SqliteCursor(SqlCursor):
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cursor.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor.execute(sql, tuple(params)).rowcount

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._cursor.executemany(sql, params)


def _is_write_failure(exc: BaseException) -> bool:
    """A statement failed because the database cannot be written (disk full, I/O error,
    a damaged file), not because of what it asked (constraints, programming errors)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class SqliteKeyStore(SqlKeyStore):
    """A KME's store in one SQLite file (WAL, secure delete).

    Args:
        path: the database file (created with mode 0600 if missing).
        kek: the 32-byte key-encryption key.
        kme_id: the KME that owns the file; opening it as another KME is refused.
        busy_timeout_s: how long a writer waits for another process's lock.
        synchronous: ``FULL`` (default), ``EXTRA`` or ``NORMAL`` (see module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], kek: bytes, *, kme_id: str,
                 busy_timeout_s: float = 30.0, synchronous: str = "FULL") -> None:
        super().__init__(kek, kme_id)
        if synchronous not in _SYNCHRONOUS:
            raise ParameterError("synchronous", synchronous, f"must be one of {_SYNCHRONOUS}")
        if not busy_timeout_s > 0:
            raise ParameterError("busy_timeout_s", busy_timeout_s, "must be > 0")
        self.path = Path(path)
        self._synchronous = synchronous
        if not self.path.exists():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise ParameterError("store path", str(self.path),
                                     f"cannot be created ({exc.strerror})") from None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise ParameterError("store path", str(self.path),
                                     f"must support WAL journaling (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA secure_delete = ON")
        except sqlite3.DatabaseError as exc:
            raise ParameterError("store path", str(self.path),
                                 f"is not a usable SQLite database ({exc})") from None
        self._conn = conn
        try:
            with self._transaction() as cur:
                for statement in SCHEMA_STATEMENTS:
                    cur.run(statement.format(**self._ddl_types))
                self._initialise(cur)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[SqlCursor]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreUnavailableError("the key store is closed")
            relax = not durable and self._synchronous != "NORMAL"
            if relax:
                # In WAL mode a later synchronous commit also syncs this one's frames,
                # and the WAL keeps commit order, so relaxing one commit reorders nothing.
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._transaction_on(conn) as cur:
                    yield cur
            finally:
                if relax:
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    @contextmanager
    def _transaction_on(self, conn: sqlite3.Connection) -> Iterator[SqlCursor]:
        cursor = conn.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            cursor.close()
            raise StoreUnavailableError(f"key store busy: {exc}") from None
        try:
            yield _SqliteCursor(cursor)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            cursor.close()
            if _is_write_failure(exc):
                raise StoreWriteError(f"key store write failed: {exc}") from None
            raise
        try:
            cursor.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise StoreWriteError(f"key store commit failed: {exc}") from None
        finally:
            cursor.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteKeyStore(kme_id={self.kme_id!r}, path={str(self.path)!r})"
