"""The shared key store: PostgreSQL through psycopg 3 and a connection pool.

Several API worker processes of one KME may share one schema. Every transaction that
changes a pool first locks the pool's row (``SELECT ... FOR UPDATE``), so reservations,
cuts and appends on one pool serialise across processes while different pools proceed
in parallel; key rows are locked in key-ID order before they are delivered or deleted,
so two deliveries never deadlock and never both take the same row. Statements run at
READ COMMITTED: each one after a lock wait sees the rows the lock holder committed.

Each KME uses its own schema (``schema=``, default ``corridor``); the schema and tables
are created idempotently under an advisory lock, so workers may start together. Tests
give every store a schema of its own.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from corridor.errors import ParameterError
from corridor.kms.store import (
    SCHEMA_STATEMENTS,
    SqlCursor,
    SqlKeyStore,
    StoreUnavailableError,
    StoreWriteError,
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@functools.lru_cache(maxsize=1024)
def _placeholders(query: str) -> str:
    # The shared SQL uses "?" placeholders and never a literal "?" or "$". PostgreSQL's
    # own numbered placeholders go to the server as they are (psycopg's RawCursor):
    # psycopg's "%s" form is parsed in Python for every statement longer than its cache
    # limit, which cost about 4 ms for a 100-key batch (a 100-ID IN list, a 100-row
    # INSERT).
    parts = query.split("?")
    return parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], 1))


class _PgCursor(SqlCursor):
    def __init__(self, cursor: psycopg.RawCursor[Any]) -> None:
        self._cursor = cursor

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(_placeholders(query), tuple(params))
        return self._cursor.fetchall()

    def run(self, query: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(_placeholders(query), tuple(params))
        return self._cursor.rowcount

    def many(self, query: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._cursor.executemany(_placeholders(query), [tuple(p) for p in params])


class PostgresKeyStore(SqlKeyStore):
    """A KME's store in a PostgreSQL schema, shareable by several worker processes.

    Args:
        conninfo: libpq connection string or URL (``postgresql://host:5432/db``).
        kek: the 32-byte key-encryption key.
        kme_id: the KME that owns the schema; opening it as another KME is refused.
        schema: the schema holding this KME's tables.
        min_size, max_size: connection pool bounds per process.
        timeout_s: how long to wait for a connection before answering "unavailable".
    """

    _for_update = " FOR UPDATE"
    _ddl_types: ClassVar[Mapping[str, str]] = {
        "blob": "BYTEA", "bigint": "BIGINT", "double": "DOUBLE PRECISION"}

    def __init__(self, conninfo: str, kek: bytes, *, kme_id: str, schema: str = "corridor",
                 min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0) -> None:
        super().__init__(kek, kme_id)
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise ParameterError("schema", schema,
                                 "must be a lower-case SQL identifier of at most 63 characters")
        if not 1 <= min_size <= max_size:
            raise ParameterError("max_size", max_size, f"must be >= min_size = {min_size} >= 1")
        self.schema = schema
        self._search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))
        self._pool: ConnectionPool[Any] | None = ConnectionPool(
            conninfo, min_size=min_size, max_size=max_size, timeout=timeout_s,
            kwargs={"autocommit": True}, configure=self._configure, open=False,
            name=f"corridor-kms-{kme_id}")
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout:
            self._pool.close()
            self._pool = None
            raise StoreUnavailableError(
                f"PostgreSQL not reachable within {timeout_s:g} s") from None
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._search_path)

    def _create_schema(self) -> None:
        with self._transaction() as cur:
            lock_id = zlib.crc32(f"corridor-kms-schema:{self.schema}".encode())
            cur.run("SELECT pg_advisory_xact_lock(?)", (lock_id,))
            cur.run(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)).as_string(None))
            for statement in SCHEMA_STATEMENTS:
                cur.run(statement.format(**self._ddl_types))
            self._initialise(cur)

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[SqlCursor]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("the key store is closed")
        try:
            with pool.connection() as conn, conn.transaction(), \
                    psycopg.RawCursor(conn) as cursor:
                if not durable:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
                yield _PgCursor(cursor)
        except PoolTimeout:
            raise StoreUnavailableError("no PostgreSQL connection free in time") from None
        except psycopg.OperationalError as exc:  # disk full, connection lost, shutdown
            raise StoreWriteError(f"PostgreSQL error: {type(exc).__name__}") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        return f"PostgresKeyStore(kme_id={self.kme_id!r}, schema={self.schema!r})"
