"""An operator's retry of a failed resume job (issue 11, item 11), with the real plugin registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.agent.helpers import job, outbox_texts
from tests.support.fake_model import Reply, tool_call
from zenthor.actors.dispatch import process_job
from zenthor.agent.replies import FAILURE_REPLY
from zenthor.db import execute
from zenthor.ingress import InboundMessage, accept
from zenthor.queue.jobs import RetriedJob, retry_failed


def inbound(text: str, pid: str) -> InboundMessage:
    return InboundMessage(
        channel="webhook",
        account_id="acct",
        chat_id="chat-r",
        sender_id="user-r",
        text=text,
        provider_message_id=pid,
    )


def result_of(body: dict, call_id: str) -> dict:
    (result,) = [m for m in body["messages"] if m.get("role") == "tool" and m.get("tool_call_id") == call_id]
    return json.loads(result["content"])


def test_a_retried_failed_resume_runs_the_approved_call_once_behind_the_newer_turn(model_env, fake_model):
    """The approved reminder ran, then the model refused our key and the resume failed for good.
    The user asked something else meanwhile. The operator's retry is a new job behind that turn;
    it takes the approval along, so the call runs with the same key: one reminder."""
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT09:00")
    fake_model.script(
        Reply(
            content=None,
            tool_calls=[
                tool_call(
                    "core_schedule_remind", {"when": when, "timezone": "UTC", "text": "call mom"}, "call_rem"
                )
            ],
        )
    )
    first = accept(inbound("remind me to call mom", "r1"), publish=lambda job_id: True)
    assert process_job(first.job_id) == "awaiting_approval"
    assert accept(inbound("yes", "r2"), publish=lambda job_id: True).job_id == first.job_id
    (approval_id,) = execute("SELECT id FROM tool_approval WHERE job_id = %s", (first.job_id,))[0]

    fake_model.script(Reply(status=401))  # the tool runs and commits its row, then the model refuses
    assert process_job(first.job_id) == "failed"
    key = f"tool_approval:{approval_id}"
    assert execute("SELECT idempotency_key FROM reminder") == [(key,)]
    reminder_id = result_of(fake_model.requests[-1], "call_rem")["reminder_id"]

    newer = accept(inbound("what's the weather?", "r3"), publish=lambda job_id: True)
    retried = retry_failed(first.job_id)
    assert isinstance(retried, RetriedJob) and retried.job_id > newer.job_id and retried.open_ahead == 1
    assert job(retried.job_id).kind == "resume" and job(first.job_id).status == "failed"
    assert execute("SELECT job_id FROM tool_approval WHERE id = %s", (approval_id,)) == [(retried.job_id,)]

    assert process_job(retried.job_id) == "refused:conversation_busy"  # the newer turn goes first
    fake_model.script(Reply(content="Sunny."))
    assert process_job(newer.job_id) == "done"
    fake_model.script(Reply(content="Reminder set."))
    assert process_job(retried.job_id) == "done"

    assert execute("SELECT id, idempotency_key FROM reminder") == [(reminder_id, key)]  # once
    last = fake_model.requests[-1]
    assert result_of(last, "call_rem")["reminder_id"] == reminder_id
    said = [m.get("content") for m in last["messages"] if m.get("role") == "user"]
    assert said.index("what's the weather?") < said.index("remind me to call mom")  # read what came since
    texts = outbox_texts(first.conversation_id)
    assert texts[1:] == [FAILURE_REPLY, "Sunny.", "Reminder set."]
