"""The turn with the real plugin tool registry (built-in core-time and core-schedule plugins)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from tests.agent.helpers import job, outbox_texts
from tests.support.fake_model import Reply, tool_call
from tests.support.workers import DbThread
from zenthor.actors.dispatch import process_job
from zenthor.agent.approval_question import QUESTION_SUFFIX, render_datetime
from zenthor.db import execute
from zenthor.ingress import InboundMessage, accept
from zenthor.queue import requeue_stale


def inbound(text: str, pid: str, chat_id: str = "chat-p") -> InboundMessage:
    return InboundMessage(
        channel="webhook",
        account_id="acct",
        chat_id=chat_id,
        sender_id="user-p",
        text=text,
        provider_message_id=pid,
    )


def tool_result(body: dict, call_id: str) -> dict:
    """The result of ``call_id`` in a request (the user's answer follows it, after the question)."""
    (result,) = [m for m in body["messages"] if m.get("role") == "tool" and m.get("tool_call_id") == call_id]
    return result


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
    assert outbox_texts(first.conversation_id)[0].startswith('Set a reminder "call mom" for')
    answer = accept(inbound("sim", "p2"), publish=lambda job_id: True)
    assert (answer.status, answer.job_id) == ("answer", first.job_id)
    fake_model.script(Reply(content="Reminder set."))
    assert process_job(first.job_id) == "done"
    assert job(first.job_id).status == "done"
    result = tool_result(fake_model.requests[-1], "call_rem")
    assert "error" not in result["content"].lower()
    assert fake_model.requests[-1]["messages"][-1] == {"role": "user", "content": "sim"}
    assert execute("SELECT count(*) FROM reminder")[0][0] == 1


def test_the_question_is_in_the_users_words_and_language(model_env, fake_model):
    """Issue 11 item 5: the manifest's summary, rendered with the call's arguments in the language
    of the user's message; no tool name, no JSON. The next turns read the question and the answer."""
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT17:00")
    arguments = {"when": when, "timezone": "UTC", "text": "call mom"}
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_schedule_remind", arguments, "call_en")])
    )
    english = accept(inbound("remind me to call mom", "e1", chat_id="chat-en"), publish=lambda job_id: True)
    assert process_job(english.job_id) == "awaiting_approval"
    (question,) = outbox_texts(english.conversation_id)
    assert question.startswith('Set a reminder "call mom" for')
    assert question == (
        f'Set a reminder "call mom" for {render_datetime(when, "en")}? (valid for 10 minutes) '
        f"{QUESTION_SUFFIX['en']}"
    )
    assert "core_schedule" not in question and "{" not in question and '":' not in question

    pt_arguments = {"when": when, "timezone": "America/Sao_Paulo", "text": "ligar pra mãe"}
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_schedule_remind", pt_arguments, "call_pt")])
    )
    portuguese = accept(
        inbound("me lembra de ligar pra mãe depois de amanhã às 17h", "b1", chat_id="chat-pt"),
        publish=lambda job_id: True,
    )
    assert process_job(portuguese.job_id) == "awaiting_approval"
    (pergunta,) = outbox_texts(portuguese.conversation_id)
    assert pergunta.startswith(f'Criar o lembrete "ligar pra mãe" para {render_datetime(when, "pt")}?')
    assert pergunta.endswith(QUESTION_SUFFIX["pt"])
    assert "(vale por 10 minutos)" in pergunta
    assert "core_schedule" not in pergunta and "{" not in pergunta and '":' not in pergunta

    # The answer resumes the job, whose turn reads the question and the answer, in this order.
    assert accept(inbound("sim", "b2", chat_id="chat-pt"), publish=lambda job_id: True).status == "answer"
    fake_model.script(Reply(content="Lembrete criado."))
    assert process_job(portuguese.job_id) == "done"
    assert execute("SELECT count(*) FROM reminder")[0][0] == 1
    spoken = [(m["role"], m.get("content")) for m in fake_model.requests[-1]["messages"]]
    assert spoken[-2:] == [("assistant", pergunta), ("user", "sim")]
    # And so does the next turn of the conversation.
    later = accept(inbound("obrigado!", "b3", chat_id="chat-pt"), publish=lambda job_id: True)
    fake_model.script(Reply(content="De nada."))
    assert process_job(later.job_id) == "done"
    spoken = [(m["role"], m.get("content")) for m in fake_model.requests[-1]["messages"]]
    asked = spoken.index(("assistant", pergunta))
    assert spoken[asked + 1 :] == [
        ("user", "sim"),
        ("assistant", "Lembrete criado."),
        ("user", "obrigado!"),
    ]


