"""Collect (issue 14, item 1): one turn answers the turn jobs queued behind the one it claims.

The lease statements are driven directly (claim, complete, fail, the sweep's requeue) on the real
database; the processes tests (a real worker, kill -9, SIGSTOP) are in test_collect_processes.py.
"""

from __future__ import annotations

import pytest

from tests.support.factories import make_conversation
from zenthor.agent.context import load_history
from zenthor.db import database, execute
from zenthor.models import AgentJob, Message
from zenthor.queue import ClaimRefused, Lease, LeaseLost, claim, complete, enqueue_job, fail


@pytest.fixture
def collect(settings_env):
    """Collect mode, as the product's default."""
    return settings_env(QUEUE_MODE="collect", QUEUE_COLLECT_MAX="20")


def turn(conversation: int, text: str, *, sender: str = "alice", kind: str = "turn") -> int:
    """A user message of ``sender`` and its pending job, as accept writes them; the job id."""
    with database.atomic():
        message = Message.create(conversation=conversation, role="user", content=text, sender_id=sender)
        job_id = enqueue_job(conversation, message.id, kind=kind)
        Message.update(job_id=job_id).where(Message.id == message.id).execute()
    return job_id


def rows(job_ids: list[int]) -> list[tuple[str, int | None]]:
    jobs = {j.id: j for j in AgentJob.select().where(AgentJob.id.in_(job_ids))}
    return [(jobs[i].status, jobs[i].merged_into) for i in job_ids]


def claimed(job_id: int, worker: str = "w") -> Lease:
    lease = claim(job_id, worker)
    assert isinstance(lease, Lease), lease
    return lease


def reply(text: str):
    def write(held: Lease) -> None:
        Message.create(conversation=held.conversation_id, role="assistant", content=text, job_id=held.job_id)

    return write


def test_a_claim_merges_the_turns_behind_it_and_the_completion_answers_them_together(collect):
    conversation = make_conversation("burst")
    jobs = [turn(conversation, text) for text in ("hi", "can you remind me", "to call mom at 6")]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == tuple(jobs[1:])
    assert lease.queue_mode == "collect"
    messages = [j.message_id for j in AgentJob.select().where(AgentJob.id.in_(jobs)).order_by(AgentJob.id)]
    assert lease.message_ids == tuple(messages) and lease.reply_to == messages[-1]
    # The merged jobs stay pending, marked with the head and its token: nobody else may claim them.
    assert rows(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])]
    tokens = {str(j.lease_token) for j in AgentJob.select().where(AgentJob.id.in_(jobs))}
    assert tokens == {lease.token}
    assert isinstance(claim(jobs[1], "other"), ClaimRefused)

    history = load_history(conversation, lease.job_id, lease.message_id, batch=lease.merged_job_ids)
    assert [m["content"] for m in history] == ["hi", "can you remind me", "to call mom at 6"]

    complete(lease, write=reply("I will remind you to call mom at 6"))
    assert lease.answered_merged == 2
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]
    # Their messages joined the head's job: a later turn reads the burst, then the one answer.
    assert {m.job_id for m in Message.select().where(Message.id.in_(messages))} == {jobs[0]}
    later = turn(conversation, "thanks")
    later_lease = claimed(later)
    assert later_lease.merged_job_ids == ()
    history = load_history(conversation, later, later_lease.message_id)
    assert [m["content"] for m in history] == [
        "hi",
        "can you remind me",
        "to call mom at 6",
        "I will remind you to call mom at 6",
        "thanks",
    ]


def test_followup_merges_nothing_and_the_conversations_own_mode_goes_first(settings_env):
    settings_env(QUEUE_MODE="followup", QUEUE_MODE_WEBHOOK="collect")
    plain = make_conversation("plain", channel="test")
    jobs = [turn(plain, f"m{n}") for n in range(3)]
    lease = claimed(jobs[0])
    assert (lease.merged_job_ids, lease.queue_mode) == ((), "followup")
    complete(lease)
    assert rows(jobs)[1:] == [("pending", None), ("pending", None)]

    webhook = make_conversation("by-channel", channel="webhook")
    jobs = [turn(webhook, f"m{n}") for n in range(3)]
    assert claimed(jobs[0]).merged_job_ids == tuple(jobs[1:])  # QUEUE_MODE_WEBHOOK

    chosen = make_conversation("chose-followup", channel="webhook")
    execute("UPDATE conversation SET queue_mode = 'followup' WHERE id = %s", (chosen,))
    jobs = [turn(chosen, f"m{n}") for n in range(3)]
    assert claimed(jobs[0]).merged_job_ids == ()  # the conversation's own choice


