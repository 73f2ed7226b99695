"""Test harness: every run gets its own Postgres database and RabbitMQ vhost, dropped at the end.

The environment is set here, at import, before any ``zenthor`` module reads its settings, so the
in-process broker and every worker subprocess the tests start talk to this run's database and
vhost only. Each test starts from empty tables and empty queues (``clean_state``).

Where the services are: ``ZENTHOR_TEST_PG_ADMIN_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and ``ZENTHOR_TEST_AMQP_BASE`` (default
``amqp://guest:guest@127.0.0.1:5672``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:10]
PG_ADMIN_URL = os.environ.get("ZENTHOR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("ZENTHOR_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
TEST_DB = f"zenthor_test_{RUN_ID}"
TEST_VHOST = f"zenthor_test_{RUN_ID}"

_admin_base = PG_ADMIN_URL.rsplit("/", 1)[0]
TEST_ENV = {
    "DATABASE_URL": f"{_admin_base}/{TEST_DB}",
    "RABBITMQ_URL": f"{AMQP_BASE}/{TEST_VHOST}",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "PLUGINS_CONFIG": str(ROOT / "config" / "plugins.toml"),
    "ZENTHOR_ENV": "test",
    # Most tests send several messages and expect an answer to each; the collect tests (issue 14)
    # set QUEUE_MODE=collect themselves.
    "QUEUE_MODE": "followup",
}
os.environ.update(TEST_ENV)
# Process logs, spools and scratch files of this run live in one directory, removed at the end
# (kept, and named, with ZENTHOR_TEST_KEEP_LOGS=1); subprocesses inherit it through TMPDIR.
RUN_TMP = tempfile.mkdtemp(prefix=f"zenthor-test-{RUN_ID}-")
tempfile.tempdir = os.environ["TMPDIR"] = RUN_TMP


def _remove_run_tmp() -> None:
    if os.environ.get("ZENTHOR_TEST_KEEP_LOGS"):
        sys.stderr.write(f"\ntest logs kept in {RUN_TMP}\n")
    else:
        shutil.rmtree(RUN_TMP, ignore_errors=True)


atexit.register(_remove_run_tmp)  # also when no test ran (collection only, -k matching nothing)
# Worker subprocesses import test helpers (tests.support) by module path.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def test_services():
    """Create this run's database and vhost, migrate, and drop both when the run ends."""
    services.create_database(PG_ADMIN_URL, TEST_DB)
    services.create_vhost(TEST_VHOST)
    try:
        from zenthor.db import init_database
        from zenthor.migrations import migrate

        # This process races up to 16 threads of its own at once (each holding a connection
        # through a barrier or an open transaction) beside an in-process worker; the worker
        # processes the tests start keep the default pool (DATABASE_POOL_SIZE).
        init_database(pool_size=32)
        migrate()
        yield TEST_ENV
    finally:
        try:
            from zenthor.broker import broker

            broker.close()
        except Exception:  # noqa: BLE001
            pass
        from zenthor.db import close_database

        close_database()
        services.drop_database(PG_ADMIN_URL, TEST_DB)
        services.delete_vhost(TEST_VHOST)


@pytest.fixture(autouse=True)
def clean_state(test_services):
    """Empty every table and queue before each test, and restore cached settings after it."""
    services.truncate_all()
    services.purge_queues()
    yield
    from zenthor.settings import reset_settings_cache

    reset_settings_cache()
    # A thread that used the database and ended without closing holds a pooled connection for the
    # rest of the run; enough of them starve later tests. This thread's own connection and one of
    # a heartbeat thread still on its way out are allowed.
    deadline = time.monotonic() + 3  # daemon threads (heartbeat, watchdog) close theirs as they end
    while services.connections_in_use() > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = services.connections_in_use() - 2
    assert leaked <= 0, (
        f"{leaked} pooled database connection(s) still checked out after the test: a thread used "
        "the database without closing it (use tests.support.workers.DbThread)"
    )


@pytest.fixture
def settings_env(monkeypatch):
    """Set environment variables for one test and reload the settings: ``settings_env(X="1")``."""
    from zenthor.settings import get_settings, reset_settings_cache

    def apply(**values: str):
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))
        reset_settings_cache()
        return get_settings()

    yield apply
    reset_settings_cache()


@pytest.fixture
def worker():
    """An in-process Dramatiq worker on the real RabbitMQ vhost (8 threads), stopped after the test."""
    from tests.support.workers import InProcessWorker

    running = InProcessWorker()
    yield running
    running.stop()