def _approve_remind(fake_model, arguments: dict) -> tuple[int, int]:
    """A turn asks for core_schedule_remind, the user says YES: (conversation id, job id) to resume."""
    fake_model.script(
        Reply(content=None, tool_calls=[tool_call("core_schedule_remind", arguments, "call_rem")])
    )
    first = accept(inbound("remind me to call mom", "p1"), publish=lambda job_id: True)
    assert process_job(first.job_id) == "awaiting_approval"
    answer = accept(inbound("yes", "p2"), publish=lambda job_id: True)
    assert (answer.status, answer.job_id) == ("answer", first.job_id)
    return first.conversation_id, first.job_id


def _reminders() -> list[tuple]:
    return execute("SELECT id, idempotency_key FROM reminder ORDER BY id")


def test_approved_remind_retried_after_the_tool_ran_makes_one_reminder(model_env, fake_model):
    """The tool commits its row, then the model fails and the job is retried: one reminder."""
    model_env(AI_RETRY_ATTEMPTS="1", AGENT_JOB_RETRY_BASE_MS="0", AGENT_JOB_MAX_ATTEMPTS="3")
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT09:00")
    conversation_id, job_id = _approve_remind(
        fake_model, {"when": when, "timezone": "UTC", "text": "call mom"}
    )
    approval_id = execute("SELECT id FROM tool_approval WHERE job_id = %s", (job_id,))[0][0]

    # Attempt 1 of the resume: the tool runs (its row commits at once), then the model call fails.
    fake_model.script(Reply(status=500))
    assert process_job(job_id) == "retry_scheduled"
    assert _reminders() == [(_reminders()[0][0], f"tool_approval:{approval_id}")]
    first_result = json.loads(tool_result(fake_model.requests[-1], "call_rem")["content"])

    # Attempt 2: the same approved call runs again with the same key and gets the same reminder.
    fake_model.script(Reply(status=500))
    assert process_job(job_id) == "retry_scheduled"
    # Attempt 3 succeeds.
    fake_model.script(Reply(content="Reminder set."))
    assert process_job(job_id) == "done"

    reminders = _reminders()
    assert len(reminders) == 1
    last_result = json.loads(tool_result(fake_model.requests[-1], "call_rem")["content"])
    assert last_result == first_result and last_result["reminder_id"] == reminders[0][0]
    texts = outbox_texts(conversation_id)
    assert texts[0].startswith('Set a reminder "call mom" for')
    assert texts[1:] == ["Reminder set."]  # one confirmation
    assert len(fake_model.requests) == 4  # the first turn, then three attempts of the resume


def test_approved_remind_rerun_after_a_lost_lease_makes_one_reminder(model_env, fake_model):
    """The tool ran, then the lease was lost during the model call; the next owner runs it again."""
    when = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT09:00")
    conversation_id, job_id = _approve_remind(
        fake_model, {"when": when, "timezone": "UTC", "text": "call mom"}
    )
    fake_model.script(Reply(content="too late", delay_s=1.5))

    def expire_lease() -> None:
        while len(fake_model.requests) < 2:  # the resume's model call is in flight
            time.sleep(0.02)
        execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (job_id,))
        requeue_stale()

    thief = DbThread(target=expire_lease)
    thief.start()
    assert process_job(job_id) == "lease_lost"
    thief.join()
    assert len(_reminders()) == 1

    fake_model.script(Reply(content="Reminder set."))
    assert process_job(job_id) == "done"
    assert len(_reminders()) == 1
    assert outbox_texts(conversation_id)[1:] == ["Reminder set."]
