"""The turn with the real plugin tool registry (built-in core-time and core-schedule plugins)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.agent.helpers import job, outbox_texts
from tests.support.fake_model import Reply, tool_call
from zenthor.actors.dispatch import process_job
from zenthor.db import execute
from zenthor.ingress import InboundMessage, accept


def inbound(text: str, pid: str) -> InboundMessage:
    return InboundMessage(
        channel="webhook",
        account_id="acct",
        chat_id="chat-p",
        sender_id="user-p",
        text=text,
        provider_message_id=pid,
    )


def test_core_time_round_trip(model_env, fake_model):
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_time_now", {"timezone": "UTC"}, "call_now")]),
        Reply(content="It's late."),
    )
    result = accept(inbound("what time is it?", "p1"), publish=lambda job_id: True)
    assert process_job(result.job_id) == "done"
    offered = {t["function"]["name"] for t in fake_model.requests[0]["tools"]}
    assert {"core_time_now", "core_schedule_remind"} <= offered
    tool_result = fake_model.requests[1]["messages"][-1]
    assert tool_result["role"] == "tool" and tool_result["tool_call_id"] == "call_now"
    assert "error" not in json.loads(tool_result["content"])
    assert outbox_texts(result.conversation_id) == ["It's late."]


def test_core_schedule_remind_needs_approval_then_runs(model_env, fake_model):
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT09:00")
    arguments = {"when": when, "timezone": "UTC", "text": "call mom"}
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_schedule_remind", arguments, "call_rem")])
    )
    first = accept(inbound("remind me to call mom", "p1"), publish=lambda job_id: True)
    assert process_job(first.job_id) == "awaiting_approval"
    assert outbox_texts(first.conversation_id)[0].startswith("I'd like to use core_schedule_remind")
    answer = accept(inbound("sim", "p2"), publish=lambda job_id: True)
    assert (answer.status, answer.job_id) == ("answer", first.job_id)
    fake_model.script(Reply(content="Reminder set."))
    assert process_job(first.job_id) == "done"
    assert job(first.job_id).status == "done"
    tool_result = fake_model.requests[-1]["messages"][-1]
    assert tool_result["tool_call_id"] == "call_rem" and "error" not in tool_result["content"].lower()
    assert execute("SELECT count(*) FROM reminder")[0][0] == 1
