"""The database proxy, its pooled Postgres connection, and transactions.

Models bind to :data:`database` (a proxy) so importing a model never opens a connection; an entry
point calls :func:`init_database` once. Peewee keeps one connection per thread; the pool hands
them out and takes them back when a thread calls ``database.close()``, so a worker's threads never
share a connection. A worker thread holds one only while it uses the database: it gives it back
after each message (the DbConnection middleware) and before each model call (:func:`give_back`),
so ``DATABASE_POOL_SIZE`` bounds a process's connections whatever its thread count (issue 13,
item 4). A connection handed back moments ago is handed out again without Peewee's liveness
round trip. The lease heartbeat has a pool of its own (:func:`own_pool`), so it never waits
behind busy threads.

Round trips (issue 13): psycopg2 connections run in autocommit mode and Peewee opens a transaction
with a ``BEGIN`` of its own, one round trip that does nothing. :class:`ZenthorDatabase` sends that
``BEGIN`` in the same simple-query string as the transaction's first statement (psycopg2
interpolates parameters on the client, so ``BEGIN; <statement>`` is one round trip), and sends no
``COMMIT``/``ROLLBACK`` for a transaction that sent nothing. :func:`transaction_then` also folds a
read that must run *after* the commit into the ``COMMIT`` round trip, and :func:`execute_prepared`
plans a hot statement once per connection (server-side ``PREPARE``/``EXECUTE``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import peewee
import psycopg2.extensions
from peewee import DatabaseProxy
from playhouse.postgres_ext import PooledPostgresqlExtDatabase

database = DatabaseProxy()
_init_lock = threading.Lock()
_initialised_url: str | None = None
_own_pools: list[ZenthorDatabase] = []


class RoundTrips:
    """What this process sent to Postgres while counting was on (benchmarks and tests).

    ``round_trips`` counts ``cursor.execute`` calls: Peewee's own ``BEGIN``/``COMMIT``/``ROLLBACK``
    and savepoints as well as every statement. ``statements`` counts the SQL statements in them (a
    multi-statement string is one round trip). ``by_kind`` counts statements by their first word.
    """

    def __init__(self) -> None:
        self.enabled = False
        self._mu = threading.Lock()
        self.round_trips = 0
        self.statements = 0
        self.by_kind: Counter[str] = Counter()
        # Each round trip's thread and statement kinds, in order (tests: one thread's sequence).
        self.log: list[tuple[int, tuple[str, ...]]] = []

    def reset(self) -> None:
        """Zero every count."""
        with self._mu:
            self.round_trips = 0
            self.statements = 0
            self.by_kind = Counter()
            self.log = []

    def of_thread(self, ident: int | None = None) -> list[tuple[str, ...]]:
        """The statement kinds of each round trip sent by thread ``ident`` (default: this one)."""
        ident = threading.get_ident() if ident is None else ident
        with self._mu:
            return [kinds for thread, kinds in self.log if thread == ident]

    def add(self, query: object) -> None:
        """Count one round trip carrying ``query`` (a SQL template, before interpolation)."""
        text = query.decode() if isinstance(query, bytes) else query if isinstance(query, str) else "?"
        # Split on ';' in the template: our statements carry no ';' inside literals, and values
        # are interpolated after this point.
        kinds = [part.split(None, 1)[0].upper() for part in text.split(";") if part.strip()] or ["?"]
        with self._mu:
            self.round_trips += 1
            self.statements += len(kinds)
            self.by_kind.update(kinds)
            if len(self.log) < 100_000:  # a benchmark counts far more; tests read short runs
                self.log.append((threading.get_ident(), tuple(kinds)))


round_trips = RoundTrips()


class _CountingCursor(psycopg2.extensions.cursor):
    """A cursor that reports each ``execute`` to :data:`round_trips` while it is enabled."""

    def execute(self, query, vars=None):  # noqa: A002 - psycopg2's own parameter name
        if round_trips.enabled:
            round_trips.add(query)
        return super().execute(query, vars)


_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


# A pooled connection handed back less than this long ago is handed out again without Peewee's
# liveness check (a ``SELECT 1`` round trip under the pool's lock, shared by every thread): a turn
# checks out around each model call. One that broke meanwhile fails its first statement, which
# on_live_session retries on a fresh connection (lease writes) or Dramatiq retries (the rest).
TRUSTED_FOR_S = 5.0


class _Connection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers the statements it prepared on the server, and when
    it was last handed back to the pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()
        # Set when a prepared statement turned out missing, stale or already there: the server's
        # set is not what ``prepared`` says, so the next use starts with ``DEALLOCATE ALL``.
        self.prepared_unknown = False
        self.returned_at = 0.0


class ZenthorDatabase(PooledPostgresqlExtDatabase):
    """The pooled Postgres database, with Peewee's ``BEGIN`` folded into the first statement.

    ``begin()`` sends nothing; while this thread is inside a transaction (Peewee's stack is not
    empty) and its connection has no transaction open on the server (libpq's transaction status,
    read without a round trip), the next statement goes out as ``BEGIN; <statement>``. A
    transaction is therefore open on the server before its first statement runs, exactly as with
    a separate ``BEGIN``; nothing runs outside it. ``commit()`` and ``rollback()`` send nothing when
    no transaction is open on the server (the transaction sent no statement). Every connection's
    cursors can count round trips (:data:`round_trips`).
    """

    def _connect(self):
        conn = super()._connect()
        conn.cursor_factory = _CountingCursor
        return conn

    def _is_closed(self, conn) -> bool:
        """The pool's check before it hands ``conn`` out: local state only, when it was handed
        back moments ago and is idle; else Peewee's own check (a round trip)."""
        if conn.closed:
            return True
        try:
            idle = conn.get_transaction_status() == _IDLE
        except psycopg2.Error:
            return True
        if idle and time.monotonic() - getattr(conn, "returned_at", 0.0) < TRUSTED_FOR_S:
            return False
        return super()._is_closed(conn)

    def _close(self, conn, close_conn: bool = False) -> None:
        if hasattr(conn, "returned_at"):
            conn.returned_at = time.monotonic()
        super()._close(conn, close_conn)

    def _no_transaction_sent(self) -> bool:
        """True when this thread's connection is open and has no transaction open on the server
        (libpq's status, read without a round trip)."""
        conn = self._state.conn
        if conn is None or self._state.closed:
            return False  # nothing to tell: Peewee's own behaviour applies
        try:
            return conn.get_transaction_status() == _IDLE
        except psycopg2.Error:
            return False

    def begin(self, isolation_level=None) -> None:
        """Start a transaction: its ``BEGIN`` goes out with its first statement."""
        if self.is_closed():
            # Open the connection now, as the BEGIN did: Peewee resets the transaction stack
            # when it opens one, and the caller pushes its transaction right after this.
            self.connect()
        level = isolation_level if isolation_level is not None else self._isolation_level
        self._state.begin_sql = (
            f"BEGIN TRANSACTION ISOLATION LEVEL {self._adapter.isolation_level_str(level)}"
            if level
            else "BEGIN"
        )
        self._state.held = {}
        self._state.savepoints = 0

    def _execute_cursor(self, sql, params, **cursor_options):
        if isinstance(sql, str) and sql.startswith(_SAVEPOINT_STATEMENTS):
            # Peewee 4 keeps savepoints off its transaction stack (and DatabaseProxy makes its own),
            # so they are counted from what is sent: held() must know that a lock taken now could
            # be rolled back alone. Peewee's ROLLBACK TO is followed by a new SAVEPOINT when the
            # block goes on, or by nothing when it ends.
            self._state.savepoints = getattr(self._state, "savepoints", 0) + (
                1 if sql.startswith("SAVEPOINT ") else -1
            )
        if self._state.transactions and self._no_transaction_sent():
            begin_sql = getattr(self._state, "begin_sql", "BEGIN")
            if cursor_options:  # a server-side cursor declares itself: its BEGIN goes alone
                super()._execute_cursor(begin_sql, None)
            else:
                sql = f"{begin_sql}; {sql}"
        return super()._execute_cursor(sql, params, **cursor_options)

    def commit(self) -> None:
        """End the transaction; nothing to send when it never reached the server."""
        self._state.held = {}
        if self._no_transaction_sent():
            return
        super().commit()

    def rollback(self) -> None:
        """Roll back; nothing to send when no transaction reached the server."""
        self._state.held = {}
        if self._no_transaction_sent():
            return
        super().rollback()

    def commit_then(self, sql: str | Prepared, params: Any = None) -> list[tuple]:
        """Commit, then run ``sql`` (outside the transaction, after the commit, like a statement
        sent after ``commit()``) in the same round trip; returns its rows. A :class:`Prepared`
        statement runs as one; if the server lost it, the error can only have come after the
        commit went through, so it is prepared again on its own."""
        self._state.held = {}
        if self._no_transaction_sent():
            prefix = ""  # nothing to commit
        else:
            prefix = "COMMIT; "
        if isinstance(sql, Prepared):
            try:
                return _send_prepared(self, sql, params, prefix=prefix)
            except PreparedStatementLost:
                return _send_prepared(self, sql, params)
        cursor = self.execute_sql(f"{prefix}{sql}", params)
        return cursor.fetchall() if cursor.description is not None else []

    def held(self, *, to_add: bool = False) -> dict[Any, Any] | None:
        """What this thread's open transaction holds (row locks remembered with what they read),
        forgotten at its commit or rollback. None outside a transaction, and, with ``to_add``,
        inside a savepoint (a rollback to the savepoint would release a lock taken there)."""
        transactions = self._state.transactions
        inside_savepoint = len(transactions) > 1 or getattr(self._state, "savepoints", 0) > 0
        if not transactions or (to_add and inside_savepoint):
            return None
        held = getattr(self._state, "held", None)
        if held is None:
            held = self._state.held = {}
        return held


