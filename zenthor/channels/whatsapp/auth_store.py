"""Where an account's WhatsApp session lives: a local SQLite file or a whatsmeow store in Postgres.

whatsmeow (through neonize) owns the store's schema: it creates and upgrades its ``whatsmeow_*``
tables itself when a store is opened. This module decides *where* that store is
(:func:`store_location`), creates it once and safely when several processes start together
(:func:`ensure_store`), and moves a local session into Postgres (:func:`migrate_auth`).

- One store per account: a SQLite file ``<WHATSAPP_AUTH_DIR>/<account>.sqlite3``, or one Postgres
  schema ``whatsmeow_<account>`` (neonize resumes the *first* device of a store, so two accounts
  must never share one).
- The store's ``name`` is the string handed to neonize's ``NewClient`` / ``ClientFactory``: a
  string starting with ``postgres`` is a lib/pq URL, anything else a SQLite path.
- whatsmeow's schema upgrade is not safe to run from several processes on a fresh Postgres store
  (``duplicate key ... pg_type_typname_nsp_index``): :func:`ensure_store` runs it under an advisory
  lock, and every host calls it before its client opens the store.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import uuid
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlparse

import psycopg2
from psycopg2 import errors as pg_errors
from psycopg2 import sql
from psycopg2.extras import execute_values

from zenthor.db import connect_kwargs

_logger = logging.getLogger(__name__)

StoreMode = Literal["local", "postgres"]

ACCOUNT_ID_MAX = 64
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9._-]+")
_SCHEMA_PREFIX = "whatsmeow_"
_PG_IDENTIFIER_MAX = 63  # Postgres silently truncates longer identifiers: two accounts could collide
# The advisory lock class of whatsmeow stores ("WAMS"); the second key is derived from the schema.
_LOCK_CLASS = 0x57414D53
# Query parameters of DATABASE_URL that lib/pq and libpq both understand and that we keep.
_KEPT_SSL_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
_VERSION_TABLE = "whatsmeow_version"
_DEVICE_TABLE = "whatsmeow_device"
# "user[.agent][:device]@server" as whatsmeow prints a device JID.
_DEVICE_JID_RE = re.compile(r"^(?P<user>[^@:.]+)(?:\.\d+)?(?::\d+)?@(?P<server>[^@]+)$")
_COPY_PAGE = 500
_DEFAULT_LOCK_TIMEOUT_S = 120.0


class AuthStoreError(Exception):
    """A WhatsApp session store could not be created, opened or read; the message says why."""


class AuthMigrationError(AuthStoreError):
    """A session migration was refused or failed; nothing was changed in the target."""


@dataclass(frozen=True)
class StoreLocation:
    """Where one account's whatsmeow store lives.

    ``name`` is what neonize takes as its database name (it may hold a password: it is left out of
    ``repr``; use :meth:`describe` in messages and logs).
    """

    mode: StoreMode
    account_id: str
    name: str = field(repr=False)
    schema: str | None = None  # postgres only
    path: Path | None = None  # local only

    def describe(self) -> str:
        """A human description of the store, without any password."""
        if self.mode == "local":
            return f"SQLite file {self.path}"
        parsed = urlparse(self.name)
        database = unquote(parsed.path.lstrip("/"))
        user = unquote(parsed.username) if parsed.username else "postgres"
        return (
            f"Postgres schema {self.schema} in database {database} on "
            f"{parsed.hostname}:{parsed.port or 5432} (user {user})"
        )

    def __str__(self) -> str:
        return self.describe()


@dataclass
class MigrationReport:
    """What :func:`migrate_auth` did."""

    account_id: str
    source: Path
    target: str  # the target described, without password
    version: tuple[int, int]  # whatsmeow (version, compat) of both stores
    devices: list[str]  # bare JIDs of the migrated devices, as whatsmeow reads them back
    tables: dict[str, int] = field(default_factory=dict)  # rows copied per table, in copy order
    replaced_devices: list[str] = field(default_factory=list)  # target devices deleted (force)
    cleared: dict[str, int] = field(default_factory=dict)  # target rows deleted before the copy
    skipped_tables: list[str] = field(default_factory=list)  # in only one of the two stores

    @property
    def total_rows(self) -> int:
        """Rows copied over all tables."""
        return sum(self.tables.values())


# --- where the store is ---------------------------------------------------------------------------


def validate_account_id(account_id: str) -> str:
    """Return ``account_id`` if it is usable in a file name and a schema name, else raise ValueError."""
    if not isinstance(account_id, str) or not account_id:
        raise ValueError("WhatsApp account id is empty")
    if len(account_id) > ACCOUNT_ID_MAX:
        raise ValueError(
            f"WhatsApp account id {account_id[:20]!r}... is {len(account_id)} characters long "
            f"(at most {ACCOUNT_ID_MAX})"
        )
    if not _ACCOUNT_RE.fullmatch(account_id):
        raise ValueError(
            f"WhatsApp account id {account_id!r} has characters other than letters, digits, '-', '_' and '.'"
        )
    return account_id


def schema_for_account(account_id: str) -> str:
    """The Postgres schema of an account's store: ``whatsmeow_<account>``.

    The account is lowercased and every character outside ``[a-z0-9_]`` becomes ``_``. When that
    loses information (``Shop-1`` and ``shop_1`` would meet) or the name would pass Postgres's 63
    characters, a short hash of the exact account id is appended, so two accounts never share one.
    """
    validate_account_id(account_id)
    safe = re.sub(r"[^a-z0-9_]", "_", account_id.lower())
    schema = _SCHEMA_PREFIX + safe
    if safe == account_id and len(schema) <= _PG_IDENTIFIER_MAX:
        return schema
    digest = sha256(account_id.encode()).hexdigest()[:8]
    return f"{schema[: _PG_IDENTIFIER_MAX - len(digest) - 1]}_{digest}"


def store_location(
    account_id: str, *, mode: StoreMode, auth_dir: str | os.PathLike[str], database_url: str
) -> StoreLocation:
    """Where ``account_id``'s session lives in ``mode``.

    local: ``<auth_dir>/<account>.sqlite3`` (made absolute). postgres: a lib/pq URL built from
    ``database_url`` (``postgres://user:pass@host:port/db?sslmode=…&search_path=<schema>``), keeping
    an ``sslmode`` (and ssl file parameters) set there, ``sslmode=disable`` otherwise.
    Raises ValueError naming the problem (bad account id, mode or URL).
    """
    validate_account_id(account_id)
    if mode == "local":
        path = Path(os.path.abspath(Path(auth_dir).expanduser() / f"{account_id}.sqlite3"))
        # neonize opens "file:<path>?_foreign_keys=on": a '?' or '#' in the path would cut it.
        if "?" in str(path) or "#" in str(path):
            raise ValueError(f"WhatsApp auth directory {auth_dir!s} must not contain '?' or '#'")
        return StoreLocation(mode="local", account_id=account_id, name=str(path), path=path)
    if mode == "postgres":
        schema = schema_for_account(account_id)
        return StoreLocation(
            mode="postgres", account_id=account_id, name=_libpq_url(database_url, schema), schema=schema
        )
    raise ValueError(f"WhatsApp auth mode must be 'local' or 'postgres' (got {mode!r})")


def _libpq_url(database_url: str, schema: str) -> str:
    parsed = urlparse(database_url)
    database = unquote(parsed.path.lstrip("/"))
    if parsed.scheme not in ("postgres", "postgresql") or not database:
        raise ValueError("DATABASE_URL must look like postgresql://user@host:5432/dbname")
    user = unquote(parsed.username) if parsed.username else "postgres"
    credentials = quote(user, safe="")
    if parsed.password:
        credentials += ":" + quote(unquote(parsed.password), safe="")
    host = parsed.hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    query = dict(parse_qsl(parsed.query))
    params = [("sslmode", query.get("sslmode", "disable"))]
    params += [(key, query[key]) for key in _KEPT_SSL_PARAMS[1:] if key in query]
    params.append(("search_path", schema))
    netloc = f"{credentials}@{host}:{parsed.port or 5432}"
    return f"postgres://{netloc}/{quote(database, safe='')}?{urlencode(params)}"


# --- talking to whatsmeow -------------------------------------------------------------------------


def _with_params(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def _whatsmeow_devices_raw(location: StoreLocation) -> list[str]:
    """Open the store through whatsmeow (which creates or upgrades its schema) and list its devices.

    Calls the Go export behind neonize's ``ClientFactory.get_all_devices_from_db`` directly:
    neonize's wrapper turns a Go error into an unhelpful ``ValueError`` (it parses the error text
    as a device) and breaks on a push name holding a comma; here a Go error is an AuthStoreError.
    Returns whatsmeow's device JIDs (``user:device@server``).
    """
    from neonize._binder import func_callback_bytes2, gocode
    from neonize.utils.log import log_whatsmeow

    name = location.name
    tag = None
    if location.mode == "postgres":
        # whatsmeow never closes the store it opens for this call: each call would leave one idle
        # Postgres connection behind for the life of the process. Tag it, and end it afterwards.
        tag = f"zenthor-whatsmeow-{uuid.uuid4().hex[:12]}"
        name = _with_params(name, application_name=tag, connect_timeout="10")
    callback = func_callback_bytes2(log_whatsmeow)  # kept referenced for the duration of the call
    try:
        raw = gocode.GetAllDevices(name.encode(), callback)
    finally:
        if tag is not None:
            _end_tagged_connections(location, tag)
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    if text.startswith("error:"):
        raise AuthStoreError(f"whatsmeow could not open {location.describe()}: {text[6:].strip()}")
    if not text:
        return []
    # neonize's format: "jid,push_name,business_name,initialized" joined by "|\x01|"; a JID has no comma.
    return [entry.split(",", 1)[0] for entry in text.split("|\x01|")]


def _end_tagged_connections(location: StoreLocation, tag: str) -> None:
    try:
        with closing(_pg_connect(location, autocommit=True)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (tag,),
            )
    except (psycopg2.Error, AuthStoreError) as error:  # a leaked idle connection is no reason to fail
        _logger.warning("could not close whatsmeow's idle connection %s: %s", tag, error)


def bare_jid(device_jid: str) -> str:
    """``user:device@server`` (or ``user.agent:device@server``) → ``user@server``."""
    match = _DEVICE_JID_RE.match(device_jid)
    return f"{match['user']}@{match['server']}" if match else device_jid


def list_devices(location: StoreLocation) -> list[str]:
    """Bare JIDs (``user@server``) of the devices in the store, as whatsmeow reads them.

    A store that does not exist yet has none (and is not created: call :func:`ensure_store`).
    Opening a store upgrades it when the bundled whatsmeow is newer, so for Postgres this runs
    under the store's advisory lock too.
    """
    if store_version(location) is None:
        return []
    if location.mode == "postgres":
        with _store_lock(location, _DEFAULT_LOCK_TIMEOUT_S):
            raw = _whatsmeow_devices_raw(location)
    else:
        raw = _whatsmeow_devices_raw(location)
    return [bare_jid(jid) for jid in raw]


# --- creating the store ---------------------------------------------------------------------------


def _pg_kwargs(location: StoreLocation) -> dict[str, Any]:
    kwargs = connect_kwargs(location.name)
    query = dict(parse_qsl(urlparse(location.name).query))
    kwargs.update({key: query[key] for key in _KEPT_SSL_PARAMS if key in query})
    return kwargs


def _pg_connect(location: StoreLocation, *, autocommit: bool = False):
    try:
        conn = psycopg2.connect(**_pg_kwargs(location))
    except psycopg2.Error as error:
        raise AuthStoreError(f"cannot connect to {location.describe()}: {_first_line(error)}") from None
    conn.autocommit = autocommit
    return conn


def _lock_key(schema: str) -> tuple[int, int]:
    value = zlib.crc32(schema.encode())
    return _LOCK_CLASS, value - (1 << 32) if value >= 1 << 31 else value


@contextmanager
def _store_lock(location: StoreLocation, lock_timeout_s: float) -> Iterator[Any]:
    """Hold the store's advisory lock (session level) on a connection of our own; yields a cursor."""
    assert location.schema is not None
    with closing(_pg_connect(location, autocommit=True)) as conn, conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(lock_timeout_s * 1000)}ms",))
        try:
            cur.execute("SELECT pg_advisory_lock(%s, %s)", _lock_key(location.schema))
        except pg_errors.LockNotAvailable:
            raise AuthStoreError(
                f"timed out after {lock_timeout_s:g}s waiting for another process creating "
                f"{location.describe()}"
            ) from None
        try:
            yield cur
        finally:
            try:
                cur.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(location.schema))
            except psycopg2.Error:  # closing the connection releases it as well
                pass


