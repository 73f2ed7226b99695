"""Tables that do not grow forever: the retention sweep step and ``zenthor ops prune`` (issue 11, item 10)."""

from __future__ import annotations

import json
import logging

from click.testing import CliRunner

from tests.support.factories import make_conversation, make_job
from zenthor.actors.sweep import _steps, run_sweep
from zenthor.agent.context import load_history
from zenthor.cli import cli
from zenthor.db import database, execute
from zenthor.queue import retention

OLD = 40  # days: past the default RETENTION_DAYS (30)
RECENT = 2


def _ids(table: str, where: str = "true") -> set[int]:
    return {row[0] for row in execute(f"SELECT id FROM {table} WHERE {where}")}


def _job(status: str, age_days: int, chat: str | None = None) -> int:
    """A job of ``status`` in a conversation of its own (one processing job per conversation),
    its message and timestamps ``age_days`` old; finished_at is set even for open jobs, so only
    the status keeps them."""
    job_id = make_job(make_conversation(chat or f"{status}-{age_days}"))
    execute(
        "UPDATE agent_job SET status = %(status)s, created_at = now() - %(days)s * interval '1 day', "
        "finished_at = now() - %(days)s * interval '1 day', "
        "locked_until = CASE WHEN %(status)s = 'processing' THEN now() + interval '1 hour' END WHERE id = %(job)s",
        {"status": status, "days": age_days, "job": job_id},
    )
    execute(
        "UPDATE message SET created_at = now() - %s * interval '1 day' WHERE job_id = %s", (age_days, job_id)
    )
    return job_id


def _outbox(status: str, age_days: int, job_id: int | None = None, in_reply_to: int | None = None) -> int:
    """An outbox row of ``status``, written ``age_days`` ago (a sending one holds a live lease)."""
    return execute(
        "INSERT INTO outbound_message (conversation_id, job_id, in_reply_to, channel, account_id, chat_id, "
        "text, status, created_at, locked_until) VALUES (%(conversation)s, %(job)s, %(reply_to)s, 'test', "
        "'acct', 'outbox', 'a reply', %(status)s, now() - %(days)s * interval '1 day', "
        "CASE WHEN %(status)s = 'sending' THEN now() + interval '1 hour' END) RETURNING id",
        {
            "conversation": make_conversation("outbox"),
            "job": job_id,
            "reply_to": in_reply_to,
            "status": status,
            "days": age_days,
        },
    )[0][0]


def _approval(status: str, age_days: int, job_id: int | None) -> int:
    """An approval of ``job_id`` asked ``age_days`` ago and, unless pending, resolved then."""
    return execute(
        "INSERT INTO tool_approval (conversation_id, job_id, tool_name, status, created_at, resolved_at) "
        "VALUES (%s, %s, 'core_schedule_remind', %s, now() - %s * interval '1 day', "
        "CASE WHEN %s <> 'pending' THEN now() - %s * interval '1 day' END) RETURNING id",
        (make_conversation("approvals"), job_id, status, age_days, status, age_days),
    )[0][0]


def _reminder(state: str, age_days: int, job_id: int | None = None, outbound_id: int | None = None) -> int:
    """A reminder written ``age_days`` ago that is ``pending`` (due tomorrow), ``delivered`` or
    ``cancelled`` (``age_days`` ago)."""
    return execute(
        "INSERT INTO reminder (conversation_id, channel, account_id, chat_id, job_id, text, due_at, created_at, "
        "delivered_at, cancelled_at, outbound_id) VALUES (%(conversation)s, 'test', 'acct', 'r', %(job)s, 'call mum', "
        "CASE WHEN %(state)s = 'pending' THEN now() + interval '1 day' ELSE now() - %(days)s * interval '1 day' END, "
        "now() - %(days)s * interval '1 day', "
        "CASE WHEN %(state)s = 'delivered' THEN now() - %(days)s * interval '1 day' END, "
        "CASE WHEN %(state)s = 'cancelled' THEN now() - %(days)s * interval '1 day' END, %(outbound)s) RETURNING id",
        {
            "conversation": make_conversation("reminders"),
            "job": job_id,
            "days": age_days,
            "state": state,
            "outbound": outbound_id,
        },
    )[0][0]