class ThenRows:
    """The rows of the statement :func:`transaction_then` ran after the commit (None until then)."""

    rows: list[tuple] | None = None


class _TransactionThen(peewee._transaction, ThenRows):
    """Peewee's outermost transaction whose commit runs ``then`` in the same round trip."""

    def __init__(self, db: ZenthorDatabase, sql: str | Prepared, params: Any) -> None:
        super().__init__(db)
        self.then: tuple[str | Prepared, Any] | None = (sql, params)
        self.rows: list[tuple] | None = None

    def commit(self, begin: bool = True) -> None:
        if self.then is None:
            super().commit(begin)
            return
        self.rows = self.db.commit_then(*self.then)
        self.db._run_commit_callbacks()
        if begin:
            self._begin()


@contextmanager
def transaction_then(sql: str | Prepared, params: Any = None) -> Iterator[ThenRows]:
    """A transaction like ``database.atomic()`` that runs ``sql`` right after its commit, in the
    commit's round trip (``COMMIT; <sql>``); its rows are in ``.rows`` once the block ended
    without an exception. Inside an outer transaction the block is a savepoint and ``sql`` runs
    after it, still inside the outer transaction (as a statement after the block would)."""
    db = database.obj
    if db.in_transaction():
        then = ThenRows()
        with db.atomic():
            yield then
        then.rows = execute_prepared(sql, params) if isinstance(sql, Prepared) else execute(sql, params)
        return
    with _TransactionThen(db, sql, params) as transaction:
        yield transaction


