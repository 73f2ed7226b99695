"""Lease operations against real Postgres: claim, FIFO, fencing (I1, I2), stale reclaim (I4)."""

from __future__ import annotations

import threading

import pytest
from peewee import IntegrityError

from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.plans import (
    assert_batch_uses_the_fifo_index,
    assert_claim_probes_partial_indexes,
    claim_params,
)
from zenthor.agent.replies import FAILURE_REPLY, write_failure_reply, write_replies
from zenthor.db import database, execute
from zenthor.models import AgentJob, OutboundMessage
from zenthor.queue import (
    ClaimRefused,
    Lease,
    LeaseLost,
    claim,
    complete,
    fail,
    heartbeat,
    release,
    requeue_stale,
)


def expire(job_id: int) -> None:
    """Move a job's lease into the past, as if its holder stopped heartbeating long ago."""
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (job_id,))


def job(job_id: int) -> AgentJob:
    return AgentJob.get_by_id(job_id)


def test_claim_hands_out_a_lease_and_refuses_a_live_one():
    job_id = make_job(make_conversation())
    lease = claim(job_id, "worker-a")
    assert isinstance(lease, Lease)
    assert lease.attempt == 1 and not lease.takeover
    row = job(job_id)
    assert row.status == "processing"
    assert row.processor_id == "worker-a"
    assert str(row.lease_token) == lease.token
    assert row.locked_until > row.started_at

    refused = claim(job_id, "worker-b")
    assert isinstance(refused, ClaimRefused)
    assert refused.reason == "held"
    assert refused.holder == "worker-a"
    assert str(job(job_id).lease_token) == lease.token