def ensure_store(
    location: StoreLocation, *, lock_timeout_s: float = _DEFAULT_LOCK_TIMEOUT_S
) -> tuple[int, int]:
    """Create or upgrade the store once, safely from several processes at once; idempotent.

    postgres: under an advisory lock keyed on the schema, create the schema if missing and let
    whatsmeow create or upgrade its tables. local: create the parent directory (mode 0700) and let
    whatsmeow create the file (mode 0600). Returns whatsmeow's ``(version, compat)``.
    Raises AuthStoreError.
    """
    if location.mode == "postgres":
        assert location.schema is not None
        try:
            with _store_lock(location, lock_timeout_s) as cur:
                cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (location.schema,))
                # Checked first: CREATE SCHEMA needs the CREATE privilege even when the schema exists.
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(location.schema))
                    )
                    _logger.info("created schema %s for the WhatsApp session store", location.schema)
                _whatsmeow_devices_raw(location)
                version = _pg_version(cur, location.schema)
        except psycopg2.Error as error:
            raise AuthStoreError(f"cannot create {location.describe()}: {_first_line(error)}") from None
    else:
        assert location.path is not None
        existed = location.path.exists()
        location.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _whatsmeow_devices_raw(location)
        if not existed:
            os.chmod(location.path, 0o600)  # the file holds the session's private keys
        version = store_version(location)
    if version is None:
        raise AuthStoreError(f"whatsmeow left no {_VERSION_TABLE} row in {location.describe()}")
    return version


