"""A benchmark's own scratch Postgres database (and RabbitMQ vhost), created and always dropped.

Every benchmark runs against services of its own so that it neither sees nor leaves state:

    scratch = Scratch("turn", rabbitmq=True, env={"DATABASE_POOL_SIZE": "64"})  # at import time

    def main() -> int:
        with scratch.services():  # create, migrate, (declare the actors), run, tear down
            ...

``Scratch(...)`` must run before anything imports zenthor, because it points ``DATABASE_URL``
(and ``RABBITMQ_URL``) at the scratch services through the environment the settings read.
The admin connection and the AMQP server come from ``ZENTHOR_BENCH_PG_ADMIN_URL`` and
``ZENTHOR_BENCH_AMQP_BASE``; names are ``zenthor_bench_<name>_<8 hex digits>``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"


class Scratch:
    """The names and environment of one benchmark run's scratch database and vhost."""

    def __init__(self, name: str, *, rabbitmq: bool = False, env: Mapping[str, str] | None = None) -> None:
        """Choose this run's names and set the environment zenthor's settings will read.

        ``name`` is the benchmark's (part of the database and vhost names); ``rabbitmq`` adds a
        vhost, ``RABBITMQ_URL`` and the declared actors; ``env`` holds extra settings, which
        override the defaults (``LOG_LEVEL=WARNING``).
        """
        self.run = uuid.uuid4().hex[:8]
        self.admin_url = os.environ.get("ZENTHOR_BENCH_PG_ADMIN_URL", DEFAULT_ADMIN_URL)
        self.amqp_base = os.environ.get("ZENTHOR_BENCH_AMQP_BASE", DEFAULT_AMQP_BASE)
        self.name = f"zenthor_bench_{name}_{self.run}"
        self.rabbitmq = rabbitmq
        settings = {
            "DATABASE_URL": f"{self.admin_url.rsplit('/', 1)[0]}/{self.name}",
            "LOG_LEVEL": "WARNING",
        }
        if rabbitmq:
            settings["RABBITMQ_URL"] = f"{self.amqp_base}/{self.name}"
        settings.update(env or {})
        os.environ.update(settings)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # tests.support lives in the checkout, not the package

    @contextmanager
    def services(self) -> Iterator[None]:
        """Create the database (and vhost), migrate it, yield; then always close and drop them.

        With ``rabbitmq`` the actors are declared on the broker before the body runs (as in a
        worker), and the broker is closed before the vhost is deleted.
        """
        from tests.support import services

        services.create_database(self.admin_url, self.name)
        if self.rabbitmq:
            services.create_vhost(self.name)
        try:
            from zenthor.db import init_database
            from zenthor.migrations import migrate

            init_database()
            migrate()
            if self.rabbitmq:
                import zenthor.actors  # noqa: F401 - declares the actors on the broker

            yield
        finally:
            self._close_connections()
            services.drop_database(self.admin_url, self.name)
            if self.rabbitmq:
                services.delete_vhost(self.name)

    def _admin_query(self, sql: str, params: tuple = ()) -> list[tuple] | None:
        """Run ``sql`` on the admin database; None when it fails (no pg_stat_statements there)."""
        import psycopg2

        try:
            with psycopg2.connect(self.admin_url) as conn, conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg2.Error:
            return None

    def reset_statement_stats(self) -> bool:
        """Forget this database's ``pg_stat_statements`` entries; False when the server has none
        (the extension must be preloaded and created in the admin database, see bench/README.md)."""
        return (
            self._admin_query(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = %s), 0)",
                (self.name,),
            )
            is not None
        )

    def statement_stats(self, limit: int = 8) -> list[tuple] | None:
        """This database's costliest statements since the reset: (calls, mean planning ms, plans,
        mean execution ms, total ms, the statement's start); None without pg_stat_statements."""
        return self._admin_query(
            "SELECT calls, total_plan_time / greatest(plans, 1), plans, mean_exec_time,"
            "       total_plan_time + total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
            "  FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)"
            " ORDER BY total_plan_time + total_exec_time DESC LIMIT %s",
            (self.name, limit),
        )

    def _close_connections(self) -> None:
        """Close the broker (if it was ever made) and the database pool; teardown goes on regardless."""
        if self.rabbitmq and "zenthor.broker" in sys.modules:
            try:
                sys.modules["zenthor.broker"].broker.close()
            except Exception:  # noqa: BLE001 - a broker that will not close must not keep the scratch
                pass
        from zenthor.db import close_database

        close_database()
