"""The agent turn through the real dispatch path (real Postgres, real HTTP to a fake model)."""

from __future__ import annotations

import logging
import time

from tests.agent.helpers import count, job, messages, outbox_texts
from tests.support.fake_model import Reply, tool_call
from tests.support.workers import DbThread
from zenthor.actors.dispatch import process_job
from zenthor.agent.replies import FAILURE_REPLY
from zenthor.db import execute
from zenthor.queue import Lease, claim, requeue_stale


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_reply_without_tools(model_env, fake_model, tools, new_job):
    conversation_id, job_id = new_job("hi there")
    assert process_job(job_id) == "done"
    assert job(job_id).status == "done"
    assert outbox_texts(conversation_id) == ["ok: hi there"]
    request = fake_model.requests[0]
    assert request["model"] == "primary-model"
    assert request["messages"][0]["role"] == "system"
    assert request["messages"][-1] == {"role": "user", "content": "hi there"}
    assert {t["function"]["name"] for t in request["tools"]} == {"core_time_now", "core_schedule_remind"}


def test_whatsapp_prompt_forbids_headings_and_tables(model_env, fake_model, tools):
    from tests.support.factories import make_conversation, make_job

    conversation_id = make_conversation(channel="whatsapp", account_id="default", chat_id="5511")
    process_job(make_job(conversation_id, "hello"))
    system = fake_model.requests[0]["messages"][0]["content"]
    assert "WhatsApp" in system and "headings" in system and "tables" in system


def test_tool_round_trip(model_env, fake_model, tools, new_job):
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_time_now", {}, "call_t")]),
        Reply(content="It is 03:04 UTC."),
    )
    conversation_id, job_id = new_job("what time is it?")
    assert process_job(job_id) == "done"
    assert tools.calls == [("core_time_now", {})]
    assert outbox_texts(conversation_id) == ["It is 03:04 UTC."]
    second = fake_model.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_t"
    assert second[-1]["role"] == "tool" and "2026-01-02" in second[-1]["content"]
    stored = [(m.role, m.tool_call_id) for m in messages(conversation_id)]
    assert stored == [("user", None), ("assistant", None), ("tool", "call_t"), ("assistant", None)]
    assert messages(conversation_id)[1].tool_calls[0]["function"]["name"] == "core_time_now"


def test_tool_failure_goes_back_to_the_model(model_env, fake_model, tools, new_job):
    tools.fail_with = "clock unavailable"
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_time_now", {})]),
        Reply(content="Sorry, my clock is broken."),
    )
    conversation_id, job_id = new_job("time?")
    assert process_job(job_id) == "done"
    assert "clock unavailable" in fake_model.requests[1]["messages"][-1]["content"]
    assert outbox_texts(conversation_id) == ["Sorry, my clock is broken."]


def test_500_twice_then_200_gives_one_reply(model_env, fake_model, tools, new_job):
    fake_model.script(Reply(status=500), Reply(status=500), Reply(content="finally"))
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert len(fake_model.requests) == 3
    assert outbox_texts(conversation_id) == ["finally"]


def test_429_retry_after_is_honoured(model_env, fake_model, tools, new_job):
    fake_model.script(Reply(status=429, headers={"Retry-After": "1"}), Reply(content="after the wait"))
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert fake_model.times[1] - fake_model.times[0] >= 0.95
    assert outbox_texts(conversation_id) == ["after the wait"]


def test_401_fails_at_once_with_the_failure_reply_and_an_alert(model_env, fake_model, tools, new_job, caplog):
    caplog.set_level(logging.INFO)
    fake_model.script(Reply(status=401, error={"message": "bad key", "code": "invalid_api_key"}))
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "failed"
    row = job(job_id)
    assert (row.status, row.error_reason, row.attempts) == ("failed", "auth", 1)
    assert outbox_texts(conversation_id) == [FAILURE_REPLY]
    assert len(fake_model.requests) == 1  # no retry, no fallback
    alert = events(caplog, "agent.model.access_denied")
    assert alert and alert[0].error_kind == "auth" and alert[0].status_code == 401


def test_billing_error_is_not_retried(model_env, fake_model, tools, new_job):
    model_env(AI_FALLBACK_MODEL="backup-model")
    fake_model.script(
        Reply(status=429, error={"message": "You exceeded your quota", "code": "insufficient_quota"})
    )
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "failed"
    assert job(job_id).error_reason == "billing"
    assert fake_model.models_called() == ["primary-model"]