def store_version(location: StoreLocation) -> tuple[int, int] | None:
    """whatsmeow's ``(version, compat)`` of the store, or None when the store does not exist yet."""
    if location.mode == "postgres":
        assert location.schema is not None
        with closing(_pg_connect(location, autocommit=True)) as conn, conn.cursor() as cur:
            return _pg_version(cur, location.schema)
    assert location.path is not None
    if not location.path.is_file():
        return None
    with closing(_sqlite_readonly(location.path)) as conn:
        return _sqlite_version(conn)


def _pg_version(cur: Any, schema: str) -> tuple[int, int] | None:
    cur.execute("SELECT to_regclass(%s)", (f'"{schema}".{_VERSION_TABLE}',))
    if cur.fetchone()[0] is None:
        return None
    cur.execute(sql.SQL("SELECT version, compat FROM {}.{}").format(*_ident(schema, _VERSION_TABLE)))
    rows = cur.fetchall()
    return (int(rows[0][0]), int(rows[0][1])) if len(rows) == 1 else None


def _sqlite_readonly(path: Path) -> sqlite3.Connection:
    # mode=ro: the local session is evidence and a fallback; a migration must not change a byte of it.
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)


def _sqlite_version(conn: sqlite3.Connection) -> tuple[int, int] | None:
    if _VERSION_TABLE not in _sqlite_tables(conn):
        return None
    rows = conn.execute(f"SELECT version, compat FROM {_VERSION_TABLE}").fetchall()
    return (int(rows[0][0]), int(rows[0][1])) if len(rows) == 1 else None