_SAVEPOINT_STATEMENTS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_DUPLICATE_PREPARED = "42P05"
_UNKNOWN_PREPARED = "26000"
# "cached plan must not change result type": a migration changed a column the statement returns
# while this connection kept its plan. Every EXECUTE would fail until the statement is prepared again.
_STALE_PLAN = "0A000"


@dataclass(frozen=True)
class Prepared:
    """A statement planned once per connection: server-side ``PREPARE``, then ``EXECUTE``.

    ``sql`` uses ``%(name)s`` placeholders; ``types`` gives each parameter's SQL type. Postgres
    plans the first five executions for their values, then keeps a generic plan when it costs no
    more: keep index predicates (partial indexes) as literals in ``sql`` so that plan still uses
    them, and check it (``EXPLAIN EXECUTE`` with ``plan_cache_mode = force_generic_plan``).
    """

    name: str
    sql: str
    types: dict[str, str]
    _order: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order: list[str] = []
        for name in _PLACEHOLDER.findall(self.sql):
            if name not in order:
                order.append(name)
        missing = set(order) - set(self.types)
        if missing:
            raise ValueError(f"prepared statement {self.name}: no type for {sorted(missing)}")
        object.__setattr__(self, "_order", tuple(order))

    @property
    def prepare_sql(self) -> str:
        """``PREPARE name (types) AS <sql with $n>`` (no client-side parameters left)."""
        dollar = _PLACEHOLDER.sub(lambda match: f"${self._order.index(match.group(1)) + 1}", self.sql)
        types = ", ".join(self.types[name] for name in self._order)
        # psycopg2 interpolates the whole string with the EXECUTE's values: escape a literal %.
        return f"PREPARE {self.name} ({types}) AS {dollar}".replace("%", "%%")

    @property
    def execute_sql(self) -> str:
        """``EXECUTE name(%(a)s, …)``: psycopg2 puts the values in as literals."""
        return f"EXECUTE {self.name}({', '.join(f'%({name})s' for name in self._order)})"


