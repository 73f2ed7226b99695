"""accept(): one user message and one job per inbound, whatever happens (I3)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from tests.ingress.helpers import count, inbound
from tests.support.workers import DbThread
from zenthor.db import execute
from zenthor.ingress import AnswerOutcome, AnswerRequest, InboundMessage, InvalidInbound, accept
from zenthor.ingress import answers as answers_module
from zenthor.models import Contact, Message


def no_publish(published: list[int]):
    return lambda job_id: published.append(job_id) or True


def test_accept_creates_conversation_message_and_job_and_publishes_after_commit():
    published: list[int] = []
    result = accept(inbound("hi there"), publish=no_publish(published))
    assert result.status == "accepted"
    assert published == [result.job_id]
    message = Message.get_by_id(result.message_id)
    assert (message.role, message.content, message.job_id, message.provider_message_id) == (
        "user",
        "hi there",
        result.job_id,
        "m-1",
    )
    assert count("agent_job", "status = 'pending' AND message_id = %s", (result.message_id,)) == 1
    assert count("inbound_dedupe") == 1


def test_second_delivery_is_a_duplicate_and_writes_nothing():
    published: list[int] = []
    first = accept(inbound(), publish=no_publish(published))
    second = accept(inbound(), publish=no_publish(published))
    assert (first.status, second.status) == ("accepted", "duplicate")
    assert published == [first.job_id]
    assert count("message") == 1 and count("agent_job") == 1


def test_same_provider_id_on_another_account_is_a_different_message():
    accept(inbound(), publish=lambda _: True)
    other = accept(inbound(account_id="acct-2"), publish=lambda _: True)
    assert other.status == "accepted"
    assert count("message") == 2


def test_ten_threads_sending_the_same_inbound_make_one_message_and_one_job():
    barrier = threading.Barrier(10)
    statuses: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        result = accept(inbound("race"), publish=lambda _: True)
        with lock:
            statuses.append(result.status)

    threads = [DbThread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == ["accepted"] + ["duplicate"] * 9
    assert count("message") == 1 and count("agent_job") == 1 and count("conversation") == 1


def test_failure_after_the_dedupe_insert_leaves_nothing_and_a_retry_is_accepted():
    def exploding_handler(request: AnswerRequest):
        raise RuntimeError("injected failure inside accept")

    answers_module.register_answer_handler(exploding_handler)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            accept(inbound("boom"), publish=lambda _: True)
    finally:
        answers_module.unregister_answer_handler(exploding_handler)
    for table in ("inbound_dedupe", "message", "agent_job", "conversation", "contact"):
        assert count(table) == 0, table
    retry = accept(inbound("boom"), publish=lambda _: True)
    assert retry.status == "accepted"
    assert count("message") == 1 and count("agent_job") == 1


def test_failure_in_job_creation_rolls_back_the_key(monkeypatch):
    import zenthor.ingress.pipeline as accept_module

    def broken_enqueue(*args, **kwargs):
        raise RuntimeError("injected: agent_job insert failed")

    monkeypatch.setattr(accept_module, "enqueue", broken_enqueue)
    with pytest.raises(RuntimeError):
        accept(inbound(), publish=lambda _: True)
    monkeypatch.undo()
    assert count("inbound_dedupe") == 0 and count("message") == 0
    assert accept(inbound(), publish=lambda _: True).status == "accepted"


def test_a_job_behind_another_of_its_chat_gets_no_nudge_of_its_own():
    """Its predecessor nudges or hands it over when it finishes (issue 13, item 3): one publish
    per burst, not one per message. Another chat's first message is published as ever."""
    published: list[int] = []
    first = accept(inbound("one", message_id="m-1"), publish=no_publish(published))
    second = accept(inbound("two", message_id="m-2"), publish=no_publish(published))
    other = accept(inbound("elsewhere", message_id="m-3", chat_id="chat-2"), publish=no_publish(published))
    assert (first.behind, second.behind, other.behind) == (False, True, False)
    assert published == [first.job_id, other.job_id]
    assert second.published is None


def test_a_burst_whose_later_messages_get_no_nudge_is_answered_in_order(worker, settings_env):
    """Real RabbitMQ and a real worker: only the first of five messages of a chat is published,
    and the completions hand over (or nudge) the rest; each is answered once, in order."""
    from tests.support.factories import assistant_messages
    from tests.support.workers import wait_for
    from zenthor.actors.publish import publish_dispatch
    from zenthor.models import AgentJob

    settings_env(AGENT_TURN="tests.support.turns:scripted_turn")
    # The nudges are recorded first and sent once all five are in, so no job finishes (and stops
    # holding the line) before the last is accepted.
    recorded: list[int] = []
    results = [
        accept(inbound(f"m{n}", message_id=f"burst-{n}"), publish=no_publish(recorded)) for n in range(5)
    ]
    assert [r.behind for r in results] == [False, True, True, True, True]
    assert recorded == [results[0].job_id]
    for job_id in recorded:
        publish_dispatch(job_id)
    jobs = [r.job_id for r in results]
    wait_for(
        lambda: {j.status for j in AgentJob.select().where(AgentJob.id.in_(jobs))} == {"done"},
        30,
        message="every job of the burst done",
    )
    assert assistant_messages(results[0].conversation_id) == [f"done: m{n}" for n in range(5)]


