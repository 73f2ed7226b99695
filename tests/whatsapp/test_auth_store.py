"""The WhatsApp session store: where it lives, creating it from many processes, local → Postgres.

Every store here is a real whatsmeow store created by neonize's bundled whatsmeow: SQLite files in
``tmp_path`` and Postgres schemas in this run's database (``DATABASE_URL``, set by conftest). Each
test drops the schemas it made.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from click.testing import CliRunner
from psycopg2 import sql

from zenthor.channels.whatsapp.auth_store import (
    AuthMigrationError,
    StoreLocation,
    ensure_store,
    list_devices,
    migrate_auth,
    schema_for_account,
    store_location,
    store_version,
)
from zenthor.cli.whatsapp_auth import migrate_auth_command
from zenthor.db import connect_kwargs

ROOT = Path(__file__).resolve().parents[2]
JID_A = "15550001111:7@s.whatsapp.net"
JID_B = "15550002222:3@s.whatsapp.net"
PEER = "15552223333@s.whatsapp.net"
READBACK_TAG = "zenthor-test-readback"


# --- helpers --------------------------------------------------------------------------------------


def _pg():
    conn = psycopg2.connect(**connect_kwargs(os.environ["DATABASE_URL"]))
    conn.autocommit = True
    return conn


def _pg_query(query, params=()):
    with _pg() as conn, conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


@pytest.fixture
def pg_store():
    """A factory of Postgres store locations with fresh account ids; drops their schemas afterwards."""
    made: list[StoreLocation] = []

    def make(prefix: str = "acct") -> StoreLocation:
        location = store_location(
            f"{prefix}-{uuid.uuid4().hex[:8]}",
            mode="postgres",
            auth_dir="unused",
            database_url=os.environ["DATABASE_URL"],
        )
        made.append(location)
        return location

    yield make
    conn = _pg()
    with conn.cursor() as cur:
        # neonize's own ClientFactory never closes the store it opens: end the test's read-back ones.
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (READBACK_TAG,),
        )
        for location in made:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(location.schema)))
    conn.close()


def _local(tmp_path: Path, account: str = "default", sub: str = "auth") -> StoreLocation:
    return store_location(
        account, mode="local", auth_dir=tmp_path / sub, database_url=os.environ["DATABASE_URL"]
    )


def make_source(tmp_path: Path, jid: str = JID_A, push_name: str = "Zenthor", sub: str = "auth") -> Path:
    """A local whatsmeow store (created by whatsmeow) holding one synthetic device and its rows."""
    location = _local(tmp_path, sub=sub)
    ensure_store(location)
    r = os.urandom
    with sqlite3.connect(location.path) as db:
        db.execute(
            "INSERT INTO whatsmeow_device (jid, lid, facebook_uuid, registration_id, noise_key, identity_key,"
            " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,"
            " adv_account_sig_key, adv_device_sig, platform, business_name, push_name)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (jid, "123456789:7@lid", str(uuid.uuid4()), 4242, r(32), r(32), r(32), 1, r(64), r(32), b"",
             r(64), r(32), r(64), "linux", "", push_name),
        )  # fmt: skip
        db.execute("INSERT INTO whatsmeow_pre_keys VALUES (?,?,?,?)", (jid, 1, r(32), 1))
        db.execute("INSERT INTO whatsmeow_pre_keys VALUES (?,?,?,?)", (jid, 2, r(32), 0))
        db.execute("INSERT INTO whatsmeow_sessions VALUES (?,?,?)", (jid, "15552223333.0", r(200)))
        db.execute("INSERT INTO whatsmeow_identity_keys VALUES (?,?,?)", (jid, "15552223333.0", r(32)))
        db.execute("INSERT INTO whatsmeow_app_state_version VALUES (?,?,?,?)", (jid, "regular", 3, r(128)))
        db.execute(
            "INSERT INTO whatsmeow_app_state_mutation_macs VALUES (?,?,?,?,?)",
            (jid, "regular", 3, r(32), r(32)),
        )
        db.execute(
            "INSERT INTO whatsmeow_contacts (our_jid, their_jid, push_name) VALUES (?,?,?)",
            (jid, PEER, "Bob"),
        )
        db.execute("INSERT INTO whatsmeow_chat_settings VALUES (?,?,?,?,?)", (jid, PEER, 0, 1, 0))
        db.execute("INSERT INTO whatsmeow_lid_map VALUES (?,?)", ("987654321", "15552223333"))
    db.close()
    return location.path


def sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    db.close()
    return {t: n for t, n in counts.items() if t.startswith("whatsmeow_") and t != "whatsmeow_version"}


def pg_tables(schema: str) -> set[str]:
    rows = _pg_query("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    return {row[0] for row in rows}


def pg_snapshot(schema: str) -> dict[str, list[tuple]]:
    """Every row of every whatsmeow table (the version table aside), sorted, for before/after checks."""
    snapshot = {}
    for table in sorted(pg_tables(schema) - {"whatsmeow_version"}):
        rows = _pg_query(sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
        snapshot[table] = sorted(
            (tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows), key=repr
        )
    return snapshot


def pg_counts(schema: str) -> dict[str, int]:
    return {table: len(rows) for table, rows in pg_snapshot(schema).items()}


def whatsmeow_reads(location: StoreLocation) -> list[tuple[str, str]]:
    """(JID, push name) of each device, read by neonize's own ClientFactory from the store."""
    from neonize.client import ClientFactory

    url = f"{location.name}&application_name={READBACK_TAG}"
    return [(f"{d.JID.User}@{d.JID.Server}", d.PushName) for d in ClientFactory.get_all_devices_from_db(url)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args: str):
    return CliRunner().invoke(migrate_auth_command, list(args))


