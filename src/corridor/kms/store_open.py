"""Opening a key store from its URL: the one module that knows every back end.

``store.py`` defines the ``KeyStore`` contract and the SQL shared by the back ends; each
back end (``store_sqlite.py``, ``store_postgres.py``) imports it. Choosing a back end from
a URL lives here, apart from both, so that ``store.py`` never imports its back ends.
"""

from __future__ import annotations

from typing import Any

from corridor.errors import ParameterError
from corridor.kms.store import KeyStore


def open_store(url: str, kek: bytes, *, kme_id: str, **options: Any) -> KeyStore:
    """Open a store from a URL: ``sqlite:///path/to/kme.db`` (or a plain path) or
    ``postgresql://...`` (``schema=`` and pool sizes as keyword options)."""
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so that SQLite users never need psycopg's import cost.
        from corridor.kms.store_postgres import PostgresKeyStore

        return PostgresKeyStore(url, kek, kme_id=kme_id, **options)
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if "://" in path:
        raise ParameterError("store_url", url,
                             "must be sqlite:///<path>, a file path, or postgresql://...")
    from corridor.kms.store_sqlite import SqliteKeyStore

    return SqliteKeyStore(path, kek, kme_id=kme_id, **options)
