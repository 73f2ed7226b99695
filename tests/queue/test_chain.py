"""The completion hands the conversation's next job to the same worker (issue 13, item 2).

Counted, not timed: round trips from ``zenthor.db.round_trips`` and nudges recorded instead of
published. Crashes and pauses in the middle of a chain, with real worker processes, are in
tests/queue/test_recovery.py.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg2
import pytest

from tests.conftest import TEST_ENV
from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.trips import executed
from tests.support.workers import DbThread, wait_for
from zenthor.agent.turn import TurnContext, TurnResult
from zenthor.db import execute
from zenthor.models import AgentJob, OutboundMessage

ONE_REPLY = "tests.queue.test_round_trips:one_reply_turn"


def job_rows(job_ids: list[int]) -> list[tuple[str, str | None]]:
    rows = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}
    return [(rows[job_id].status, rows[job_id].processor_id) for job_id in job_ids]


def outbound_ids() -> list[int]:
    return [row.id for row in OutboundMessage.select().order_by(OutboundMessage.id)]


def test_the_next_job_is_claimed_in_the_commit_and_run_without_a_nudge(settings_env, counting, published):
    """Two jobs of one conversation, one dispatch message: 7 round trips and no dispatch nudge."""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("chain")
    first, second = make_job(conversation, "a"), make_job(conversation, "b")
    counting.reset()

    assert process_job(first) == "done"

    claim_trip, *rest = executed(counting.of_thread())
    assert claim_trip == ("EXECUTE",)
    # Prepared: the completion's first statement and, after the COMMIT, the hand-over.
    completion = [("BEGIN", "EXECUTE"), ("WITH",), ("COMMIT", "EXECUTE")]
    assert rest == completion + completion
    assert [status for status, _ in job_rows([first, second])] == ["done", "done"]
    assert published == [("deliver", row_id, None) for row_id in outbound_ids()]
    assert assistant_messages(conversation) == ["ok", "ok"]


def test_the_chain_ends_after_its_bound_and_nudges_the_rest(settings_env, published):
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY, AGENT_JOB_CHAIN_MAX_JOBS="3")
    conversation = make_conversation("bounded")
    jobs = [make_job(conversation, f"m{n}") for n in range(5)]

    assert process_job(jobs[0]) == "done"

    assert [status for status, _ in job_rows(jobs)] == ["done"] * 3 + ["pending"] * 2
    assert [p for p in published if p[0] == "dispatch"] == [("dispatch", jobs[3], None)]


def test_no_chain_once_the_message_is_older_than_its_time_bound(settings_env, published):
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY, AGENT_JOB_CHAIN_MAX_MS="0")
    conversation = make_conversation("no-time")
    first, second = make_job(conversation, "a"), make_job(conversation, "b")

    assert process_job(first) == "done"

    assert job_rows([first, second])[1][0] == "pending"
    assert ("dispatch", second, None) in published


def test_a_job_waiting_for_its_retry_is_not_chained(settings_env, published):
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("backoff")
    first, second = make_job(conversation, "a"), make_job(conversation, "b")
    execute("UPDATE agent_job SET available_at = now() + interval '1 hour' WHERE id = %s", (second,))

    assert process_job(first) == "done"

    assert job_rows([second]) == [("pending", None)]
    # Nudged as before the chain: its claim says when it is available and asks again then.
    assert ("dispatch", second, None) in published


def test_a_chain_that_loses_the_race_for_the_conversation_still_completes_its_job(settings_env, published):
    """The hand-over runs after the COMMIT: when another claim of the conversation wins (here an
    approved job resumed and taken meanwhile), the unique index refuses the hand-over, and the job
    that completed stays done with its reply; the winner nudges what follows."""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("lost-race")
    asked = make_job(conversation, "asked")  # waits for an approval: it does not hold the line
    execute("UPDATE agent_job SET status = 'awaiting_approval' WHERE id = %s", (asked,))
    first, second = make_job(conversation, "a"), make_job(conversation, "b")

    other = psycopg2.connect(TEST_ENV["DATABASE_URL"])
    try:
        cursor = other.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        (other_pid,) = cursor.fetchone()
        cursor.execute("SELECT id FROM agent_job WHERE id = %s FOR UPDATE", (second,))  # holds `second`
        outcome: list[str] = []
        running = DbThread(target=lambda: outcome.append(process_job(first)))
        running.start()
        # The hand-over waits for `second`'s row lock: the COMMIT of `first` is through.
        wait_for(
            lambda: (
                execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (other_pid,),
                )[0][0]
                == 1
            ),
            20,
            message="the hand-over waits for the row lock",
        )
        assert job_rows([first])[0][0] == "done"
        cursor.execute(
            "UPDATE agent_job SET status = 'processing', lease_token = gen_random_uuid(), "
            "processor_id = 'elsewhere', locked_until = now() + interval '1 minute' WHERE id = %s",
            (asked,),
        )
        other.commit()
        running.join(20)
    finally:
        other.close()

    assert outcome == ["done"]
    assert [status for status, _ in job_rows([asked, first, second])] == ["processing", "done", "pending"]
    assert assistant_messages(conversation) == ["ok"]
    assert [p[0] for p in published] == ["deliver"]  # the winner nudges `second` when it completes


_running: dict[int, int] = {}
_seen: dict[int, list[int]] = {}
_overlaps: list[int] = []
_guard = threading.Lock()


def exclusive_turn(ctx: TurnContext) -> TurnResult:
    """Records which jobs of a conversation ran, in order, and any two that ran at once."""
    with _guard:
        _running[ctx.conversation_id] = _running.get(ctx.conversation_id, 0) + 1
        if _running[ctx.conversation_id] > 1:
            _overlaps.append(ctx.conversation_id)
        _seen.setdefault(ctx.conversation_id, []).append(ctx.job_id)
    time.sleep(0.001)  # widen the window a second holder would need
    with _guard:
        _running[ctx.conversation_id] -= 1
    return TurnResult(replies=["ok"])


@pytest.mark.parametrize("chain_max", ["1", "16"])
def test_claims_from_many_threads_never_hold_a_conversation_twice_with_or_without_the_chain(
    settings_env, chain_max
):
    """Eight threads dispatch every job of 20 conversations at once (every job has its own
    nudge, as after a replay): each job runs once, no two jobs of a conversation run at the same
    time, and each conversation's jobs run in id order."""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN="tests.queue.test_chain:exclusive_turn", AGENT_JOB_CHAIN_MAX_JOBS=chain_max)
    _running.clear(), _seen.clear(), _overlaps.clear()
    conversations = [make_conversation(f"race-{chain_max}-{n}") for n in range(20)]
    jobs = [make_job(c, f"m{k}") for k in range(5) for c in conversations]
    lock = threading.Lock()
    todo = list(jobs)
    random.Random(7).shuffle(todo)

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                job_id = todo.pop()
            process_job(job_id)

    threads = [DbThread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    # A job refused while its conversation was busy was nudged by the completion before it (the
    # nudges went to a broker nobody consumes here): run what is still pending, oldest first.
    for _ in range(len(jobs)):
        waiting = [j.id for j in AgentJob.select().where(AgentJob.status == "pending").order_by(AgentJob.id)]
        if not waiting:
            break
        for job_id in waiting:
            process_job(job_id)
    assert {j.status for j in AgentJob.select().where(AgentJob.id.in_(jobs))} == {"done"}
    assert _overlaps == []
    for conversation in conversations:
        assert _seen[conversation] == sorted(_seen[conversation])
        assert len(_seen[conversation]) == 5
        assert assistant_messages(conversation) == ["ok"] * 5


def test_a_job_knows_at_insert_whether_another_job_of_its_conversation_goes_first():
    """``enqueue`` reads, in its INSERT, what AHEAD_OF_J reads at claim: an older pending job or a
    processing one puts the new job behind (its predecessor nudges or chains it); a job awaiting
    an approval does not."""
    from zenthor.db import database
    from zenthor.queue import claim, enqueue

    def insert(conversation: int) -> bool:
        with database.atomic():
            return enqueue(conversation, None).behind

    conversation = make_conversation("behind")
    assert insert(conversation) is False  # the head of an empty line
    assert insert(conversation) is True  # behind the pending head
    other = make_conversation("behind-busy")
    head = make_job(other, "a")
    assert claim(head, "worker-x") is not None
    assert insert(other) is True  # behind the processing head
    waiting = make_conversation("behind-asked")
    asked = make_job(waiting, "asked")
    execute("UPDATE agent_job SET status = 'awaiting_approval' WHERE id = %s", (asked,))
    assert insert(waiting) is False  # a question does not hold the line


def test_the_hand_overs_generic_plan_uses_the_partial_indexes():
    """Prepared like the claim: the plan Postgres keeps after five executions has no values, and
    still finds the next job and what is ahead of it through the partial indexes."""
    import uuid

    from tests.support.plans import assert_claim_probes_partial_indexes
    from zenthor.db import database, execute_prepared
    from zenthor.queue import job_statements

    conversation = make_conversation("plan")
    execute(
        "INSERT INTO agent_job (conversation_id, status) SELECT %s, 'done' FROM generate_series(1, 2000)",
        (conversation,),
    )
    make_job(conversation)
    execute("ANALYZE agent_job")
    params = {
        "conversation_id": 0,
        "worker": "w",
        "token": str(uuid.uuid4()),
        "lock_ms": 1000,
        "modes": "{}",
        "mode": "collect",
        "collect_max": 20,
    }
    execute_prepared(job_statements.CLAIM_NEXT_PREPARED, params)  # prepared now
    with database.atomic():
        execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(
            row[0]
            for row in execute(
                "EXPLAIN " + job_statements.CLAIM_NEXT_PREPARED.execute_sql,
                {**params, "conversation_id": conversation},
            )
        )
    assert "agent_job_pending_fifo" in plan.split("CTE taken")[0], plan  # the next job
    assert_claim_probes_partial_indexes(plan.split("CTE taken")[1])


@pytest.mark.parametrize("lost", ["DEALLOCATE zenthor_complete_and_hold", "DEALLOCATE zenthor_claim_next"])
def test_a_completion_whose_prepared_statements_the_session_lost_still_completes_once(
    settings_env,
    counting,
    published,
    lost,
):
    """The session forgot its prepared statements behind the connection's back (an operator's
    DISCARD, a pooler's reset): the completion's first statement fails inside its transaction,
    which rolls back and runs again prepared afresh; a lost hand-over fails after the COMMIT went
    through, and is sent again on its own. Either way the job completes once and the next is
    handed over."""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY, AGENT_JOB_CHAIN_MAX_JOBS="2")
    conversation = make_conversation(f"lost-{lost}")
    warm = [make_job(make_conversation(f"warm-{lost}"), f"w{n}") for n in range(2)]
    assert process_job(warm[0]) == "done"  # both statements prepared on this connection
    first, second = make_job(conversation, "a"), make_job(conversation, "b")
    execute(lost)
    counting.reset()
    assert process_job(first) == "done"
    trips = counting.of_thread()
    if lost.endswith("complete_and_hold"):  # the first statement failed; the transaction ran again
        assert trips[1:3] == [("BEGIN", "EXECUTE"), ("ROLLBACK",)], trips
        assert trips[3] == ("BEGIN", "DEALLOCATE", "PREPARE", "EXECUTE"), trips
    else:  # the hand-over failed after its COMMIT and was sent again on its own
        assert trips[3:5] == [("COMMIT", "EXECUTE"), ("DEALLOCATE", "PREPARE", "EXECUTE")], trips
    assert [status for status, _ in job_rows([first, second])] == ["done", "done"]
    assert assistant_messages(conversation) == ["ok", "ok"]


