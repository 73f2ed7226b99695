"""Create and drop this run's Postgres database and RabbitMQ vhost; reset state between tests."""

from __future__ import annotations

import shutil
import subprocess
import time

import psycopg2
from psycopg2 import sql

from zenthor.db import connect_kwargs


def _admin(url: str):
    kwargs = connect_kwargs(url)
    kwargs.pop("options", None)
    conn = psycopg2.connect(**kwargs)
    conn.autocommit = True
    return conn


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE ``name`` (fresh for this run)."""
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE ``name``, disconnecting whatever still uses it."""
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    for attempt in range(5):
        result = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return
        time.sleep(1 + attempt)
    raise RuntimeError(
        f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}"
    )


def create_vhost(name: str) -> None:
    """A fresh vhost with full permissions for guest."""
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    """Delete the vhost and every queue in it."""
    try:
        _rabbitmqctl("delete_vhost", name)
    except RuntimeError:
        pass


TABLES_TO_KEEP = {"schema_migration"}


def truncate_all() -> None:
    """Empty every application table (keeps the migration history)."""
    from zenthor.db import database, execute

    with database.connection_context():
        tables = [
            row[0]
            for row in execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
            if row[0] not in TABLES_TO_KEEP
        ]
        if tables:
            execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


def purge_queues() -> None:
    """Drop every message waiting in this vhost's queues (declares them if needed).

    A test that cut every connection of the vhost (a broker outage) leaves this thread's publisher
    connection closed, and the broker replaces it only once it has been idle for a while: a
    closed one is dropped and the purge runs again on a fresh one.
    """
    import pika.exceptions

    import zenthor.actors  # noqa: F401 - declares the actors, hence the queues
    from zenthor.broker import broker

    try:
        _purge(broker)
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
        broker.drop_thread_connection()
        _purge(broker)


def _purge(broker) -> None:
    for queue in list(broker.get_declared_queues()):
        broker.declare_queue(queue, ensure=True)
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_purge(name)


def connections_in_use() -> int:
    """How many pooled connections are checked out by some thread right now."""
    from zenthor.db import database

    return len(database.obj._in_use) if database.obj is not None else 0