# --- (a) where the store is -----------------------------------------------------------------------


def test_store_location_local(tmp_path):
    location = store_location("sales.eu-1", mode="local", auth_dir=tmp_path / "wa", database_url="x")
    assert location.mode == "local"
    assert location.path == tmp_path / "wa" / "sales.eu-1.sqlite3"
    assert location.name == str(location.path)
    assert location.schema is None
    assert str(location.path) in location.describe()
    relative = store_location("default", mode="local", auth_dir="var/whatsapp", database_url="x")
    assert relative.path == Path.cwd() / "var" / "whatsapp" / "default.sqlite3"


def test_store_location_postgres_builds_a_libpq_url():
    location = store_location(
        "default",
        mode="postgres",
        auth_dir="unused",
        database_url="postgresql://zen:p%40ss@db.internal:6543/zenthor",
    )
    assert location.schema == "whatsmeow_default"
    assert location.name == (
        "postgres://zen:p%40ss@db.internal:6543/zenthor?sslmode=disable&search_path=whatsmeow_default"
    )
    assert "p%40ss" not in location.describe() and "p@ss" not in location.describe()
    assert "p%40ss" not in repr(location)
    assert (
        location.describe()
        == "Postgres schema whatsmeow_default in database zenthor on db.internal:6543 (user zen)"
    )

    kept = store_location(
        "default",
        mode="postgres",
        auth_dir="unused",
        database_url="postgresql://zen@db/zenthor?sslmode=verify-full&sslrootcert=/etc/ca.pem&x=y",
    )
    assert kept.name == (
        "postgres://zen@db:5432/zenthor?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        "&search_path=whatsmeow_default"
    )


def test_one_schema_per_account_even_when_names_fold_together():
    assert schema_for_account("shop_1") == "whatsmeow_shop_1"
    folded = {schema_for_account(a) for a in ("shop_1", "shop-1", "Shop_1", "shop.1")}
    assert len(folded) == 4
    assert all(s.startswith("whatsmeow_shop_1") for s in folded)
    long_a, long_b = "a" * 63 + "x", "a" * 63 + "y"
    assert schema_for_account(long_a) != schema_for_account(long_b)
    assert all(len(schema_for_account(a)) <= 63 for a in (long_a, long_b, "A" * 64))


@pytest.mark.parametrize(
    ("account", "problem"),
    [
        ("", "empty"),
        ("a b", "characters other than"),
        ("../etc", "characters other than"),
        ("ümlaut", "characters other than"),
        ("x" * 65, "65 characters long (at most 64)"),
    ],
)
def test_bad_account_ids_are_refused(account, problem):
    for mode in ("local", "postgres"):
        with pytest.raises(ValueError, match=re.escape(problem)):
            store_location(
                account, mode=mode, auth_dir="var/whatsapp", database_url=os.environ["DATABASE_URL"]
            )


def test_bad_mode_and_url_are_refused():
    with pytest.raises(ValueError, match="'local' or 'postgres'"):
        bad_mode: Any = "redis"
        store_location("default", mode=bad_mode, auth_dir="x", database_url="postgresql://h/db")
    with pytest.raises(ValueError, match="DATABASE_URL"):
        store_location("default", mode="postgres", auth_dir="x", database_url="mysql://h/db")


# --- creating the store ---------------------------------------------------------------------------


