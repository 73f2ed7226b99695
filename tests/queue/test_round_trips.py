"""What a job costs in round trips and nudges (issue 13), counted, not timed.

The counts come from ``zenthor.db.round_trips`` (every ``cursor.execute`` of this process, Peewee's
own BEGIN/COMMIT/ROLLBACK included) and from recording what ``zenthor.actors.publish`` sends. Each
test reads only its own thread's round trips, so a daemon thread of another test cannot disturb it.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from peewee import IntegrityError

from tests.conftest import TEST_ENV
from tests.support.factories import make_conversation, make_job
from tests.support.plans import assert_claim_probes_partial_indexes, claim_params
from tests.support.trips import executed
from tests.support.workers import wait_for
from zenthor.agent.replies import write_replies
from zenthor.agent.turn import TurnContext, TurnResult
from zenthor.db import database, execute, execute_prepared, transaction_then
from zenthor.models import AgentJob, OutboundMessage
from zenthor.queue import ClaimRefused, Lease, claim, complete

SPLIT_CHANNEL = "roundtrip-split"
PART = "abcdefghijklmno "  # 16 characters: the channel's limit, so each part is one outbox row
sent: list[str] = []


def one_reply_turn(ctx: TurnContext) -> TurnResult:
    """The cheapest turn (no read of its own): one short reply."""
    return TurnResult(replies=["ok"])


def three_part_turn(ctx: TurnContext) -> TurnResult:
    """A reply three outbox rows long on :data:`SPLIT_CHANNEL`."""
    return TurnResult(replies=[f"{PART}{PART}#{ctx.job_id}"])


@pytest.fixture
def split_channel():
    """A channel of 16-character rows whose sender records what it sent, on the outbound queue."""
    from zenthor.agent.replies import register_text_limit
    from zenthor.channels import register_sender

    sent.clear()
    register_text_limit(SPLIT_CHANNEL, 16)
    register_sender(SPLIT_CHANNEL, lambda lease: sent.append(lease.text))
    yield sent
    sent.clear()


def test_a_job_with_one_reply_costs_four_round_trips_and_two_nudges(settings_env, counting, published):
    """Without a chain: claim; BEGIN with the fenced update, the conversation's lock and its
    route; the reply; COMMIT with the next-job probe. Then one delivery nudge and the next job's
    nudge. (With the chain, tests/queue/test_chain.py.)"""
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN="tests.queue.test_round_trips:one_reply_turn", AGENT_JOB_CHAIN_MAX_JOBS="1")
    conversation = make_conversation("four")
    first, second = make_job(conversation, "a"), make_job(conversation, "b")
    counting.reset()

    assert process_job(first) == "done"

    # The claim and the completion's first statement are prepared, each with its first EXECUTE
    # on a connection.
    claim_trip, *completion = executed(counting.of_thread())
    assert claim_trip == ("EXECUTE",)
    assert completion == [
        ("BEGIN", "EXECUTE"),  # the fenced update, the conversation's lock and route
        ("WITH",),  # the assistant message and its outbox row
        ("COMMIT", "SELECT"),  # the commit and, after it, the conversation's next job
    ]
    (outbound_id,) = [row.id for row in OutboundMessage.select()]
    assert published == [("deliver", outbound_id, None), ("dispatch", second, None)]


def test_a_reply_of_three_rows_gets_one_delivery_nudge(settings_env, counting, published, split_channel):
    from zenthor.actors.dispatch import process_job

    settings_env(AGENT_TURN="tests.queue.test_round_trips:three_part_turn")
    job_id = make_job(make_conversation("split", channel=SPLIT_CHANNEL))
    counting.reset()

    assert process_job(job_id) == "done"

    # The parts cost no more round trips than a one-row reply: one statement writes them all.
    assert len(counting.of_thread()) == 4
    rows = [row.id for row in OutboundMessage.select().order_by(OutboundMessage.id)]
    assert len(rows) == 3
    assert published == [("deliver", rows[0], None)]


def test_every_row_of_a_job_goes_out_in_order_after_its_one_nudge(settings_env, worker, split_channel):
    """Real RabbitMQ: each sent row nudges the next, so one nudge per job delivers them all."""
    from zenthor.actors import publish
    from zenthor.actors.publish import publish_dispatch

    settings_env(AGENT_TURN="tests.queue.test_round_trips:three_part_turn")
    real_send = publish._send
    delivery_nudges: list[int] = []

    def recording_send(actor, queue, args, delay):
        if actor == "deliver":
            delivery_nudges.append(args[0])
        real_send(actor, queue, args, delay)

    publish._send = recording_send
    try:
        conversation = make_conversation("in-order", channel=SPLIT_CHANNEL)
        jobs = [make_job(conversation, f"m{n}") for n in range(2)]
        publish_dispatch(jobs[0])
        wait_for(lambda: len(split_channel) == 6, 20, message="six rows sent")
    finally:
        publish._send = real_send
    rows = [row.id for row in OutboundMessage.select().order_by(OutboundMessage.id)]
    expected = [part for job_id in jobs for part in [PART, PART, f"#{job_id}"]]
    assert split_channel == expected
    # One nudge per job (its first row) and one per row sent (the next row): every row is nudged,
    # and only a job's first row twice (its job's nudge and its predecessor's, when that one was
    # sent after the job committed). A nudge per row made it 6 + 5.
    assert set(delivery_nudges) == set(rows)
    assert len(delivery_nudges) <= len(rows) + len(jobs) - 1
    assert all(delivery_nudges.count(row) == 1 for row in rows if rows.index(row) % 3)


def test_a_dropped_delivery_nudge_is_delivered_by_the_sweep(settings_env, worker, split_channel):
    """Real RabbitMQ: the job's one delivery nudge is lost on its way (dropped, not refused); the
    outbox sweep re-publishes the head row and the rest of the job's rows follow it in order."""
    from zenthor.actors import publish
    from zenthor.actors.deliver import sweep_outbox
    from zenthor.actors.publish import publish_dispatch

    settings_env(AGENT_TURN="tests.queue.test_round_trips:three_part_turn")
    real_send = publish._send
    dropped: list[int] = []

    def dropping_send(actor, queue, args, delay):
        if actor == "deliver" and not dropped:
            dropped.append(args[0])  # the broker "took" it and lost it
            return
        real_send(actor, queue, args, delay)

    publish._send = dropping_send
    try:
        job_id = make_job(make_conversation("dropped", channel=SPLIT_CHANNEL))
        publish_dispatch(job_id)
        wait_for(lambda: AgentJob.get_by_id(job_id).status == "done", 20, message="job done")
        wait_for(lambda: dropped, 5, message="the nudge dropped")
        time.sleep(0.5)
        assert split_channel == []  # nothing else nudged the rows
        settings_env(OUTBOUND_REPUBLISH_GRACE_MS="0")
        execute("UPDATE outbound_message SET available_at = now() - interval '1 second'")
        # The worker's own sweep may take the row first; either sweep republishing is right.
        sweep_outbox()
        wait_for(lambda: len(split_channel) == 3, 20, message="three rows sent after the sweep")
    finally:
        publish._send = real_send
    assert split_channel == [PART, PART, f"#{job_id}"]
    # The sender records a row before the deliver actor marks it sent: wait for the mark.
    wait_for(
        lambda: OutboundMessage.select().where(OutboundMessage.status != "sent").count() == 0,
        20,
        message="every row marked sent",
    )


