"""Approvals without blocking a worker: ask, end the job, resume on YES/NO or expiry."""

from __future__ import annotations

import pytest

from tests.agent.helpers import job, outbox_texts
from tests.support.fake_model import Reply, tool_call
from tests.support.workers import wait_for
from zenthor.actors.approvals import expire_approvals_step
from zenthor.actors.dispatch import process_job
from zenthor.actors.sweep import run_sweep
from zenthor.agent.approvals import parse_answer
from zenthor.db import execute
from zenthor.ingress import InboundMessage, accept
from zenthor.models import ToolApproval

REMIND = {"text": "call mom", "at": "17:00"}


def inbound(text: str, pid: str, chat_id: str = "chat-a") -> InboundMessage:
    return InboundMessage(
        channel="webhook",
        account_id="acct",
        chat_id=chat_id,
        sender_id="user-1",
        text=text,
        provider_message_id=pid,
    )


@pytest.fixture
def published():
    return []


def send(text: str, pid: str, published: list, chat_id: str = "chat-a"):
    return accept(inbound(text, pid, chat_id), publish=published.append)


def ask_for_approval(fake_model, published) -> tuple[int, int]:
    """A turn whose model wants the risky tool: returns (conversation_id, job_id) awaiting approval."""
    fake_model.script(Reply(content=None, tool_calls=[tool_call("core_schedule_remind", REMIND, "call_r")]))
    result = send("remind me to call mom at 5", "m1", published)
    assert process_job(result.job_id) == "awaiting_approval"
    return result.conversation_id, result.job_id


@pytest.mark.parametrize(
    "text,expected",
    [
        ("YES", "approved"),
        ("y", "approved"),
        ("Ok!", "approved"),
        ("sure, go ahead", "approved"),
        ("Sim", "approved"),
        ("s", "approved"),
        ("pode", "approved"),
        ("claro!", "approved"),
        ("no", "rejected"),
        ("N", "rejected"),
        ("nope.", "rejected"),
        ("reject", "rejected"),
        ("Não", "rejected"),
        ("nao", "rejected"),
        ("não, obrigado", "rejected"),
        ("what's the weather tomorrow?", None),
        ("no idea what that means, can you explain it", None),
        ("", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_risky_tool_asks_and_releases_the_worker(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    row = job(job_id)
    assert (row.status, row.locked_until, row.lease_token is not None) == ("awaiting_approval", None, True)
    assert tools.calls == []
    prompt = outbox_texts(conversation_id)
    assert len(prompt) == 1 and prompt[0].startswith("I'd like to use core_schedule_remind")
    assert "Reply YES to approve or NO to reject." in prompt[0]
    approval = ToolApproval.get(ToolApproval.job_id == job_id)
    assert (approval.status, approval.tool_input, approval.tool_call_id) == ("pending", REMIND, "call_r")
    assert execute("SELECT expires_at > now() + interval '9 minutes' FROM tool_approval")[0][0]


def test_yes_runs_the_tool_and_finishes_the_turn(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    answer = send("YES", "m2", published)
    assert (answer.status, answer.job_id, answer.reason) == ("answer", job_id, "approval_approved")
    assert (job(job_id).status, job(job_id).kind) == ("pending", "resume")
    fake_model.script(Reply(content="Done: I'll remind you at 17:00."))
    assert process_job(job_id) == "done"
    assert tools.calls == [("core_schedule_remind", REMIND)]
    sent = fake_model.requests[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_r"
    assert sent[-1] == {
        "role": "tool",
        "tool_call_id": "call_r",
        "content": '{"scheduled": true, "reminder_id": 7}',
    }
    assert outbox_texts(conversation_id)[-1] == "Done: I'll remind you at 17:00."
    assert ToolApproval.get(ToolApproval.job_id == job_id).status == "approved"


def test_no_refuses_and_the_model_is_told(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    assert send("não", "m2", published).reason == "approval_rejected"
    fake_model.script(Reply(content="OK, I won't set it."))
    assert process_job(job_id) == "done"
    assert tools.calls == []
    result = fake_model.requests[-1]["messages"][-1]
    assert result["role"] == "tool" and "rejected" in result["content"]
    assert outbox_texts(conversation_id)[-1] == "OK, I won't set it."


def test_no_answer_expires_through_the_sweep(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    assert expire_approvals_step() == {"expired_approvals": 0}  # not due yet
    execute("UPDATE tool_approval SET expires_at = now() - interval '1 second'")
    counts = run_sweep("manual")  # the step is registered with the sweep
    assert counts["expired_approvals"] == 1
    assert expire_approvals_step() == {"expired_approvals": 0}  # idempotent
    assert ToolApproval.get(ToolApproval.job_id == job_id).status == "expired"
    fake_model.script(Reply(content="You didn't answer, so I didn't set it."))
    assert process_job(job_id) == "done"
    assert tools.calls == []
    assert "did not answer" in fake_model.requests[-1]["messages"][-1]["content"]


def test_messages_while_pending_queue_behind_in_order(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    later = send("what's the weather?", "m2", published)
    assert later.status == "accepted" and later.job_id > job_id
    assert process_job(later.job_id) == "refused:conversation_busy"
    assert send("yes", "m3", published).job_id == job_id
    fake_model.script(Reply(content="Reminder set."))
    assert process_job(job_id) == "done"
    assert process_job(later.job_id) == "done"
    assert outbox_texts(conversation_id)[-2:] == ["Reminder set.", "ok: what's the weather?"]
    # The later turn sees the finished approval turn as one piece (without the question and the
    # YES), then its own message.
    roles = [(m["role"], m.get("tool_call_id")) for m in fake_model.requests[-1]["messages"][1:]]
    assert roles == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_r"),
        ("assistant", None),
        ("user", None),
    ]


def test_a_second_yes_is_a_new_message(model_env, fake_model, tools, published):
    _, job_id = ask_for_approval(fake_model, published)
    assert send("yes", "m2", published).status == "answer"
    # The approval is resolved; another "yes" is an ordinary message queued behind the resume.
    assert send("yes", "m3", published).status == "accepted"


def test_worker_is_never_held_while_waiting(model_env, fake_model, tools, worker):
    from zenthor.broker import lease_heartbeat

    fake_model.script(Reply(content=None, tool_calls=[tool_call("core_schedule_remind", REMIND, "call_r")]))
    first = accept(inbound("remind me", "w1"))
    wait_for(lambda: job(first.job_id).status == "awaiting_approval", 15, message="approval asked")
    # The worker thread lets go of the lease as soon as its message is processed.
    wait_for(lambda: lease_heartbeat.held() == [], 5, message="no lease held")
    assert execute("SELECT count(*) FROM agent_job WHERE status = 'processing'")[0][0] == 0
    # Other conversations are served meanwhile.
    other = accept(inbound("hello", "w2", chat_id="chat-b"))
    wait_for(lambda: job(other.job_id).status == "done", 15, message="other conversation answered")
    fake_model.script(Reply(content="Reminder set."))
    assert accept(inbound("sim", "w3")).status == "answer"
    wait_for(lambda: job(first.job_id).status == "done", 15, message="resumed turn finished")
    assert tools.calls == [("core_schedule_remind", REMIND)]