def test_a_batch_stops_at_a_resume_at_another_sender_and_at_the_cap(collect, settings_env):
    conversation = make_conversation("group")
    jobs = [
        turn(conversation, "a1"),
        turn(conversation, "a2"),
        turn(conversation, "b1", sender="bob"),
        turn(conversation, "a3"),
    ]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == (jobs[1],)  # bob's message keeps its own turn, and a3 waits behind it
    complete(lease)
    assert claimed(jobs[2]).merged_job_ids == ()

    other = make_conversation("resume-behind")
    jobs = [turn(other, "x"), turn(other, "y"), turn(other, "z")]
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (jobs[1],))
    assert claimed(jobs[0]).merged_job_ids == ()  # a resume is never merged, nor what follows it

    settings_env(QUEUE_COLLECT_MAX="2")
    capped = make_conversation("capped")
    jobs = [turn(capped, f"m{n}") for n in range(5)]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == tuple(jobs[1:3])
    complete(lease)
    assert claimed(jobs[3]).merged_job_ids == (jobs[4],)


def test_a_resume_claimed_as_head_merges_nothing(collect):
    conversation = make_conversation("resume-head")
    jobs = [turn(conversation, "approve?"), turn(conversation, "later")]
    execute("UPDATE agent_job SET kind = 'resume' WHERE id = %s", (jobs[0],))
    assert claimed(jobs[0]).merged_job_ids == ()


def test_a_lost_lease_writes_nothing_for_any_job_of_its_batch(collect):
    conversation = make_conversation("lost")
    jobs = [turn(conversation, f"m{n}") for n in range(3)]
    stale = claimed(jobs[0], "stale")
    # The lease expires (the worker was paused) and another worker takes the head, and the batch.
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (jobs[0],))
    fresh = claimed(jobs[0], "fresh")
    assert fresh.merged_job_ids == tuple(jobs[1:]) and fresh.attempt == 2
    with pytest.raises(LeaseLost):
        complete(stale, write=reply("stale answer"))
    assert rows(jobs) == [("processing", None), ("pending", jobs[0]), ("pending", jobs[0])]
    complete(fresh, write=reply("fresh answer"))
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]
    assert [
        m.content
        for m in Message.select().where(Message.role == "assistant", Message.conversation == conversation)
    ] == ["fresh answer"]


def test_a_message_arriving_after_the_claim_waits_for_the_next_turn(collect):
    conversation = make_conversation("late")
    jobs = [turn(conversation, "a"), turn(conversation, "b")]
    lease = claimed(jobs[0])
    late = turn(conversation, "c")  # accepted while the turn runs: not read by it
    history = load_history(conversation, lease.job_id, lease.message_id, batch=lease.merged_job_ids)
    assert [m["content"] for m in history] == ["a", "b"]
    complete(lease, chain_to="w")
    assert rows([*jobs, late]) == [("done", None), ("done", jobs[0]), ("processing", None)]
    assert lease.chained is not None and lease.chained.job_id == late


def test_the_hand_over_merges_the_next_batch(collect):
    conversation = make_conversation("chain")
    first = turn(conversation, "first")
    execute("UPDATE conversation SET queue_mode = 'followup' WHERE id = %s", (conversation,))
    lease = claimed(first)
    jobs = [turn(conversation, f"m{n}") for n in range(3)]  # a burst while the first turn runs
    execute("UPDATE conversation SET queue_mode = NULL WHERE id = %s", (conversation,))
    complete(lease, chain_to="w")
    chained = lease.chained
    assert chained is not None and chained.job_id == jobs[0]
    assert chained.merged_job_ids == tuple(jobs[1:])
    complete(chained)
    assert rows(jobs) == [("done", None), ("done", jobs[0]), ("done", jobs[0])]


def test_after_a_batch_fails_for_good_each_message_left_gets_a_turn_of_its_own(collect):
    """A message that breaks its turn (the model refuses it, the worker crashes on it) must not
    take the rest of the burst down with it: the survivors of a failed batch are answered alone."""
    conversation = make_conversation("failed-head")
    jobs = [turn(conversation, f"m{n}") for n in range(3)]
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == tuple(jobs[1:])
    fail(lease, reason="format", message="the model refused the request", retry=False)
    assert [s for s, _ in rows(jobs)] == ["failed", "pending", "pending"]
    alone = claimed(jobs[1])
    assert alone.merged_job_ids == ()  # left behind by a batch that failed: answered alone
    complete(alone)
    assert rows(jobs)[1] == ("done", None)
    last = claimed(jobs[2])
    assert last.merged_job_ids == ()
    complete(last)