def _sqlite_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'whatsmeow\\_%' ESCAPE '\\'"
    )
    return {row[0] for row in rows}


def _ident(*names: str) -> list[sql.Identifier]:
    return [sql.Identifier(name) for name in names]


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "pgerror", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- local → Postgres -----------------------------------------------------------------------------


def migrate_auth(
    account_id: str, source_path: str | os.PathLike[str], target: StoreLocation, *, force: bool = False
) -> MigrationReport:
    """Copy a local SQLite session into the account's Postgres store, in one transaction.

    Refuses (AuthMigrationError) unless both stores have the same whatsmeow ``(version, compat)``,
    when the source has no device, and when the target already holds a device unless ``force``
    (then the target's rows are deleted in the same transaction). Every ``whatsmeow_*`` table
    present in both is copied in foreign-key order (read from the Postgres catalogue), columns by
    name. The source file is opened read-only and left untouched.
    """
    validate_account_id(account_id)
    if target.mode != "postgres" or target.schema is None:
        raise AuthMigrationError(f"the migration target must be a Postgres store (got {target.describe()})")
    if target.account_id != account_id:
        raise AuthMigrationError(
            f"target {target.describe()} belongs to account {target.account_id!r}, not {account_id!r}"
        )
    source = Path(os.path.abspath(Path(source_path).expanduser()))
    if not source.is_file():
        raise AuthMigrationError(f"no local WhatsApp session at {source}")
    try:
        src = _sqlite_readonly(source)
    except sqlite3.Error as error:
        raise AuthMigrationError(f"cannot open {source} read-only: {error}") from None
    with closing(src):
        try:
            src_tables = _sqlite_tables(src)
            src_version = _sqlite_version(src)
            src_devices = (
                [row[0] for row in src.execute(f"SELECT jid FROM {_DEVICE_TABLE} ORDER BY jid")]
                if _DEVICE_TABLE in src_tables
                else []
            )
        except sqlite3.Error as error:
            raise AuthMigrationError(f"{source} is not a readable whatsmeow store: {error}") from None
        if src_version is None:
            raise AuthMigrationError(f"{source} is not a whatsmeow store (no {_VERSION_TABLE} row)")
        if not src_devices:
            raise AuthMigrationError(f"{source} holds no WhatsApp device: nothing to migrate (pair first)")

        try:
            target_version = ensure_store(target)
        except AuthStoreError as error:
            raise AuthMigrationError(str(error)) from None
        if target_version != src_version:
            raise AuthMigrationError(
                f"whatsmeow schema versions differ: source {source} has version {src_version[0]} "
                f"(compat {src_version[1]}), target {target.describe()} has version "
                f"{target_version[0]} (compat {target_version[1]}); open both with the same neonize"
            )
        report = MigrationReport(
            account_id=account_id,
            source=source,
            target=target.describe(),
            version=src_version,
            devices=[],
        )
        _copy(src, src_tables, target, force, report)

    expected = sorted({bare_jid(jid) for jid in src_devices})
    try:
        report.devices = sorted(list_devices(target))
    except AuthStoreError as error:
        raise AuthMigrationError(f"copied, but whatsmeow cannot read {target.describe()}: {error}") from None
    if report.devices != expected:
        raise AuthMigrationError(
            f"copied, but whatsmeow reads devices {report.devices} from {target.describe()} "
            f"instead of {expected}"
        )
    _logger.info(
        "migrated the WhatsApp session of %s from %s to %s: %d rows in %d tables",
        account_id, source, report.target, report.total_rows, len(report.tables),
    )  # fmt: skip
    return report