def _hand_over_blocked_then(action: str, settings_env, published) -> tuple[list[str], list[int]]:
    """Two jobs of one chat; the hand-over after the first one's COMMIT waits for a row lock on the
    second, and ``action`` (a Postgres function taking the waiting backend's pid) hits it there."""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation(f"hit-{action}")
    jobs = [make_job(conversation, "a"), make_job(conversation, "b")]
    other = psycopg2.connect(TEST_ENV["DATABASE_URL"])
    outcome: list[str] = []
    try:
        cursor = other.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        (other_pid,) = cursor.fetchone()
        cursor.execute("SELECT id FROM agent_job WHERE id = %s FOR UPDATE", (jobs[1],))
        running = DbThread(target=lambda: outcome.append(process_job(jobs[0])))
        running.start()
        waiting = wait_for(
            lambda: execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (other_pid,)
            ),
            20,
            message="the hand-over waits for the row lock",
        )
        assert job_rows([jobs[0]])[0][0] == "done"  # the COMMIT went through
        execute(f"SELECT {action}(%s)", (waiting[0][0],))
        running.join(20)
        assert not running.is_alive()
        other.rollback()
    finally:
        other.close()
    return outcome, jobs


@pytest.mark.parametrize("action", ["pg_cancel_backend", "pg_terminate_backend"])
def test_a_hand_over_that_fails_after_the_commit_still_reports_the_job_done_and_nudges_the_next(
    settings_env, published, action
):
    """Cancelled (a statement timeout does the same) or cut after the COMMIT: the completion asks
    the database whether it committed, reports the job done, delivers its reply and nudges the
    next job instead of leaving it to the sweep."""
    outcome, jobs = _hand_over_blocked_then(action, settings_env, published)
    assert outcome == ["done"]
    assert [status for status, _ in job_rows(jobs)] == ["done", "pending"]
    assert [p[0] for p in published] == ["deliver", "dispatch"]
    assert published[1] == ("dispatch", jobs[1], None)