def test_a_failed_attempt_is_retried_alone_but_a_release_or_one_lost_lease_merges_again(collect):
    from zenthor.queue import release, requeue_stale

    conversation = make_conversation("faults")
    jobs = [turn(conversation, f"m{n}") for n in range(3)]
    # A warm shutdown gives the job back without an attempt: the batch is merged again.
    first = claimed(jobs[0])
    assert release(first, reason="shutdown")
    second = claimed(jobs[0])
    assert second.merged_job_ids == tuple(jobs[1:]) and second.attempt == 1
    # A crash: the sweep takes the expired lease back; the next claim merges the batch again.
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (jobs[0],))
    assert [job.job_id for job in requeue_stale()] == [jobs[0]]
    third = claimed(jobs[0])
    assert third.merged_job_ids == tuple(jobs[1:]) and third.attempt == 2
    # The turn itself failed: the next attempt answers the head alone (the batch may be at fault).
    fail(third, reason="server", message="the model answered 500")
    execute("UPDATE agent_job SET available_at = now() WHERE id = %s", (jobs[0],))
    fourth = claimed(jobs[0])
    assert fourth.merged_job_ids == () and fourth.attempt == 3
    complete(fourth)
    assert rows(jobs) == [("done", None), ("pending", jobs[0]), ("pending", jobs[0])]  # marks of no lease
    rest = claimed(jobs[1])
    assert rest.merged_job_ids == (jobs[2],)
    complete(rest)
    assert rows(jobs)[1:] == [("done", None), ("done", jobs[1])]


def test_a_second_lost_lease_answers_the_head_alone(collect):
    conversation = make_conversation("two-losses")
    jobs = [turn(conversation, f"m{n}") for n in range(2)]
    claimed(jobs[0], "a")
    for taker in ("b", "c"):
        execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (jobs[0],))
        lease = claimed(jobs[0], taker)
    assert (lease.attempt, lease.takeover, lease.merged_job_ids) == (3, True, ())


def test_an_operators_retry_is_never_merged_and_the_reply_quotes_the_newest_message(collect):
    from zenthor.queue import retry_failed

    conversation = make_conversation("retried")
    old = turn(conversation, "old question")
    fail(claimed(old), reason="format", message="refused", retry=False)
    jobs = [turn(conversation, "a"), turn(conversation, "b")]
    retried = retry_failed(old)
    after = turn(conversation, "c")
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == (jobs[1],)  # the retry stops the batch: it was asked for alone
    complete(lease)
    again = claimed(retried.job_id)
    assert again.merged_job_ids == (after,)
    # Its own message is the oldest: the reply quotes the newest one the turn read.
    newest = AgentJob.get_by_id(after).message_id
    assert again.message_ids[0] < newest and again.reply_to == newest


def test_a_debounced_message_during_a_batchs_turn_waits_its_full_quiet(collect):
    from zenthor.queue import enqueue

    conversation = make_conversation("typing-on")
    jobs = [turn(conversation, f"m{n}") for n in range(2)]
    execute(
        "UPDATE agent_job SET created_at = now() - interval '20 seconds', available_at = now() - interval '20 seconds'"
        " WHERE id = ANY(%s)",
        (jobs,),
    )
    lease = claimed(jobs[0])
    assert lease.merged_job_ids == (jobs[1],)
    before = AgentJob.get_by_id(jobs[1]).available_at
    with database.atomic():
        message = Message.create(
            conversation=conversation, role="user", content="still typing", sender_id="alice"
        )
        queued = enqueue(conversation, message.id, debounce_ms=3000, debounce_max_ms=15000)
    # The burst being answered neither caps the new one's wait nor moves.
    assert queued.behind and queued.delay_ms == 3000
    assert AgentJob.get_by_id(jobs[1]).available_at == before


def test_a_question_asked_by_a_batchs_turn_answers_the_whole_batch(collect):
    conversation = make_conversation("asks")
    jobs = [turn(conversation, "delete my files"), turn(conversation, "all of them")]
    lease = claimed(jobs[0])
    complete(lease, status="awaiting_approval")
    assert rows(jobs) == [("awaiting_approval", None), ("done", jobs[0])]