def test_primary_down_fallback_answers(model_env, fake_model, tools, new_job, caplog):
    caplog.set_level(logging.INFO)
    model_env(AI_FALLBACK_MODEL="backup-model", AI_RETRY_ATTEMPTS="2")
    fake_model.script(*[Reply(status=503, model="primary-model") for _ in range(2)])
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert fake_model.models_called() == ["primary-model", "primary-model", "backup-model"]
    assert outbox_texts(conversation_id) == ["ok: hello"]
    assert events(caplog, "agent.model.fallback")


def test_model_down_retries_the_job_then_fails_with_the_reply(model_env, fake_model, tools, new_job):
    model_env(AI_RETRY_ATTEMPTS="1", AGENT_JOB_RETRY_BASE_MS="0", AGENT_JOB_MAX_ATTEMPTS="2")
    fake_model.default = lambda body: Reply(status=502)
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "retry_scheduled"
    assert (job(job_id).status, job(job_id).error_reason) == ("pending", "server")
    assert outbox_texts(conversation_id) == []
    assert process_job(job_id) == "failed"
    assert outbox_texts(conversation_id) == [FAILURE_REPLY]


def test_lease_lost_during_model_call_writes_nothing(model_env, fake_model, tools, new_job):
    fake_model.script(Reply(content="too late", delay_s=1.5))
    conversation_id, job_id = new_job()

    def steal() -> None:
        # Wait until the model call is in flight, then expire the lease and let another worker take it.
        while not fake_model.requests:
            time.sleep(0.02)
        execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (job_id,))
        requeue_stale()
        assert isinstance(claim(job_id, "thief"), Lease)

    thief = DbThread(target=steal)
    thief.start()
    outcome = process_job(job_id)
    thief.join()
    assert outcome == "lease_lost"
    assert [m.role for m in messages(conversation_id)] == ["user"]
    assert count("outbound_message") == 0
    assert job(job_id).processor_id == "thief"


def test_invalid_json_arguments_are_reported_to_the_model(model_env, fake_model, tools, new_job):
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_time_now", "{not json", "c1")]),
        Reply(content="fixed"),
    )
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert tools.calls == []
    result = fake_model.requests[1]["messages"][-1]
    assert result["role"] == "tool" and "not valid JSON" in result["content"]


def test_schema_violation_is_reported_to_the_model(model_env, fake_model, tools, new_job):
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_time_now", {"timezone": 5}, "c1")]),
        Reply(content="fixed"),
    )
    _, job_id = new_job()
    assert process_job(job_id) == "done"
    assert tools.calls == []
    assert "timezone" in fake_model.requests[1]["messages"][-1]["content"]


def test_unknown_tool_is_reported_to_the_model(model_env, fake_model, tools, new_job):
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("rm_rf", {}, "c1")]),
        Reply(content="I can't do that"),
    )
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    content = fake_model.requests[1]["messages"][-1]["content"]
    assert "no tool named 'rm_rf'" in content and "core_time_now" in content
    assert outbox_texts(conversation_id) == ["I can't do that"]


def test_empty_choices_are_retried(model_env, fake_model, tools, new_job):
    fake_model.script(Reply(empty_choices=True), Reply(content="here"))
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert outbox_texts(conversation_id) == ["here"]


def test_garbage_body_every_time_ends_in_the_failure_reply(model_env, fake_model, tools, new_job):
    model_env(AGENT_JOB_MAX_ATTEMPTS="1")
    fake_model.default = lambda body: Reply(raw_body="<html>oops</html>")
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "failed"
    assert job(job_id).error_reason == "format"
    assert outbox_texts(conversation_id) == [FAILURE_REPLY]


def test_step_limit_stops_a_looping_model(model_env, fake_model, tools, new_job, caplog):
    caplog.set_level(logging.INFO)
    model_env(AI_MAX_STEPS="3")
    fake_model.default = lambda body: Reply(content=None, tool_calls=[tool_call("core_time_now", {})])
    conversation_id, job_id = new_job()
    assert process_job(job_id) == "done"
    assert len(fake_model.requests) == 3
    assert "more steps" in outbox_texts(conversation_id)[0]
    assert events(caplog, "agent.turn.step_limit")


def test_no_model_configured_uses_the_echo_responder(settings_env, new_job, caplog):
    from zenthor.agent.echo import warn_if_unconfigured

    caplog.set_level(logging.INFO)
    settings = settings_env(AI_BASE_URL="", AI_MODEL="")
    assert warn_if_unconfigured(settings)
    warning = events(caplog, "config.warning")
    assert warning and "AI_BASE_URL" in warning[0].setting and "AI_MODEL" in warning[0].setting
    conversation_id, job_id = new_job("ping")
    assert process_job(job_id) == "done"
    assert outbox_texts(conversation_id) == ["[echo responder: no AI model configured] You said: ping"]