def test_a_commit_whose_answer_was_lost_is_still_accepted_and_published(monkeypatch):
    """The session dies right after the server committed (its answer never arrives): accept()
    asks the database, finds its message stored, and publishes the nudge, where a retry would
    have found the dedupe key and answered "duplicate" with the job never nudged."""
    from peewee import OperationalError

    from zenthor.db import database

    execute("SELECT 1")  # this thread's connection, kept as a gateway thread keeps it
    real_commit = type(database.obj).commit
    armed = [True]

    def commit_then_die(self):
        real_commit(self)
        if armed:
            armed.clear()
            self._state.conn.close()
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(type(database.obj), "commit", commit_then_die)
    published: list[int] = []
    result = accept(inbound("lost answer", message_id="lost-1"), publish=no_publish(published))
    assert not armed  # the commit's answer was lost
    assert result.status == "accepted"
    assert published == [result.job_id]
    assert count("agent_job") == 1


def test_a_failed_publish_keeps_the_job_pending_for_the_sweep():
    result = accept(inbound(), publish=lambda _: False)
    assert result.status == "accepted" and result.published is False
    assert count("agent_job", "status = 'pending'") == 1


def test_accept_refuses_to_run_inside_a_transaction():
    from zenthor.db import database

    with database.atomic(), pytest.raises(RuntimeError, match="outside a transaction"):
        accept(inbound(), publish=lambda _: True)


def test_answer_handler_takes_the_message_instead_of_a_turn():
    seen: list[AnswerRequest] = []

    def handler(request: AnswerRequest):
        seen.append(request)
        return AnswerOutcome(job_id=None, reason="approval_approved") if request.text == "YES" else None

    answers_module.register_answer_handler(handler)
    try:
        published: list[int] = []
        turn = accept(inbound("do it", message_id="a"), publish=no_publish(published))
        answer = accept(inbound("YES", message_id="b"), publish=no_publish(published))
    finally:
        answers_module.unregister_answer_handler(handler)
    assert (turn.status, answer.status, answer.reason) == ("accepted", "answer", "approval_approved")
    assert published == [turn.job_id]
    assert count("agent_job") == 1
    assert count("message", "role = 'user'") == 2  # the answer is stored in the conversation
    # The handler is told who wrote it: in a group only the asker's answer counts.
    assert seen[-1] == AnswerRequest(answer.conversation_id, answer.message_id, "user-1", "YES")


def test_answer_outcome_job_is_published_after_commit():
    answers_module.register_answer_handler(h := lambda request: AnswerOutcome(job_id=4242, reason="resumed"))
    try:
        published: list[int] = []
        result = accept(inbound("YES"), publish=no_publish(published))
    finally:
        answers_module.unregister_answer_handler(h)
    assert result.status == "answer" and published == [4242]


def test_an_outcome_that_starts_a_turn_still_makes_the_message_a_turn():
    """A handler that settled a question the message did not answer (superseded): a turn job."""
    answers_module.register_answer_handler(
        h := lambda request: AnswerOutcome(job_id=None, reason="approval_superseded", start_turn=True)
    )
    try:
        published: list[int] = []
        result = accept(inbound("yes but later"), publish=no_publish(published))
    finally:
        answers_module.unregister_answer_handler(h)
    assert (result.status, result.reason) == ("accepted", "approval_superseded")
    assert published == [result.job_id] and count("agent_job") == 1
    assert execute("SELECT job_id FROM message WHERE id = %s", (result.message_id,)) == [(result.job_id,)]
    with pytest.raises(ValueError, match="names no job"):
        AnswerOutcome(job_id=7, reason="x", start_turn=True)


def test_allowlist_policy_records_unknown_sender_and_ignores_it(settings_env):
    settings_env(WEBHOOK_CONTACT_POLICY="allowlist", WEBHOOK_ALLOW_FROM="friend, other")
    published: list[int] = []
    stranger = accept(inbound(sender_id="stranger", sender_name="S"), publish=no_publish(published))
    friend = accept(inbound(message_id="m-2", sender_id="friend"), publish=no_publish(published))
    assert (stranger.status, friend.status) == ("ignored", "accepted")
    assert published == [friend.job_id]
    contact = Contact.get(Contact.sender_id == "stranger")
    assert (contact.display_name, contact.allowed) == ("S", False)
    assert count("message") == 1
    # The provider retrying the ignored message is a duplicate, not a second decision.
    assert accept(inbound(sender_id="stranger"), publish=lambda _: True).status == "duplicate"
    # An operator allowing the contact lets its next message through.
    Contact.update(allowed=True).where(Contact.sender_id == "stranger").execute()
    assert (
        accept(inbound(message_id="m-3", sender_id="stranger"), publish=lambda _: True).status == "accepted"
    )