def _copy(
    src: sqlite3.Connection, src_tables: set[str], target: StoreLocation, force: bool, report: MigrationReport
) -> None:
    """The one transaction: lock, check the target is free, clear it, copy, verify counts."""
    schema = target.schema
    assert schema is not None
    conn = _pg_connect(target)
    step = "checking the target"
    try:
        with conn, conn.cursor() as cur:  # commits on success, rolls back on any exception
            # Serialises with ensure_store and with a second migration of the same account.
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", _lock_key(schema))
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname LIKE 'whatsmeow\\_%%'",
                (schema,),
            )
            target_tables = {row[0] for row in cur.fetchall()}
            common = (src_tables & target_tables) - {_VERSION_TABLE}
            report.skipped_tables = sorted((src_tables ^ target_tables) - {_VERSION_TABLE})
            if _DEVICE_TABLE not in common:
                raise AuthMigrationError(f"{target.describe()} has no {_DEVICE_TABLE} table")
            order = _fk_order(cur, schema, common)

            cur.execute(sql.SQL("SELECT jid FROM {}.{} ORDER BY jid").format(*_ident(schema, _DEVICE_TABLE)))
            existing = [row[0] for row in cur.fetchall()]
            if existing and not force:
                raise AuthMigrationError(
                    f"{target.describe()} already holds device(s) "
                    f"{', '.join(bare_jid(j) for j in existing)}; pass --force to replace them"
                )
            report.replaced_devices = [bare_jid(jid) for jid in existing]
            # Children first. Without force only rows of tables that do not cascade from the
            # device (lid_map, privacy_tokens) can be left over; they would collide with the copy.
            for table in reversed(order):
                step = f"clearing {table}"
                cur.execute(sql.SQL("DELETE FROM {}.{}").format(*_ident(schema, table)))
                if cur.rowcount:
                    report.cleared[table] = cur.rowcount
            for table in order:
                step = f"copying {table}"
                report.tables[table] = _copy_table(src, cur, schema, table)
    except AuthMigrationError:
        report.tables.clear()
        raise
    except psycopg2.Error as error:
        report.tables.clear()
        raise AuthMigrationError(
            f"migration to {target.describe()} failed while {step}, nothing was changed: {_first_line(error)}"
        ) from None
    except sqlite3.Error as error:
        report.tables.clear()
        raise AuthMigrationError(
            f"reading {report.source} failed while {step}, "
            f"nothing was changed in {target.describe()}: {error}"
        ) from None
    finally:
        conn.close()