def test_an_empty_transaction_sends_nothing(counting):
    with database.atomic():
        pass
    assert counting.of_thread() == []


def test_begin_travels_with_the_first_statement_and_a_failure_rolls_everything_back(counting):
    make_conversation("exists")
    counting.reset()
    with pytest.raises(IntegrityError), database.atomic():
        execute("INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'new')")
        execute("INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'exists')")
    assert counting.of_thread() == [("BEGIN", "INSERT"), ("INSERT",), ("ROLLBACK",)]
    assert execute("SELECT count(*) FROM conversation WHERE chat_id = 'new'") == [(0,)]
    assert not database.in_transaction()


def test_a_savepoint_first_and_a_transaction_that_commits(counting):
    counting.reset()
    with database.atomic():
        with database.atomic():
            execute("INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'sp')")
        execute("INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'after')")
    kinds = counting.of_thread()
    assert kinds[0] == ("BEGIN", "SAVEPOINT") and kinds[-1] == ("COMMIT",)
    assert execute("SELECT count(*) FROM conversation WHERE chat_id IN ('sp', 'after')") == [(2,)]


def test_transaction_then_reads_after_the_commit_in_the_same_round_trip(counting):
    counting.reset()
    with transaction_then("SELECT count(*) FROM conversation WHERE chat_id = 'then'") as after:
        execute("INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'then')")
    assert after.rows == [(1,)]
    assert counting.of_thread() == [("BEGIN", "INSERT"), ("COMMIT", "SELECT")]

    # Inside an outer transaction it is a savepoint, and the read runs after it.
    with database.atomic():
        with transaction_then("SELECT count(*) FROM conversation WHERE chat_id = 'inner'") as inner:
            execute(
                "INSERT INTO conversation (channel, account_id, chat_id) VALUES ('test', 'acct', 'inner')"
            )
        assert inner.rows == [(1,)]