def test_a_hand_over_whose_answer_was_lost_is_given_back_and_nudged(settings_env, published, monkeypatch):
    """The hand-over committed on the server but its answer never arrived (the connection died
    right after): the job it claimed under a token nobody holds is given back at once, not after
    its lease expires with an attempt it never ran."""
    import peewee

    import zenthor.db as db_module
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("answer-lost")
    jobs = [make_job(conversation, "a"), make_job(conversation, "b")]
    real_send = db_module._send_prepared
    fired: list[int] = []

    def answer_lost(db, statement, params, *, prefix=""):
        rows = real_send(db, statement, params, prefix=prefix)
        if statement.name == "zenthor_claim_next" and not fired:
            fired.append(1)
            db.connection().close()
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return rows

    monkeypatch.setattr(db_module, "_send_prepared", answer_lost)
    assert process_job(jobs[0]) == "done"
    assert fired
    rows = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(jobs))}
    assert (rows[jobs[1]].status, rows[jobs[1]].attempts, rows[jobs[1]].lease_token) == ("pending", 0, None)
    assert ("dispatch", jobs[1], None) in published
    assert assistant_messages(conversation) == ["ok"]


def test_a_shutdown_right_after_a_hand_over_gives_the_handed_job_to_another_worker(
    settings_env, published, monkeypatch
):
    """Dramatiq raises Shutdown into the thread at any point: landing between the commit that
    handed the next job over and the chain running it, the job is released and handed over at
    once, not left processing for a worker that is leaving."""
    import sys

    from dramatiq.middleware import Shutdown

    dispatch = sys.modules["zenthor.actors.dispatch"]
    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("shutdown-chain")
    jobs = [make_job(conversation, "a"), make_job(conversation, "b")]

    class ShutdownOnce:
        fired = False

        def observe(self, value: float) -> None:
            if not ShutdownOnce.fired:
                ShutdownOnce.fired = True
                raise Shutdown()

    monkeypatch.setattr(dispatch, "TURN_SECONDS", ShutdownOnce())
    with pytest.raises(Shutdown):
        dispatch.process_job(jobs[0])
    assert [status for status, _ in job_rows(jobs)] == ["done", "pending"]
    assert ("dispatch", jobs[1], dispatch.HANDOVER_DELAY_MS) in published