def test_concurrent_claims_of_one_job_give_exactly_one_lease():
    job_ids = [make_job(make_conversation(f"c{i}")) for i in range(20)]
    lock = threading.Lock()

    def contend(job_id: int, name: str, barrier: threading.Barrier, results: list[object]) -> None:
        barrier.wait()
        with database.connection_context():
            outcome = claim(job_id, name)
        with lock:
            results.append(outcome)

    for job_id in job_ids:
        barrier = threading.Barrier(12)
        results: list[object] = []
        threads = [
            threading.Thread(target=contend, args=(job_id, f"w{n}", barrier, results)) for n in range(12)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        leases = [r for r in results if isinstance(r, Lease)]
        assert len(leases) == 1, results
        assert job(job_id).processor_id == leases[0].worker_id


def test_jobs_of_one_conversation_are_claimed_in_arrival_order():
    conversation = make_conversation()
    first, second, third = (make_job(conversation, text) for text in ("one", "two", "three"))
    assert claim(second, "w").reason == "conversation_busy"
    assert claim(third, "w").reason == "conversation_busy"
    lease = claim(first, "w")
    assert isinstance(lease, Lease)
    assert claim(second, "w").reason == "conversation_busy"  # first still processing
    complete(lease)
    assert claim(third, "w").reason == "conversation_busy"  # second is older and pending
    assert isinstance(claim(second, "w"), Lease)


def test_a_job_awaiting_approval_does_not_hold_the_line():
    """I2 with approvals (issue 11 item 2): a job waiting for its asker's answer lets the jobs
    behind it run; resumed, it takes back its old place ahead of whatever is still pending."""
    from zenthor.queue import next_pending_job, resume_job

    conversation = make_conversation()
    asked, other, later = (make_job(conversation, text) for text in ("asked", "other", "later"))
    lease = claim(asked, "w")
    complete(lease, status="awaiting_approval")
    assert next_pending_job(conversation) == other  # nudged now, not after the answer
    assert claim(later, "w").reason == "conversation_busy"  # FIFO among the others is kept
    busy = claim(other, "w")
    assert isinstance(busy, Lease)
    assert resume_job(asked, {"approval_id": 1, "decision": "approved"})
    assert claim(asked, "w").reason == "conversation_busy"  # still one turn at a time
    complete(busy)
    assert next_pending_job(conversation) == asked  # the resumed job is back at its old place
    assert claim(later, "w").reason == "conversation_busy"
    assert isinstance(claim(asked, "w"), Lease)


def test_database_refuses_two_processing_jobs_in_one_conversation():
    """I2 is enforced by a partial unique index, not only by the claim's check."""
    conversation = make_conversation()
    first, second = make_job(conversation), make_job(conversation)
    execute("UPDATE agent_job SET status = 'processing' WHERE id = %s", (first,))
    with pytest.raises(IntegrityError):
        with database.atomic():
            execute("UPDATE agent_job SET status = 'processing' WHERE id = %s", (second,))
    other = make_job(make_conversation("other"))
    execute(
        "UPDATE agent_job SET status = 'processing' WHERE id = %s", (other,)
    )  # other conversations are free


def test_a_job_not_yet_available_and_an_unknown_job_are_refused():
    job_id = make_job(make_conversation())
    execute("UPDATE agent_job SET available_at = now() + interval '1 hour' WHERE id = %s", (job_id,))
    assert claim(job_id, "w").reason == "not_yet_available"
    assert claim(999_999, "w").reason == "not_found"
    assert job(job_id).status == "pending"


def test_completion_writes_the_reply_in_the_same_transaction():
    conversation = make_conversation()
    job_id = make_job(conversation, "hi")
    lease = claim(job_id, "w")
    written = complete(lease, write=lambda held: write_replies(conversation, held.job_id, ["hello!"]))
    assert job(job_id).status == "done" and job(job_id).finished_at is not None
    assert assistant_messages(conversation) == ["hello!"]
    assert [o.id for o in OutboundMessage.select()] == written.outbound_ids
    assert isinstance(claim(job_id, "w"), ClaimRefused)


def test_a_stale_token_changes_nothing_and_reports_the_lease_lost():
    conversation = make_conversation()
    job_id = make_job(conversation)
    old = claim(job_id, "paused-worker")
    expire(job_id)
    new = claim(job_id, "healthy-worker")
    assert isinstance(new, Lease) and new.takeover and new.attempt == 2

    assert heartbeat([old]) == [old] and old.lost
    before = job(job_id)
    with pytest.raises(LeaseLost):
        complete(old, write=lambda held: write_replies(conversation, held.job_id, ["from the stale worker"]))
    # The fencing is in the database, not only in the flag: a fresh Lease object with the old
    # token is refused by the UPDATE itself.
    old_again = Lease(**{**old.__dict__, "_lost": threading.Event(), "finishing": False})
    with pytest.raises(LeaseLost):
        complete(old_again, write=lambda held: write_replies(conversation, held.job_id, ["stale"]))
    old_third = Lease(**{**old.__dict__, "_lost": threading.Event(), "finishing": False})
    with pytest.raises(LeaseLost):
        fail(old_third, reason="x", message="y")
    old_fourth = Lease(**{**old.__dict__, "_lost": threading.Event(), "finishing": False})
    assert release(old_fourth, reason="shutdown") is False
    after = job(job_id)
    assert (after.status, str(after.lease_token), after.attempts, after.processor_id) == (
        before.status,
        str(before.lease_token),
        before.attempts,
        "healthy-worker",
    )
    assert assistant_messages(conversation) == []

    complete(new, write=lambda held: write_replies(conversation, held.job_id, ["from the healthy worker"]))
    assert assistant_messages(conversation) == ["from the healthy worker"]


def test_heartbeat_extends_only_live_leases():
    first = claim(make_job(make_conversation("a")), "w")
    second = claim(make_job(make_conversation("b")), "w")
    locked = job(first.job_id).locked_until
    execute("UPDATE agent_job SET lease_token = gen_random_uuid() WHERE id = %s", (second.job_id,))
    lost = heartbeat([first, second], lock_ms=120_000)
    assert lost == [second] and second.lost and not first.lost
    assert job(first.job_id).locked_until > locked


def test_retry_then_final_failure_writes_one_failure_reply():
    conversation = make_conversation()
    job_id = make_job(conversation, max_attempts=2)
    lease = claim(job_id, "w")
    outcome = fail(lease, reason="server", message="model answered 500")
    assert not outcome.final and outcome.attempts == 1
    row = job(job_id)
    assert row.status == "pending" and row.available_at > row.created_at and row.lease_token is None
    execute("UPDATE agent_job SET available_at = now() WHERE id = %s", (job_id,))

    lease = claim(job_id, "w")
    assert lease.attempt == 2 and lease.is_last_attempt
    outcome = fail(
        lease,
        reason="server",
        message="model answered 500",
        on_final=lambda held: write_failure_reply(conversation, held.job_id, in_reply_to=held.message_id),
    )
    assert outcome.final
    row = job(job_id)
    assert (row.status, row.attempts, row.error_reason) == ("failed", 2, "server")
    assert assistant_messages(conversation) == [FAILURE_REPLY]


def test_non_retryable_failure_fails_at_once():
    job_id = make_job(make_conversation(), max_attempts=5)
    outcome = fail(claim(job_id, "w"), reason="auth", message="bad key", retry=False)
    assert outcome.final and job(job_id).status == "failed"


def test_release_gives_the_job_back_without_counting_an_attempt():
    job_id = make_job(make_conversation())
    lease = claim(job_id, "w")
    assert release(lease, reason="shutdown")
    row = job(job_id)
    assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)
    assert lease.lost  # any later write by the old holder must fail
    assert isinstance(claim(job_id, "other"), Lease)