def test_the_sweep_deletes_only_finished_rows_older_than_retention_days():
    jobs = {
        (status, age): _job(status, age)
        for status in ("pending", "processing", "awaiting_approval", "done", "failed")
        for age in (OLD, RECENT)
    }
    outbox = {
        (status, age): _outbox(status, age)
        for status in ("pending", "sending", "sent", "failed")
        for age in (OLD, RECENT)
    }
    approvals = {
        (status, age): _approval(status, age, jobs[("done", OLD)])
        for status in ("pending", "approved", "rejected", "expired", "superseded")
        for age in (OLD, RECENT)
    }
    reminders = {
        (state, age): _reminder(state, age)
        for state in ("pending", "delivered", "cancelled")
        for age in (OLD, RECENT)
    }
    # Rows that point at rows retention deletes: the old job's reply, sent, and the reminder it
    # delivered; a resolved approval of a job that is still open (its resume reads it); a pending
    # reminder and an unsent reply of the old job (they outlive it).
    sent_reply = _outbox("sent", OLD, job_id=jobs[("done", OLD)])
    delivered_with_reply = _reminder("delivered", OLD, job_id=jobs[("done", OLD)], outbound_id=sent_reply)
    approval_of_open_job = _approval("approved", OLD, jobs[("pending", OLD)])
    pending_of_old_job = _reminder("pending", RECENT, job_id=jobs[("done", OLD)])
    unsent_of_old_job = _outbox("pending", OLD, job_id=jobs[("failed", OLD)])
    messages = _ids("message")

    counts = run_sweep("manual")

    gone_jobs = {jobs[("done", OLD)], jobs[("failed", OLD)]}
    assert _ids("agent_job") == set(jobs.values()) - gone_jobs
    gone_outbox = {outbox[("sent", OLD)], outbox[("failed", OLD)], sent_reply}
    assert _ids("outbound_message") == set(outbox.values()) - gone_outbox | {unsent_of_old_job}
    resolved_old = {approvals[(status, OLD)] for status in ("approved", "rejected", "expired", "superseded")}
    assert _ids("tool_approval") == set(approvals.values()) - resolved_old | {approval_of_open_job}
    gone_reminders = {reminders[("delivered", OLD)], reminders[("cancelled", OLD)], delivered_with_reply}
    assert _ids("reminder") == set(reminders.values()) - gone_reminders | {pending_of_old_job}
    assert _ids("message") == messages  # MESSAGE_RETENTION_DAYS is not set
    assert (counts["pruned_jobs"], counts["pruned_outbox"], counts["pruned_approvals"]) == (2, 3, 4)
    assert (counts["pruned_reminders"], counts["pruned_messages"]) == (3, 0)
    # What outlives its job keeps working: the unsent reply and the pending reminder only lost a
    # job id nothing delivers by; an open job's rows were not touched.
    assert execute("SELECT job_id, status FROM outbound_message WHERE id = %s", (unsent_of_old_job,)) == [
        (None, "pending")
    ]
    assert execute("SELECT job_id FROM reminder WHERE id = %s", (pending_of_old_job,)) == [(None,)]
    assert execute("SELECT job_id FROM tool_approval WHERE id = %s", (approval_of_open_job,)) == [
        (jobs[("pending", OLD)],)
    ]
    assert run_sweep("manual")["pruned_jobs"] == 0  # nothing left to delete