def test_a_lost_lease_at_completion_reads_no_next_job_and_writes_nothing(counting):
    from zenthor.queue import LeaseLost

    conversation = make_conversation("lost")
    job_id = make_job(conversation)
    lease = claim(job_id, "w")
    assert isinstance(lease, Lease)
    execute("UPDATE agent_job SET lease_token = gen_random_uuid() WHERE id = %s", (job_id,))
    counting.reset()
    with pytest.raises(LeaseLost):
        complete(lease, write=lambda held: write_replies(held.conversation_id, held.job_id, ["never"]))
    assert executed(counting.of_thread()) == [("BEGIN", "EXECUTE"), ("ROLLBACK",)]
    assert not lease.next_job_read
    assert OutboundMessage.select().count() == 0


def test_the_completion_locks_its_job_row_before_its_conversation():
    """Lock order job -> conversation (I5) inside the one completing statement: while it waits for
    the job row, the conversation is still free."""
    conversation = make_conversation("order")
    job_id = make_job(conversation)
    lease = claim(job_id, "w")
    assert isinstance(lease, Lease)
    holder = psycopg2.connect(TEST_ENV["DATABASE_URL"])
    probe = psycopg2.connect(TEST_ENV["DATABASE_URL"])
    outcome: list[object] = []

    def completing() -> None:
        try:
            complete(lease, write=lambda held: write_replies(held.conversation_id, held.job_id, ["late"]))
            outcome.append("done")
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcome.append(error)
        finally:
            database.close()

    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM agent_job WHERE id = %s FOR UPDATE", (job_id,))
        thread = threading.Thread(target=completing)
        thread.start()
        with probe.cursor() as cur:

            def completion_waits() -> bool:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                    (holder.get_backend_pid(),),
                )
                return cur.fetchone()[0] == 1

            wait_for(completion_waits, 10, message="the completion waits for the job row")
            cur.execute("SELECT 1 FROM conversation WHERE id = %s FOR NO KEY UPDATE NOWAIT", (conversation,))
            probe.rollback()
        holder.rollback()
        thread.join(10)
    finally:
        holder.close()
        probe.close()
    assert outcome == ["done"]
    assert AgentJob.get_by_id(job_id).status == "done"


def test_the_claim_is_prepared_once_per_connection_and_survives_a_reset_session(counting):
    conversation = make_conversation("prepared")
    jobs = [make_job(make_conversation(f"p{n}")) for n in range(3)] + [make_job(conversation)]
    database.connection().prepared.clear()
    execute("DEALLOCATE ALL")
    counting.reset()
    assert isinstance(claim(jobs[0], "w"), Lease)
    assert isinstance(claim(jobs[1], "w"), Lease)
    assert counting.of_thread() == [("PREPARE", "EXECUTE"), ("EXECUTE",)]
    # The server forgot it (a reset session): prepared again.
    execute("DEALLOCATE ALL")
    assert isinstance(claim(jobs[2], "w"), Lease)
    # This connection forgot it, the server did not: executed as it is.
    database.connection().prepared.clear()
    assert isinstance(claim(jobs[3], "w"), Lease)
    assert isinstance(claim(jobs[3], "w"), ClaimRefused)  # and still a claim: a live lease refuses