def test_requeue_touches_only_expired_leases_and_fails_the_last_attempt():
    live = claim(make_job(make_conversation("live")), "w")
    retry = claim(make_job(make_conversation("retry"), max_attempts=3), "w")
    last = claim(make_job(make_conversation("last"), max_attempts=1), "w")
    pending = make_job(make_conversation("pending"))
    expire(retry.job_id)
    expire(last.job_id)
    failed_seen = []
    stale = requeue_stale(on_failed=failed_seen.append)
    assert {(s.job_id, s.status) for s in stale} == {(retry.job_id, "pending"), (last.job_id, "failed")}
    assert [s.job_id for s in failed_seen] == [last.job_id]
    assert job(live.job_id).status == "processing" and str(job(live.job_id).lease_token) == live.token
    assert job(pending).status == "pending" and job(pending).attempts == 0
    requeued = job(retry.job_id)
    assert (requeued.status, requeued.attempts, requeued.lease_token) == ("pending", 1, None)
    dead = job(last.job_id)
    assert (dead.status, dead.error_reason, dead.attempts) == ("failed", "stale_lease", 1)
    assert requeue_stale() == []  # idempotent


def test_claim_does_not_take_over_a_lease_on_its_last_attempt():
    job_id = make_job(make_conversation(), max_attempts=1)
    claim(job_id, "w")
    expire(job_id)
    assert claim(job_id, "other").reason == "attempts_exhausted"
    assert requeue_stale()[0].status == "failed"


def test_concurrent_requeues_take_each_stale_job_once():
    leases = [claim(make_job(make_conversation(f"c{i}")), "w") for i in range(30)]
    for lease in leases:
        expire(lease.job_id)
    seen: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def sweep() -> None:
        barrier.wait()
        with database.connection_context():
            stale = requeue_stale(limit=1000)
        with lock:
            seen.extend(s.job_id for s in stale)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == sorted(lease.job_id for lease in leases)
    assert {j.attempts for j in AgentJob.select()} == {1}


def test_an_operator_can_retry_a_failed_job_once():
    from zenthor.queue.jobs import RetriedJob, RetryRefused, retry_failed

    job_id = make_job(make_conversation(), max_attempts=1)
    assert retry_failed(job_id) == RetryRefused(job_id, "not_failed", "pending")
    fail(claim(job_id, "w"), reason="server", message="boom")
    retried = retry_failed(job_id)
    assert isinstance(retried, RetriedJob) and retried.job_id > job_id and retried.open_ahead == 0
    again = retry_failed(job_id)
    assert isinstance(again, RetryRefused)
    assert str(again) == f"job {job_id} was already retried as job {retried.job_id} (pending)"
    old, new = job(job_id), job(retried.job_id)
    assert old.status == "failed"  # the record of what happened stays
    assert (new.status, new.attempts, new.retry_of, new.message_id) == ("pending", 0, job_id, old.message_id)
    assert (new.kind, new.max_attempts, new.conversation_id) == (
        old.kind,
        old.max_attempts,
        old.conversation_id,
    )
    assert isinstance(claim(retried.job_id, "w"), Lease)
    assert str(retry_failed(999_999)) == "job 999999 does not exist"


def test_the_claim_finds_what_is_ahead_in_line_through_the_partial_indexes():
    """With many finished jobs, the FIFO and busy checks must not scan older rows of the table."""

    from zenthor.queue import job_statements

    conversation = make_conversation()
    execute(
        "INSERT INTO agent_job (conversation_id, status) SELECT %s, 'done' FROM generate_series(1, 2000)",
        (conversation,),
    )
    job_id = make_job(conversation)
    execute("ANALYZE agent_job")
    with database.atomic() as transaction:
        plan = "\n".join(row[0] for row in execute("EXPLAIN " + job_statements.CLAIM, claim_params(job_id)))
        transaction.rollback()
    assert_claim_probes_partial_indexes(plan)
    assert_batch_uses_the_fifo_index(plan)


def test_one_sweep_recheck_chain_and_one_watchdog_winner():
    from zenthor.queue import sweep_state

    assert sweep_state.claim_next_check(60_000)  # the first asker starts the chain
    assert not sweep_state.claim_next_check(60_000)  # a second scheduler does not start another
    assert not sweep_state.claim_overdue(1_000)  # the chain is on time: no watchdog
    execute("UPDATE sweep_state SET next_check_at = now() - interval '2 seconds'")
    winners = [sweep_state.claim_overdue(1_000) for _ in range(3)]
    assert winners == [True, False, False]  # the chain stalled: exactly one worker sweeps
    execute("DELETE FROM sweep_state")
    assert sweep_state.claim_overdue(1_000)  # no sweep ever ran: the watchdog starts one