def test_disabled_policy_ignores_everyone(settings_env):
    settings_env(WEBHOOK_CONTACT_POLICY="disabled")
    assert accept(inbound(), publish=lambda _: True).status == "ignored"
    assert count("agent_job") == 0


def test_message_without_provider_id_gets_a_derived_key():
    sent = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = accept(inbound("ok", message_id=None, sent_at=sent), publish=lambda _: True)
    retry = accept(inbound("ok", message_id=None, sent_at=sent), publish=lambda _: True)
    later = accept(inbound("ok", message_id=None, sent_at=sent.replace(minute=5)), publish=lambda _: True)
    assert (first.status, retry.status, later.status) == ("accepted", "duplicate", "accepted")
    (key,) = [row[0] for row in execute("SELECT provider_message_id FROM inbound_dedupe LIMIT 1")]
    assert key.startswith("derived:")


def test_a_message_with_neither_id_nor_sent_at_is_refused():
    """Without an id or the sender's time a repeat cannot be recognised (issue 11, item 6): the
    message is refused naming what is missing, before anything is written."""
    with pytest.raises(InvalidInbound) as info:
        inbound("ok", message_id=None)
    assert info.value.field == "sent_at" and "provider_message_id" in info.value.problem
    with pytest.raises(InvalidInbound) as info:
        InboundMessage.from_dict({**inbound("ok").to_dict(), "provider_message_id": None, "sent_at": None})
    assert info.value.field == "sent_at"
    # Either one is enough: an id alone, or a time alone.
    assert inbound("ok", message_id="only-id").sent_at is None
    assert (
        inbound("ok", message_id=None, sent_at=datetime(2025, 1, 2, tzinfo=UTC))
        .dedupe_key()
        .startswith("derived:")
    )
    assert count("inbound_dedupe") == 0 and count("message") == 0


def test_the_senders_time_is_stored_with_the_message():
    """message.sent_at is the provider's time (issue 11, item 7); NULL when the channel gave none."""
    sent = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    with_time = accept(inbound("timed", message_id="t-1", sent_at=sent), publish=lambda _: True)
    without = accept(inbound("untimed", message_id="t-2"), publish=lambda _: True)
    assert Message.get_by_id(with_time.message_id).sent_at == sent
    assert Message.get_by_id(without.message_id).sent_at is None
    # A naive provider time is taken as UTC and stored as such.
    naive = accept(
        inbound("naive", message_id="t-3", sent_at=datetime(2025, 3, 4, 5, 6, 7)), publish=lambda _: True
    )
    assert Message.get_by_id(naive.message_id).sent_at == sent


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"chat_id": ""}, "chat_id"),
        ({"sender_id": 5}, "sender_id"),
        ({"text": None}, "text"),
        ({"provider_message_id": "x" * 300}, "provider_message_id"),
        ({"account_id": "a\x00b"}, "account_id"),
        ({"text": "a\x00b"}, "text"),
        ({"sender_name": "Ana\x00"}, "sender_name"),
    ],
)
def test_invalid_inbound_names_the_field(overrides, field):
    with pytest.raises(InvalidInbound) as info:
        inbound(**overrides)
    assert info.value.field == field and field in str(info.value)


def test_round_trip_through_dict_keeps_unicode():
    text = "héllo 👋🏽 שלום عربى e\u0301 \u200f"
    message = inbound(text)
    assert InboundMessage.from_dict(message.to_dict()) == message


def test_accepts_of_one_conversation_commit_in_the_order_of_their_ids():
    """Two senders in one group chat: the second accept waits for the first to commit, so the
    FIFO order of their jobs (by id) is the order in which they became visible."""
    inside_first = threading.Event()
    release_first = threading.Event()

    def pause_first(request: AnswerRequest):
        if request.text == "first":
            inside_first.set()
            assert release_first.wait(10)
        return None

    # The conversation exists already (a new one would make the second accept wait on its row).
    accept(inbound("earlier", message_id="g-0"), publish=lambda _: True)
    answers_module.register_answer_handler(pause_first)
    results: dict[str, object] = {}
    try:
        first = DbThread(
            target=lambda: results.update(
                first=accept(inbound("first", message_id="g-1"), publish=lambda _: True)
            )
        )
        first.start()
        assert inside_first.wait(10)
        second = DbThread(
            target=lambda: results.update(
                second=accept(inbound("second", message_id="g-2", sender_id="user-2"), publish=lambda _: True)
            )
        )
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second accept must wait for the first one's commit"
        release_first.set()
        first.join(timeout=10)
        second.join(timeout=10)
    finally:
        release_first.set()
        answers_module.unregister_answer_handler(pause_first)
    assert results["first"].job_id < results["second"].job_id