def test_a_claim_whose_plan_a_migration_made_stale_is_prepared_again(counting):
    """A migration that changes a column the claim returns leaves every connection that prepared
    it with a plan Postgres refuses ("cached plan must not change result type"): the claim
    deallocates it and prepares again, instead of failing every call until a restart."""
    jobs = [make_job(make_conversation(f"stale{n}")) for n in range(2)]
    assert isinstance(claim(jobs[0], "w"), Lease)  # prepared on this connection
    execute("ALTER TABLE agent_job ALTER COLUMN max_attempts TYPE bigint")
    try:
        counting.reset()
        assert isinstance(claim(jobs[1], "w"), Lease)
        assert counting.of_thread()[-2:] == [("EXECUTE",), ("DEALLOCATE", "PREPARE", "EXECUTE")]
    finally:
        execute("ALTER TABLE agent_job ALTER COLUMN max_attempts TYPE integer")


def test_a_route_is_remembered_only_outside_savepoints():
    """A lock taken inside a savepoint goes when the savepoint is rolled back: what it read must
    not be remembered for the transaction (Peewee 4 keeps savepoints off its transaction stack)."""
    from zenthor.db import held_in_transaction

    with database.atomic():
        assert held_in_transaction(to_add=True) is not None
        with database.atomic():  # a savepoint
            assert held_in_transaction(to_add=True) is None
            with database.atomic():
                assert held_in_transaction(to_add=True) is None
            assert held_in_transaction(to_add=True) is None
        assert held_in_transaction(to_add=True) is not None
        with pytest.raises(ValueError), database.atomic():
            raise ValueError("rolled back to the savepoint")
        assert held_in_transaction(to_add=True) is not None
    assert held_in_transaction(to_add=True) is None


def test_the_prepared_claims_generic_plan_uses_the_partial_indexes():
    """The plan Postgres keeps after five executions has no values: the partial-index predicates
    are literals, so the FIFO and busy probes still use those indexes."""
    import uuid

    from zenthor.queue import job_statements

    conversation = make_conversation()
    execute(
        "INSERT INTO agent_job (conversation_id, status) SELECT %s, 'done' FROM generate_series(1, 2000)",
        (conversation,),
    )
    job_id = make_job(conversation)
    execute("ANALYZE agent_job")
    execute_prepared(job_statements.CLAIM_PREPARED, {**_claim_params(job_id), "job_id": 0})  # prepared now
    with database.atomic() as transaction:
        execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = "\n".join(
            row[0]
            for row in execute(
                "EXPLAIN " + job_statements.CLAIM_PREPARED.execute_sql,
                {**_claim_params(job_id), "token": str(uuid.uuid4())},
            )
        )
        transaction.rollback()
    assert "$1" in plan or "$4" in plan, plan  # a generic plan: parameters, not values
    assert_claim_probes_partial_indexes(plan)


def _claim_params(job_id: int) -> dict[str, object]:
    return claim_params(job_id)


def test_a_refused_delivery_nudge_is_logged_once_and_sent_again(settings_env, worker, split_channel, caplog):
    """Real RabbitMQ: the broker refuses the job's one delivery nudge; the refusal is one event, the
    nudge is owed and re-sent, and every row of the job goes out in order."""
    import logging

    from zenthor.actors import publish
    from zenthor.actors.publish import publish_dispatch

    caplog.set_level(logging.INFO)
    settings_env(AGENT_TURN="tests.queue.test_round_trips:three_part_turn")
    real_send = publish._send
    refused: list[int] = []

    def refusing_send(actor, queue, args, delay):
        if actor == "deliver" and not refused:
            refused.append(args[0])
            raise ConnectionError("the broker refused the publish")
        real_send(actor, queue, args, delay)

    publish._send = refusing_send
    try:
        job_id = make_job(make_conversation("refused", channel=SPLIT_CHANNEL))
        publish_dispatch(job_id)
        wait_for(lambda: len(split_channel) == 3, 20, message="three rows sent after the refusal")
    finally:
        publish._send = real_send
    assert split_channel == [PART, PART, f"#{job_id}"]
    failures = [r for r in caplog.records if getattr(r, "event", None) == "outbound.publish_failed"]
    assert [r.outbound_id for r in failures] == refused
