"""Schema migrations run from several places at once (two containers starting together)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PG_ADMIN_URL, RUN_ID, _admin_base
from tests.support import services


def test_three_migrate_processes_on_a_fresh_database_all_succeed():
    """The waiting ones must not sit inside a statement while the first builds indexes
    concurrently (CREATE INDEX CONCURRENTLY waits for their snapshots: a deadlock)."""
    name = f"zenthor_test_{RUN_ID}_migrate"
    services.create_database(PG_ADMIN_URL, name)
    try:
        env = {**os.environ, "DATABASE_URL": f"{_admin_base}/{name}"}
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "zenthor.cli", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outcomes = [(run.wait(timeout=120), *run.communicate()) for run in runs]
        for code, _out, err in outcomes:
            assert code == 0, err[-2000:]
        said = sorted(out.strip().splitlines()[-1] for _, out, _ in outcomes)
        # One applied everything; the others found the schema up to date.
        assert said[-2:] == ["schema is up to date", "schema is up to date"], said
    finally:
        services.drop_database(PG_ADMIN_URL, name)