def _pgcode(error: Exception) -> str | None:
    # Peewee keeps the driver's error as .orig (its args hold only the message).
    return getattr(getattr(error, "orig", None), "pgcode", None) or getattr(error, "pgcode", None)


def _rows(cursor) -> list[tuple]:
    return cursor.fetchall() if cursor.description is not None else []


class PreparedStatementLost(peewee.DatabaseError):
    """A prepared statement the connection thought it had was missing on the server, its plan went
    stale, or it was already there: nothing ran. Outside a transaction :func:`execute_prepared`
    prepares it again at once; inside one the transaction is aborted, and its owner runs it again
    (the next use sends ``DEALLOCATE ALL`` first)."""


_LOST_CODES = (_UNKNOWN_PREPARED, _STALE_PLAN, _DUPLICATE_PREPARED)


def _send_prepared(
    db: ZenthorDatabase, statement: Prepared, params: dict[str, Any], *, prefix: str = ""
) -> list[tuple]:
    conn = db.connection()
    prepared: set[str] | None = getattr(conn, "prepared", None)
    if prepared is None:  # not one of our connections
        return _rows(db.execute_sql(prefix + statement.sql, params))
    reset = conn.prepared_unknown
    parts = ["DEALLOCATE ALL"] if reset else []
    if reset or statement.name not in prepared:
        parts.append(statement.prepare_sql)
    parts.append(statement.execute_sql)
    try:
        rows = _rows(db.execute_sql(prefix + "; ".join(parts), params))
    except peewee.DatabaseError as error:
        if _pgcode(error) in _LOST_CODES:
            conn.prepared_unknown = True
            raise PreparedStatementLost(f"prepared statement {statement.name}: {error}") from error
        if len(parts) > 1:
            # Whether the PREPARE stayed (the EXECUTE after it failed) is not known: the next use
            # starts afresh rather than fail on a duplicate inside someone's transaction.
            conn.prepared_unknown = True
        raise
    if reset:
        prepared.clear()
        conn.prepared_unknown = False
    prepared.add(statement.name)
    return rows


def execute_prepared(
    statement: Prepared, params: dict[str, Any], *, in_transaction: bool = False
) -> list[tuple]:
    """Run ``statement`` as a prepared statement of this thread's connection and return its rows.

    Prepared on the connection's first use, in the same round trip as its first ``EXECUTE``. A
    statement the server no longer knows (its session was reset under us), or whose plan a
    migration made stale, is prepared again (after ``DEALLOCATE ALL``, in the same round trip).
    Inside a transaction it runs as plain SQL unless ``in_transaction`` says the caller can run
    the whole transaction again when it raises :class:`PreparedStatementLost` (an error inside a
    transaction aborts it). Needs a session of its own on the server: direct Postgres or session
    pooling, not a transaction-pooling proxy (pgbouncer's default mode mixes sessions, and a
    statement prepared on one would be missing on the next).
    """
    db = database.obj
    if db.in_transaction():
        if not in_transaction:
            return execute(statement.sql, params)
        return _send_prepared(db, statement, params)
    try:
        return _send_prepared(db, statement, params)
    except PreparedStatementLost:
        return _send_prepared(db, statement, params)


def held_in_transaction(*, to_add: bool = False) -> dict[Any, Any] | None:
    """See :meth:`ZenthorDatabase.held` (this thread's transaction on :data:`database`)."""
    return database.obj.held(to_add=to_add)


