"""The dispatch actor on a real RabbitMQ vhost: the happy path and bad input (I4, I6)."""

from __future__ import annotations

import logging

import pika
import pytest

from tests.conftest import TEST_ENV
from tests.support.factories import assistant_messages, make_conversation, make_job
from tests.support.workers import wait_for
from zenthor.actors.dispatch import dispatch
from zenthor.actors.publish import publish_dispatch
from zenthor.models import AgentJob, OutboundMessage


@pytest.fixture(autouse=True)
def scripted(settings_env):
    """These tests are about the queue, not the agent: the scripted turn answers ``done: <text>``."""
    settings_env(AGENT_TURN="tests.support.turns:scripted_turn")


def done(job_id: int) -> bool:
    return AgentJob.get_by_id(job_id).status == "done"


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_a_published_job_is_answered_once(worker):
    conversation = make_conversation()
    job_id = make_job(conversation, "ping")
    assert publish_dispatch(job_id)
    assert publish_dispatch(job_id)  # a duplicate nudge changes nothing
    wait_for(lambda: done(job_id), 20, message="job done")
    wait_for(lambda: worker.broker.join("dispatch", timeout=10_000) or True, 15)
    assert assistant_messages(conversation) == ["done: ping"]
    assert OutboundMessage.select().count() == 1


def test_the_next_job_of_a_conversation_is_nudged_at_once(worker):
    conversation = make_conversation()
    jobs = [make_job(conversation, f"m{i}") for i in range(3)]
    publish_dispatch(jobs[0])  # only the first is published: the rest must follow without the sweep
    wait_for(lambda: all(done(j) for j in jobs), 20, message="all three jobs done")
    assert assistant_messages(conversation) == ["done: m0", "done: m1", "done: m2"]


def test_bad_dispatch_messages_are_reported_and_the_worker_carries_on(worker, caplog):
    caplog.set_level(logging.INFO)
    dispatch.send(987_654)  # a job that does not exist
    dispatch.send("not-a-number")
    dispatch.send_with_options(args=(1, 2))
    # A body that is not a Dramatiq message at all, published straight to the queue.
    params = pika.URLParameters(TEST_ENV["RABBITMQ_URL"])
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.basic_publish("", "dispatch", b"\x00{not json", pika.BasicProperties(delivery_mode=2))
        channel.basic_publish("", "dispatch", b'{"queue_name": "dispatch"}')
    wait_for(lambda: events(caplog, "queue.job.not_found"), 15, message="not_found event")
    wait_for(lambda: len(events(caplog, "queue.dispatch.bad_message")) >= 2, 15, message="bad_message events")
    wait_for(lambda: len(events(caplog, "queue.message.undecodable")) >= 2, 15, message="undecodable events")
    assert "not-a-number" in events(caplog, "queue.dispatch.bad_message")[0].error

    conversation = make_conversation()
    job_id = make_job(conversation, "still alive?")
    publish_dispatch(job_id)
    wait_for(lambda: done(job_id), 20, message="a real job after the bad ones")
    assert assistant_messages(conversation) == ["done: still alive?"]


def test_database_unreachable_during_a_claim_loses_nothing(worker, caplog):
    """Postgres refuses connections while a dispatch arrives: a typed event, Dramatiq retries the
    message with backoff, and the job is answered once the database is back."""
    from peewee import InterfaceError, OperationalError

    from tests.conftest import PG_ADMIN_URL, TEST_DB
    from tests.support.services import _admin
    from zenthor.db import database

    caplog.set_level(logging.INFO)
    conversation = make_conversation()
    job_id = make_job(conversation, "are you there?")
    admin = _admin(PG_ADMIN_URL)
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{TEST_DB}" ALLOW_CONNECTIONS false')
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (TEST_DB,)
            )
        publish_dispatch(job_id)
        wait_for(
            lambda: [r for r in events(caplog, "queue.database.unavailable") if r.operation == "claim"],
            20,
            message="database.unavailable event from the claim",
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{TEST_DB}" ALLOW_CONNECTIONS true')
        admin.close()
        try:
            database.close()  # this thread's pooled connection was terminated too
        except (OperationalError, InterfaceError):
            pass

    def answered() -> bool:
        try:
            return done(job_id)
        except (OperationalError, InterfaceError):
            database.close()  # this thread's connection was terminated too
            return False

    wait_for(answered, 30, interval=0.2, message="job done after the database came back")
    assert assistant_messages(conversation) == ["done: are you there?"]
    assert AgentJob.get_by_id(job_id).attempts == 0  # an infrastructure error costs no attempt


def test_a_nudge_that_arrives_before_the_job_is_available_comes_back_on_time(worker, settings_env):
    """A retry's delayed nudge can arrive early (clock skew between hosts): it is re-published for
    the moment the database says, instead of waiting for the sweep's re-publish grace period."""
    from zenthor.db import execute

    settings_env(AGENT_TURN="tests.support.turns:scripted_turn", DISPATCH_REPUBLISH_GRACE_MS="600000")
    conversation = make_conversation()
    job_id = make_job(conversation, "later")
    execute(
        "UPDATE agent_job SET available_at = now() + interval '1500 milliseconds' WHERE id = %s", (job_id,)
    )
    publish_dispatch(job_id)
    wait_for(lambda: done(job_id), 10, message="job done soon after it became available")
    assert assistant_messages(conversation) == ["done: later"]