def test_ensure_store_local_creates_a_private_whatsmeow_file(tmp_path):
    location = _local(tmp_path, sub="deep/auth")
    assert list_devices(location) == [] and not location.path.exists()  # listing does not create
    version = ensure_store(location)
    assert location.path.is_file()
    assert (location.path.parent.stat().st_mode & 0o777) == 0o700
    assert (location.path.stat().st_mode & 0o777) == 0o600
    assert store_version(location) == version
    assert ensure_store(location) == version  # idempotent
    assert list_devices(location) == []


def test_ensure_store_from_six_processes_at_once(tmp_path, pg_store):
    location = pg_store("race")
    assert store_version(location) is None
    script = textwrap.dedent(
        """
        import os, sys
        import neonize.client  # load the Go library before the start signal, so the calls overlap
        from zenthor.channels.whatsapp.auth_store import ensure_store, store_location

        url = os.environ["DATABASE_URL"]
        location = store_location(sys.argv[1], mode="postgres", auth_dir=".", database_url=url)
        print("ready", flush=True)
        sys.stdin.readline()
        print("version", *ensure_store(location), flush=True)
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, location.account_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for _ in range(6)
    ]
    try:
        for proc in procs:  # a barrier: every process is loaded and waiting
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failures = [
        (p.returncode, err[-2000:]) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
    ]
    assert not failures
    versions = {out.strip().splitlines()[-1] for out, _ in results}

    local = _local(tmp_path)
    local_version = ensure_store(local)  # the same whatsmeow, in SQLite: the reference schema
    assert versions == {f"version {local_version[0]} {local_version[1]}"}
    assert store_version(location) == local_version
    assert pg_tables(location.schema) == set(sqlite_counts(local.path)) | {"whatsmeow_version"}
    assert _pg_query(
        sql.SQL("SELECT count(*) FROM {}.whatsmeow_version").format(sql.Identifier(location.schema))
    ) == [(1,)]
    assert not pg_tables("public") & pg_tables(location.schema)  # nothing landed outside the schema


def test_ensure_store_leaves_no_whatsmeow_connection_behind(pg_store):
    location = pg_store()
    ensure_store(location)
    ensure_store(location)
    list_devices(location)
    leftover = _pg_query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'zenthor-whatsmeow-%%'"
    )
    assert leftover == [(0,)]


# --- (c) migration --------------------------------------------------------------------------------


def test_migrate_through_the_command_and_whatsmeow_reads_it_back(tmp_path, pg_store):
    source = make_source(tmp_path)
    before, listing = digest(source), sorted(os.listdir(source.parent))
    target = pg_store()

    result = run_cli("--account", target.account_id, "--from", str(source))

    assert result.exit_code == 0, result.output
    assert whatsmeow_reads(target) == [(JID_A, "Zenthor")]
    assert list_devices(target) == ["15550001111@s.whatsapp.net"]
    assert pg_counts(target.schema) == sqlite_counts(source)
    assert digest(source) == before and sorted(os.listdir(source.parent)) == listing
    assert "whatsmeow_device" in result.output and "whatsmeow_pre_keys" in result.output
    assert target.describe() in result.output
    assert "15550001111@s.whatsapp.net" in result.output


def test_migrate_through_the_function(tmp_path, pg_store):
    source = make_source(tmp_path, push_name="Zen Desk")
    before = digest(source)
    target = pg_store()

    report = migrate_auth(target.account_id, source, target)

    expected = sqlite_counts(source)
    assert report.tables == expected
    assert list(report.tables)[0] == "whatsmeow_device"
    order = list(report.tables)
    assert order.index("whatsmeow_app_state_version") < order.index("whatsmeow_app_state_mutation_macs")
    assert report.total_rows == sum(expected.values()) == 10
    assert report.devices == ["15550001111@s.whatsapp.net"]
    assert report.replaced_devices == [] and report.skipped_tables == []
    assert report.version == store_version(target) == store_version(_local(tmp_path))
    assert whatsmeow_reads(target) == [(JID_A, "Zen Desk")]
    assert pg_counts(target.schema) == expected
    # Booleans and bytes came across as such.
    rows = _pg_query(
        sql.SQL("SELECT key_id, uploaded, key FROM {}.whatsmeow_pre_keys ORDER BY key_id").format(
            sql.Identifier(target.schema)
        )
    )
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as db:
        keys = dict(db.execute("SELECT key_id, key FROM whatsmeow_pre_keys").fetchall())
    db.close()
    assert [(k, u, bytes(key)) for k, u, key in rows] == [(1, True, keys[1]), (2, False, keys[2])]
    assert digest(source) == before


def test_command_defaults_come_from_settings(tmp_path, pg_store, settings_env, monkeypatch):
    target = pg_store()
    monkeypatch.chdir(tmp_path)  # WHATSAPP_AUTH_DIR defaults to var/whatsapp, relative
    settings_env(WHATSAPP_ACCOUNT_ID=target.account_id, WHATSAPP_AUTH_DIR="var/whatsapp")
    local = store_location(target.account_id, mode="local", auth_dir="var/whatsapp", database_url="x")
    local.path.parent.mkdir(parents=True)
    made = make_source(tmp_path)
    os.replace(made, local.path)

    result = run_cli()

    assert result.exit_code == 0, result.output
    assert str(local.path) in result.output
    assert list_devices(target) == ["15550001111@s.whatsapp.net"]


# --- (d) a target that already holds a device -----------------------------------------------------


def test_second_migration_refused_and_force_replaces(tmp_path, pg_store):
    target = pg_store()
    first = make_source(tmp_path, jid=JID_A, sub="one")
    second = make_source(tmp_path, jid=JID_B, push_name="Other", sub="two")
    assert run_cli("--account", target.account_id, "--from", str(first)).exit_code == 0
    kept = pg_snapshot(target.schema)

    refused = run_cli("--account", target.account_id, "--from", str(second))
    assert refused.exit_code == 1
    assert "already holds device(s) 15550001111@s.whatsapp.net" in refused.output
    assert "--force" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    with pytest.raises(AuthMigrationError, match="already holds"):
        migrate_auth(target.account_id, second, target)
    assert pg_snapshot(target.schema) == kept

    forced = run_cli("--account", target.account_id, "--from", str(second), "--force")
    assert forced.exit_code == 0, forced.output
    assert "replaced device(s): 15550001111@s.whatsapp.net" in forced.output
    assert whatsmeow_reads(target) == [(JID_B, "Other")]
    assert pg_counts(target.schema) == sqlite_counts(second)


# --- (e) (f) refusals -----------------------------------------------------------------------------


def test_version_mismatch_refused(tmp_path, pg_store):
    source = make_source(tmp_path)
    with sqlite3.connect(source) as db:
        db.execute("UPDATE whatsmeow_version SET version = version - 1")
    db.close()
    before = digest(source)
    target = pg_store()
    version, compat = ensure_store(target)

    with pytest.raises(AuthMigrationError) as refused:
        migrate_auth(target.account_id, source, target)

    message = str(refused.value)
    assert f"source {source} has version {version - 1} (compat {compat})" in message
    assert f"has version {version} (compat {compat})" in message and target.describe() in message
    assert list_devices(target) == []
    assert digest(source) == before
    result = run_cli("--account", target.account_id, "--from", str(source))
    assert result.exit_code == 1 and "versions differ" in result.output


def test_source_without_device_refused(tmp_path, pg_store):
    empty = _local(tmp_path)
    ensure_store(empty)
    target = pg_store()
    with pytest.raises(AuthMigrationError, match="holds no WhatsApp device"):
        migrate_auth(target.account_id, empty.path, target)
    result = run_cli("--account", target.account_id, "--from", str(tmp_path / "missing.sqlite3"))
    assert result.exit_code == 1 and "no local WhatsApp session at" in result.output


def test_refuses_a_local_target_and_another_accounts_target(tmp_path, pg_store):
    source = make_source(tmp_path)
    with pytest.raises(AuthMigrationError, match="must be a Postgres store"):
        migrate_auth("default", source, _local(tmp_path, sub="other"))
    target = pg_store()
    with pytest.raises(AuthMigrationError, match="belongs to account"):
        migrate_auth("someone-else", source, target)


# --- (g) one transaction --------------------------------------------------------------------------


def test_failure_mid_copy_leaves_the_target_unchanged(tmp_path, pg_store):
    target = pg_store()
    first = make_source(tmp_path, jid=JID_A, sub="one")
    migrate_auth(target.account_id, first, target)
    kept = pg_snapshot(target.schema)
    # A second session whose sessions table holds a row of no device: Postgres refuses it (foreign
    # key) after the device and the earlier tables went in, and after the old device was deleted.
    broken = make_source(tmp_path, jid=JID_B, push_name="Broken", sub="two")
    with sqlite3.connect(broken) as db:
        db.execute(
            "INSERT INTO whatsmeow_sessions VALUES (?,?,?)", ("19990000000:1@s.whatsapp.net", "x.0", b"s")
        )
    db.close()

    with pytest.raises(AuthMigrationError) as failed:
        migrate_auth(target.account_id, broken, target, force=True)

    assert "while copying whatsmeow_sessions" in str(failed.value)
    assert "nothing was changed" in str(failed.value)
    assert pg_snapshot(target.schema) == kept
    assert whatsmeow_reads(target) == [(JID_A, "Zenthor")]