def test_messages_stay_unless_message_retention_days_is_set_and_never_those_of_open_jobs(settings_env):
    done = _job("done", 100, chat="a")  # its message and job are 100 days old
    done_message = execute("SELECT message_id FROM agent_job WHERE id = %s", (done,))[0][0]
    quoted = make_job(make_conversation("b"))  # a finished job whose reply is still unsent
    execute("UPDATE agent_job SET status = 'done', finished_at = now() WHERE id = %s", (quoted,))
    quoted_message = execute("SELECT message_id FROM agent_job WHERE id = %s", (quoted,))[0][0]
    unsent = _outbox("pending", 0, job_id=quoted, in_reply_to=quoted_message)
    stuck = make_job(make_conversation("c"), "a turn that waits for ever")  # an open job
    after_stuck = make_job(make_conversation("d"), "said after the open job's message")
    execute("UPDATE agent_job SET status = 'done', finished_at = now() WHERE id = %s", (after_stuck,))
    execute("UPDATE message SET created_at = now() - interval '100 days'")  # every message is old
    recent = make_job(make_conversation("e"), "today")  # open too: the floor once the stuck one ends
    everything = _ids("message")

    counts = run_sweep("manual")
    assert (counts["pruned_jobs"], counts["pruned_messages"]) == (1, 0)
    assert _ids("message") == everything  # messages are the conversation's memory

    settings_env(MESSAGE_RETENTION_DAYS="60")
    assert run_sweep("manual")["pruned_messages"] == 1
    # Only what lies below the unsent reply's message went: the reply can still quote it.
    assert _ids("message") == everything - {done_message}

    execute("UPDATE outbound_message SET status = 'sent', sent_at = now() WHERE id = %s", (unsent,))
    assert run_sweep("manual")["pruned_messages"] == 1  # the quoted message; the open job's stays
    stuck_message = execute("SELECT message_id FROM agent_job WHERE id = %s", (stuck,))[0][0]
    assert min(_ids("message")) == stuck_message
    assert execute("SELECT message_id FROM agent_job WHERE id = %s", (quoted,)) == [(None,)]

    execute("UPDATE agent_job SET status = 'done', finished_at = now() WHERE id = %s", (stuck,))
    assert run_sweep("manual")["pruned_messages"] == 2  # up to the next open job's message
    assert _ids("message") == _ids("message", f"job_id = {recent}") != set()


