"""The operator's commands from the runbook, against the real database and broker."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.support.factories import make_conversation, make_job
from zenthor.cli import cli
from zenthor.db import execute
from zenthor.models import AgentJob
from zenthor.queue import claim, fail


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_migrate_reports_an_up_to_date_schema():
    result = run("migrate")
    assert result.exit_code == 0 and "schema is up to date" in result.output
    status = run("migrate", "--status")
    assert "0001_initial" in status.output and "pending" not in status.output


def test_status_requeue_and_retry_as_the_runbook_uses_them():
    stale = make_job(make_conversation("stale"))
    claim(stale, "dead-worker")
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (stale,))
    failed = make_job(make_conversation("failed"), max_attempts=1)
    fail(claim(failed, "w"), reason="server", message="boom")
    make_job(make_conversation("waiting"))

    as_json = run("ops", "status", "--json")
    assert as_json.exit_code == 1  # no worker consumes dispatch: the same verdict as /healthz
    snapshot = json.loads(as_json.output)
    assert snapshot["health"]["status"] == "unavailable"
    assert snapshot["health"]["checks"]["dispatch_consumers"].startswith("none")
    assert snapshot["jobs"]["processing"] == 1 and snapshot["jobs"]["failed"] == 1
    assert snapshot["jobs"]["pending"] == 1 and snapshot["expired_leases"] == 1
    assert snapshot["lease_holders"] == [{"processor_id": "dead-worker", "processing": 1}]
    status = run("ops", "status")
    human = status.output
    assert "expired leases: 1" in human and "last sweep:  never" in human
    assert status.exit_code == 1 and "health:      UNHEALTHY" in human and "dispatch_consumers: none" in human

    requeued = run("ops", "requeue-stale")
    assert requeued.exit_code == 0 and "requeued 1" in requeued.output
    assert AgentJob.get_by_id(stale).status == "pending"

    retried = run("ops", "retry-job", str(failed))
    assert retried.exit_code == 0 and f"job {failed} is pending again" in retried.output
    assert (AgentJob.get_by_id(failed).status, AgentJob.get_by_id(failed).attempts) == ("pending", 0)
    again = CliRunner().invoke(cli, ["ops", "retry-job", str(failed)])
    assert again.exit_code == 1 and "is pending, not failed" in again.output
    missing = CliRunner().invoke(cli, ["ops", "retry-job", "999999"])
    assert missing.exit_code == 1 and "job 999999 does not exist" in missing.output