def _fk_order(cur: Any, schema: str, tables: set[str]) -> list[str]:
    """The tables, parents before children, from the foreign keys in the Postgres catalogue."""
    cur.execute(
        "SELECT child.relname, parent.relname FROM pg_constraint con"
        " JOIN pg_class child ON child.oid = con.conrelid"
        " JOIN pg_class parent ON parent.oid = con.confrelid"
        " JOIN pg_namespace n ON n.oid = con.connamespace"
        " WHERE con.contype = 'f' AND n.nspname = %s",
        (schema,),
    )
    parents: dict[str, set[str]] = {table: set() for table in tables}
    for child, parent in cur.fetchall():
        if child in parents and parent in tables and parent != child:
            parents[child].add(parent)
    order: list[str] = []
    while parents:
        # Device first among the tables that are ready, then by name, so the order is stable.
        ready = sorted((t for t, p in parents.items() if not p), key=lambda t: (t != _DEVICE_TABLE, t))
        if not ready:
            raise AuthMigrationError(f"foreign-key cycle among {sorted(parents)} in schema {schema}")
        for table in ready:
            order.append(table)
            del parents[table]
        for pending in parents.values():
            pending.difference_update(ready)
    return order


def _copy_table(src: sqlite3.Connection, cur: Any, schema: str, table: str) -> int:
    cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    )
    target_columns = cur.fetchall()
    source_columns = {row[1] for row in src.execute(f"PRAGMA table_info({_sqlite_ident(table)})")}
    missing = sorted(source_columns - {name for name, _ in target_columns})
    if missing:  # equal versions make this impossible; refuse rather than drop data
        raise AuthMigrationError(f"columns {missing} of {table} exist in the source but not in the target")
    columns = [(name, kind) for name, kind in target_columns if name in source_columns]
    names = [name for name, _ in columns]
    convert = [_converter(kind) for _, kind in columns]
    select = f"SELECT {', '.join(map(_sqlite_ident, names))} FROM {_sqlite_ident(table)}"
    insert = sql.SQL("INSERT INTO {}.{} ({}) VALUES %s").format(
        *_ident(schema, table), sql.SQL(", ").join(_ident(*names))
    )
    copied = 0
    rows = src.execute(select)
    while batch := rows.fetchmany(_COPY_PAGE):
        values = [tuple(fn(value) for fn, value in zip(convert, row, strict=True)) for row in batch]
        execute_values(cur, insert, values, page_size=_COPY_PAGE)
        copied += len(values)
    cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(*_ident(schema, table)))
    in_target = cur.fetchone()[0]
    if in_target != copied:
        raise AuthMigrationError(f"{table}: copied {copied} rows but the target holds {in_target}")
    return copied


def _sqlite_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _converter(kind: str):
    """How one SQLite value becomes the Postgres column's value."""
    if kind == "boolean":
        return lambda v: v if v is None or isinstance(v, bool) else bool(int(v))  # SQLite stores 0/1
    if kind == "uuid":
        return lambda v: str(uuid.UUID(bytes=v)) if isinstance(v, bytes) and len(v) == 16 else v
    if kind == "bytea":
        return lambda v: v.encode() if isinstance(v, str) else v
    return lambda v: v
