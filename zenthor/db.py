"""The database proxy, its pooled Postgres connection, and transactions.

Models bind to :data:`database` (a proxy) so importing a model never opens a connection; an entry
point calls :func:`init_database` once. Peewee keeps one connection per thread; the pool hands
them out and takes them back when a thread calls ``database.close()`` (see the DbConnection
middleware), so a worker's threads never share a connection.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import unquote, urlparse

from peewee import DatabaseProxy
from playhouse.postgres_ext import PooledPostgresqlExtDatabase

database = DatabaseProxy()
_init_lock = threading.Lock()
_initialised_url: str | None = None


def connect_kwargs(url: str) -> dict[str, Any]:
    """Turn a ``postgresql://user:pass@host:port/db`` URL into psycopg2 keyword arguments."""
    parsed = urlparse(url)
    kwargs: dict[str, Any] = {
        "database": unquote(parsed.path.lstrip("/")),
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": unquote(parsed.username) if parsed.username else "postgres",
        # Every timestamp is stored and compared in UTC.
        "options": "-c timezone=UTC",
        "connect_timeout": 5,
    }
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    return kwargs


def init_database(url: str | None = None, pool_size: int | None = None) -> PooledPostgresqlExtDatabase:
    """Point :data:`database` at Postgres (from settings unless ``url`` is given); idempotent."""
    global _initialised_url
    from zenthor.settings import get_settings

    settings = get_settings()
    url = url or settings.DATABASE_URL
    with _init_lock:
        if _initialised_url == url and database.obj is not None:
            return database.obj
        if database.obj is not None:
            database.obj.close_all()
        kwargs = connect_kwargs(url)
        db = PooledPostgresqlExtDatabase(
            kwargs.pop("database"),
            max_connections=pool_size or settings.DATABASE_POOL_SIZE,
            stale_timeout=300,
            timeout=30,
            autoconnect=True,
            **kwargs,
        )
        database.initialize(db)
        _initialised_url = url
        return db


def close_database() -> None:
    """Close every pooled connection (tests and process shutdown)."""
    global _initialised_url
    with _init_lock:
        if database.obj is not None:
            database.obj.close_all()
        _initialised_url = None


def execute(sql: str, params: tuple | list | dict | None = None) -> list[tuple]:
    """Run one SQL statement and return its rows (``[]`` when it returns none)."""
    cursor = database.execute_sql(sql, params)
    if cursor.description is None:
        return []
    return cursor.fetchall()