def test_a_time_limit_that_strikes_while_the_completion_commits_leaves_the_job_done_and_the_next_nudged(
    settings_env, published, monkeypatch
):
    """Dramatiq's time limit is raised into the thread: landing right after the COMMIT (here while
    the hand-over's lease is built), the job is done, not failed, and the next job, given back by
    the completion, is nudged at once rather than left to the sweep."""
    import sys

    from dramatiq.middleware import TimeLimitExceeded

    dispatch = sys.modules["zenthor.actors.dispatch"]
    jobs_module = sys.modules["zenthor.queue.jobs"]
    settings_env(AGENT_TURN=ONE_REPLY)
    conversation = make_conversation("time-limit-commit")
    jobs = [make_job(conversation, "a"), make_job(conversation, "b")]
    real_lease_of = jobs_module._lease_of

    calls: list[int] = []

    def struck(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first builds the claim's lease, the second the hand-over's
            raise TimeLimitExceeded()
        return real_lease_of(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "_lease_of", struck)
    try:
        assert dispatch.process_job(jobs[0]) == "done"
    finally:
        monkeypatch.setattr(jobs_module, "_lease_of", real_lease_of)
    assert [status for status, _ in job_rows(jobs)] == ["done", "pending"]
    assert ("dispatch", jobs[1], None) in published
    assert assistant_messages(conversation) == ["ok"]
