"""The operator's commands from the runbook, against the real database and broker."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.support.factories import make_conversation, make_job
from zenthor.agent.context import load_history
from zenthor.agent.replies import FAILURE_REPLY, write_failure_reply, write_replies
from zenthor.cli import cli
from zenthor.db import execute
from zenthor.models import AgentJob
from zenthor.queue import ClaimRefused, Lease, claim, complete, fail


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
    (new,) = [j.id for j in AgentJob.select().where(AgentJob.retry_of == failed)]
    assert retried.exit_code == 0 and f"job {failed} retried as job {new} (pending)" in retried.output
    assert AgentJob.get_by_id(failed).status == "failed"
    assert (AgentJob.get_by_id(new).status, AgentJob.get_by_id(new).attempts) == ("pending", 0)
    again = CliRunner().invoke(cli, ["ops", "retry-job", str(failed)])
    assert again.exit_code == 1 and f"job {failed} was already retried as job {new} (pending)" in again.output
    pending = CliRunner().invoke(cli, ["ops", "retry-job", str(new)])
    assert pending.exit_code == 1 and f"job {new} is pending, not failed" in pending.output
    missing = CliRunner().invoke(cli, ["ops", "retry-job", "999999"])
    assert missing.exit_code == 1 and "job 999999 does not exist" in missing.output


def _line_with_a_failed_answered_and_waiting_job() -> tuple[int, int, int, int]:
    """One chat: "first" failed for good (the user got the failure reply), "second" was answered,
    "third" waits. Returns (conversation, failed, answered, waiting)."""
    conversation = make_conversation("line", channel="webhook", account_id="acct")
    failed = make_job(conversation, "first", max_attempts=1)
    lease = claim(failed, "w")
    fail(
        lease,
        reason="server",
        message="boom",
        on_final=lambda held: write_failure_reply(conversation, held.job_id, in_reply_to=held.message_id),
    )
    answered = make_job(conversation, "second")
    answer(answered, "answer to second")
    waiting = make_job(conversation, "third")
    return conversation, failed, answered, waiting


def answer(job_id: int, text: str) -> None:
    lease = claim(job_id, "w")
    assert isinstance(lease, Lease), lease
    complete(
        lease,
        write=lambda held: write_replies(
            held.conversation_id, held.job_id, [text], in_reply_to=held.message_id
        ),
    )


def test_a_retried_job_goes_to_the_back_of_its_conversations_line():
    """Item 11: the retry is a new job behind the waiting one; it reads what was said since and
    answers the user's message last, where it now stands."""
    conversation, failed, _, waiting = _line_with_a_failed_answered_and_waiting_job()
    retried = run("ops", "retry-job", str(failed), "--yes")
    assert retried.exit_code == 0, retried.output
    (new,) = [j.id for j in AgentJob.select().where(AgentJob.retry_of == failed)]
    assert new > waiting and f"job {failed} retried as job {new} (pending)" in retried.output

    refused = claim(new, "w")
    assert isinstance(refused, ClaimRefused) and refused.reason == "conversation_busy"
    answer(waiting, "answer to third")  # the job that waited is claimed first, as before the retry
    lease = claim(new, "w")
    assert isinstance(lease, Lease) and lease.message_id == AgentJob.get_by_id(failed).message_id
    history = [m["content"] for m in load_history(conversation, new, lease.message_id)]
    assert history == [FAILURE_REPLY, "second", "answer to second", "third", "answer to third", "first"]


def test_retry_job_explains_and_asks_for_yes_when_newer_turns_were_answered():
    conversation, failed, _, _ = _line_with_a_failed_answered_and_waiting_job()
    asked = CliRunner().invoke(cli, ["ops", "retry-job", str(failed)])
    assert asked.exit_code == 1
    assert (
        f"job {failed} (conversation {conversation}) failed: server: boom; it will be retried as a new "
        "job at the back of the line, behind 1 open job." in asked.output
    )
    assert "1 newer turn was answered since, so this answer will come after them." in asked.output
    assert "re-run with --yes" in asked.output
    assert AgentJob.get_by_id(failed).status == "failed"
    assert AgentJob.select().where(AgentJob.retry_of.is_null(False)).count() == 0  # nothing changed

    confirmed = run("ops", "retry-job", str(failed), "--yes")
    assert confirmed.exit_code == 0 and "1 newer turn was answered since" in confirmed.output
    assert f"job {failed} retried as job " in confirmed.output