def connect_kwargs(url: str, *, role: str = "") -> dict[str, Any]:
    """Turn a ``postgresql://user:pass@host:port/db`` URL into psycopg2 keyword arguments.

    Sessions name their process in ``pg_stat_activity.application_name``: ``zenthor <pid>``, and
    the pool's role after it when it is not the main one (``zenthor 4242 heartbeat``)."""
    parsed = urlparse(url)
    kwargs: dict[str, Any] = {
        "database": unquote(parsed.path.lstrip("/")),
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": unquote(parsed.username) if parsed.username else "postgres",
        # Every timestamp is stored and compared in UTC.
        "options": "-c timezone=UTC",
        "connect_timeout": 5,
        "application_name": f"zenthor {os.getpid()} {role}".strip(),
        # A connection that a NAT or load balancer dropped while it sat in the pool is found dead
        # within a minute instead of hanging a checkout's liveness check (TCP keepalives).
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    return kwargs


def init_database(url: str | None = None, pool_size: int | None = None) -> ZenthorDatabase:
    """Point :data:`database` at Postgres (from settings unless ``url`` is given); idempotent, unless
    ``pool_size`` differs from the pool's (then the pool is replaced)."""
    global _initialised_url
    from zenthor.settings import get_settings

    settings = get_settings()
    url = url or settings.DATABASE_URL
    with _init_lock:
        same_pool = pool_size is None or pool_size == getattr(database.obj, "_max_connections", None)
        if _initialised_url == url and database.obj is not None and same_pool:
            return database.obj
        if database.obj is not None:
            database.obj.close_all()
        db = _pool(url, pool_size or settings.DATABASE_POOL_SIZE)
        database.initialize(db)
        _initialised_url = url
        return db


def own_pool(role: str, size: int = 1) -> ZenthorDatabase:
    """A pool of ``size`` connections of its own, on the database :func:`init_database` chose,
    for work that must never wait behind the main pool's threads (the lease heartbeat). Run
    statements on it with ``execute(..., db=pool)``; :func:`close_database` closes it too."""
    from zenthor.settings import get_settings

    with _init_lock:
        pool = _pool(_initialised_url or get_settings().DATABASE_URL, size, role=role)
        _own_pools.append(pool)
        return pool


def _pool(url: str, size: int, *, role: str = "") -> ZenthorDatabase:
    """A pool of ``size`` connections to ``url``; a checkout waits up to 30 s for a free one."""
    kwargs = connect_kwargs(url, role=role)
    return ZenthorDatabase(
        kwargs.pop("database"),
        max_connections=size,
        stale_timeout=300,
        timeout=30,
        autoconnect=True,
        connection_factory=_Connection,  # remembers its prepared statements
        **kwargs,
    )


def give_back() -> None:
    """Hand this thread's connection back to the pool, unless a transaction is open on it: before
    a wait that needs no database (a model call), so the threads of a process share
    ``DATABASE_POOL_SIZE`` connections instead of holding one each. The next statement checks one
    out again (without a round trip when one was handed back moments ago)."""
    db = database.obj
    if db is None or db.is_closed() or db.in_transaction():
        return
    db.close()


def _thread_connection() -> Any:
    return getattr(getattr(database.obj, "_state", None), "conn", None)


def session_dropped() -> bool:
    """True when this thread holds a connection the server dropped (a restart, a terminated
    backend, a proxy's cut): psycopg2 marks it closed, so no round trip is needed to tell."""
    conn = _thread_connection()
    return conn is not None and bool(conn.closed)


def session_live() -> bool:
    """True when this thread holds an open connection. A statement that failed on a live session
    (a deadlock, a timeout) leaves it open; a cut one, or none at all, is not live."""
    conn = _thread_connection()
    return conn is not None and not conn.closed


def drop_session(*, idle_too: bool = False) -> None:
    """Close this thread's dead connection instead of handing it back to the pool; with
    ``idle_too``, the pool's idle connections as well (after a restart they are dead too, and each
    would cost a failed statement). Best effort: a dead session may refuse a clean close."""
    try:
        database.obj.manual_close()
    except Exception:  # noqa: BLE001 - a dead session refusing a clean close
        pass
    if idle_too:
        try:
            database.obj.close_idle()
        except Exception:  # noqa: BLE001 - best effort
            pass


def return_to_pool(logger: logging.Logger) -> None:
    """Hand this thread's connection back to the pool (Peewee's check-in closes a dead one instead
    of pooling it), at the end of a message or of a thread; a failure is logged on ``logger``, never
    raised, so a broken connection cannot fail the message or the thread's exit."""
    if database.obj is None or database.is_closed():
        return
    try:
        database.close()
    except Exception:  # noqa: BLE001 - see the docstring
        logger.warning("could not return a database connection to the pool", exc_info=True)


def close_database() -> None:
    """Close every pooled connection, of the main pool and of :func:`own_pool` (tests and
    process shutdown)."""
    global _initialised_url
    with _init_lock:
        if database.obj is not None:
            database.obj.close_all()
        for pool in _own_pools:
            pool.close_all()
        _own_pools.clear()
        _initialised_url = None


def execute(
    sql: str, params: tuple | list | dict | None = None, *, db: peewee.Database | None = None
) -> list[tuple]:
    """Run one SQL statement (on ``db``, else :data:`database`) and return its rows (``[]`` when
    it returns none)."""
    cursor = (db or database).execute_sql(sql, params)
    if cursor.description is None:
        return []
    return cursor.fetchall()