def test_ops_prune_dry_run_counts_and_deletes_nothing():
    for i in range(25):
        job = _job("done", OLD, chat=f"old-{i}")
        _outbox("sent", OLD, job_id=job)
    _approval("rejected", OLD, None)
    _reminder("cancelled", OLD)
    _job("done", RECENT)
    before = {table: _ids(table) for table in ("agent_job", "outbound_message", "tool_approval", "reminder")}

    dry = CliRunner().invoke(cli, ["ops", "prune", "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.strip() == (
        "would delete 25 jobs, 25 outbox rows, 1 approvals, 1 reminders finished more than 30 days ago; "
        "messages kept (MESSAGE_RETENTION_DAYS not set)"
    )
    assert {table: _ids(table) for table in before} == before
    assert retention.last_run() is None  # a dry run is no run

    pruned = CliRunner().invoke(cli, ["ops", "prune", "--batch", "10"], catch_exceptions=False)
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.strip().startswith("deleted 25 jobs, 25 outbox rows, 1 approvals, 1 reminders")
    assert len(_ids("agent_job")) == 1 and _ids("outbound_message") == _ids("tool_approval") == set()
    # Three batches of 10 (the last one short): the whole backlog, not the sweep's bounded share.
    status = CliRunner().invoke(cli, ["ops", "status", "--json"])
    last = json.loads(status.stdout)["last_retention"]
    assert last["trigger"] == "ops prune" and last["counts"]["jobs"] == 25 and last["counts"]["days"] == 30
    assert "retention:   last deleted" in CliRunner().invoke(cli, ["ops", "status"]).stdout


def test_history_keeps_its_order_after_the_jobs_are_pruned():
    """Turn 1 waited for approval while the user wrote turn 2; turn 1's answer came after. The
    history groups by job, so it reads turn 1 whole, then turn 2, and must still do so once both
    jobs are deleted (with ``message_job_id_fkey`` their messages' job_id became NULL and the
    user messages left the history)."""
    conversation = make_conversation("history")
    first = make_job(conversation, "remind me at 5")
    second = make_job(conversation, "and what's the weather?")
    for job, text in ((first, "reminder set for 5"), (second, "sunny")):
        execute(
            "INSERT INTO message (conversation_id, role, content, job_id) VALUES (%s, 'assistant', %s, %s)",
            (conversation, text, job),
        )
    execute(
        "UPDATE agent_job SET status = 'done', finished_at = now() - interval '40 days' WHERE id IN (%s, %s)",
        (first, second),
    )
    execute("UPDATE message SET created_at = now() - interval '40 days'")
    third = make_job(conversation, "thanks")
    third_message = execute("SELECT message_id FROM agent_job WHERE id = %s", (third,))[0][0]
    expected = [
        {"role": "user", "content": "remind me at 5"},
        {"role": "assistant", "content": "reminder set for 5"},
        {"role": "user", "content": "and what's the weather?"},
        {"role": "assistant", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    assert list(load_history(conversation, third, third_message)) == expected

    assert run_sweep("manual")["pruned_jobs"] == 2
    assert _ids("agent_job") == {third}
    assert list(load_history(conversation, third, third_message)) == expected


def test_a_user_message_that_names_no_job_keeps_its_turn_when_the_job_is_pruned():
    """A user message written before 0007 has no job_id: the history finds its turn through
    agent_job.message_id. Pruning the job writes the turn on the message first, or the history
    would keep the reply and lose the question."""
    conversation = make_conversation("legacy")
    old = make_job(conversation, "what time is it?")
    execute("UPDATE message SET job_id = NULL WHERE role = 'user' AND conversation_id = %s", (conversation,))
    execute(
        "INSERT INTO message (conversation_id, role, content, job_id) VALUES (%s, 'assistant', 'noon', %s)",
        (conversation, old),
    )
    execute(
        "UPDATE agent_job SET status = 'done', finished_at = now() - interval '40 days' WHERE id = %s", (old,)
    )
    now = make_job(conversation, "thanks")
    message = execute("SELECT message_id FROM agent_job WHERE id = %s", (now,))[0][0]
    expected = [
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": "noon"},
        {"role": "user", "content": "thanks"},
    ]
    assert list(load_history(conversation, now, message)) == expected
    assert run_sweep("manual")["pruned_jobs"] == 1
    assert list(load_history(conversation, now, message)) == expected


def test_an_approval_stays_until_its_failed_job_is_old_enough_to_go_and_a_pruned_resume_is_not_retried():
    """A failed resume is retried with its approval (the tool's idempotency key): the approval
    goes only with its job. Once retention took it, the retry is refused, naming why."""
    failed = _job("failed", RECENT, chat="resume")
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (failed,))
    approval = _approval("approved", OLD, failed)  # resolved long ago, its job failed lately
    run_sweep("manual")
    assert _ids("tool_approval") == {approval}
    result = CliRunner().invoke(cli, ["ops", "retry-job", str(failed)])
    assert result.exit_code == 0, result.output

    gone = _job("failed", OLD, chat="resume-old")
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (gone,))
    _approval("approved", OLD, gone)
    assert retention.delete_batch("approvals", retention.RetentionPolicy(30, None, 1000)) == 1
    refused = CliRunner().invoke(cli, ["ops", "retry-job", str(gone)])
    assert refused.exit_code == 1
    assert f"job {gone} can no longer be retried: retention removed its message or approval" in refused.output


def test_retention_statements_find_rows_through_their_indexes():
    """At 30k rows a table, a tenth of them old (a month of history plus three days), every
    batch finds its rows through the table's finder index and deletes them by primary key."""
    conversation = make_conversation("plan")
    execute(
        "INSERT INTO message (conversation_id, role, content, created_at) SELECT %s, 'user', 'm' || g, "
        "now() - (33 - g * 33.0 / 30000) * interval '1 day' FROM generate_series(1, 30000) AS g",
        (conversation,),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, message_id, status, finished_at, created_at) "
        "SELECT conversation_id, id, CASE WHEN id %% 5 = 0 THEN 'failed' ELSE 'done' END, created_at, created_at "
        "FROM message ORDER BY id"
    )
    execute(
        "INSERT INTO outbound_message (conversation_id, job_id, in_reply_to, channel, account_id, chat_id, text, "
        "status, created_at) SELECT conversation_id, id, message_id, 'test', 'acct', 'plan', 'r', 'sent', created_at "
        "FROM agent_job"
    )
    execute(
        "INSERT INTO tool_approval (conversation_id, job_id, tool_name, status, created_at, resolved_at) "
        "SELECT conversation_id, id, 't', 'approved', created_at, created_at FROM agent_job"
    )
    execute(
        "INSERT INTO reminder (conversation_id, channel, account_id, chat_id, job_id, text, due_at, delivered_at, "
        "outbound_id) SELECT conversation_id, 'test', 'acct', 'plan', job_id, 'r', created_at, created_at, id "
        "FROM outbound_message"
    )
    make_job(conversation, "open")
    for table in ("message", "agent_job", "outbound_message", "tool_approval", "reminder"):
        execute(f"ANALYZE {table}")
    params = {"days": 30, "message_days": 30, "batch": 1000}
    finder_index = {
        "reminders": "reminder_finished_at on reminder",
        "outbox": "outbound_message_finished_created_at on outbound_message",
        "approvals": "tool_approval_resolved_at on tool_approval",
        "jobs": "agent_job_finished_at on agent_job",
        "messages": "message_pkey on message",
    }
    with database.atomic() as transaction:
        for table in retention.TABLES:
            plan = "\n".join(
                row[0] for row in execute("EXPLAIN " + retention.delete_statement(table), params)
            )
            assert "Seq Scan" not in plan, plan
            assert finder_index[table] in plan, plan
            assert "Index Cond: (id = ANY" in plan, plan  # the delete takes the found rows by key
            if table != "messages":  # counting old messages may read the old part of the table
                count = "\n".join(
                    row[0] for row in execute("EXPLAIN " + retention.count_statement(table), params)
                )
                assert "Seq Scan" not in count and finder_index[table] in count, count
        transaction.rollback()
    # And they do it: the old tenth of every table (~2,700 rows) goes in one sweep's share of batches.
    policy = retention.RetentionPolicy(30, 30, 1000)
    prunable = retention.count_prunable(policy)
    assert 2000 < prunable.jobs == prunable.outbox == prunable.approvals == prunable.reminders < 3000
    assert prunable.messages == prunable.jobs, prunable
    assert retention.prune(policy, budget_s=-1) == retention.PruneCounts()  # out of time: no batch
    assert retention.prune(policy, budget_s=None) == prunable  # the budget is tested above
    assert retention.count_prunable(policy) == retention.PruneCounts()


def test_the_retention_step_is_registered_and_runs_from_the_real_sweep(caplog):
    """zenthor.actors imports it (what the worker runs), last, after every step users wait on."""
    assert list(_steps)[-1] == "retention"
    caplog.set_level(logging.DEBUG, logger="zenthor.events")
    run_sweep("manual")
    idle = [r for r in caplog.records if getattr(r, "event", None) == "queue.retention.pruned"]
    assert [r.levelno for r in idle] == [logging.DEBUG] and idle[0].jobs == 0 and not idle[0].dry_run
    assert retention.last_run() is None

    _job("done", OLD)
    caplog.clear()
    counts = run_sweep("manual")
    assert counts["pruned_jobs"] == 1
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "queue.retention.pruned"]
    assert line.levelno == logging.INFO and (line.jobs, line.days, line.messages) == (1, 30, 0)
    (completed,) = [r for r in caplog.records if getattr(r, "event", None) == "queue.sweep.completed"]
    assert completed.steps["pruned_jobs"] == 1
    last = retention.last_run()
    assert last["trigger"] == "sweep" and last["counts"]["jobs"] == 1
