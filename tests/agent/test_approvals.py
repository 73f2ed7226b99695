"""Approvals without blocking a worker: ask, end the job, resume on YES/NO or expiry, or close
the question when the reply is not an answer."""

from __future__ import annotations

import pytest

from tests.agent.conftest import FakeTools
from tests.agent.helpers import job, messages, outbox_texts
from tests.support.fake_model import Reply, tool_call
from tests.support.workers import wait_for
from zenthor.actors.approvals import expire_approvals_step
from zenthor.actors.dispatch import process_job
from zenthor.actors.sweep import run_sweep
from zenthor.agent import toolbox
from zenthor.agent.approval_question import QUESTION_SUFFIX
from zenthor.agent.approvals import parse_answer
from zenthor.db import execute
from zenthor.ingress import InboundMessage, accept
from zenthor.models import ToolApproval
from zenthor.plugins.tools import ToolDescription

REMIND = {"text": "call mom", "at": "17:00"}
# What FakeTools' remind is asked as: it has no describe(), so its name made readable, and the
# arguments as a list a person reads (the manifest's summary is tested with the real registry).
QUESTION = 'I\'d like to use "Core schedule remind" with text: "call mom"; at: "17:00".'


def inbound(text: str, pid: str, chat_id: str = "chat-a", sender_id: str = "user-1") -> InboundMessage:
    return InboundMessage(
        channel="webhook",
        account_id="acct",
        chat_id=chat_id,
        sender_id=sender_id,
        text=text,
        provider_message_id=pid,
    )


def tool_result(sent: list[dict], call_id: str) -> dict:
    """The tool result for ``call_id`` in a request's messages."""
    (result,) = [m for m in sent if m.get("role") == "tool" and m.get("tool_call_id") == call_id]
    return result


@pytest.fixture
def published():
    return []


def send(text: str, pid: str, published: list, chat_id: str = "chat-a", sender_id: str = "user-1"):
    return accept(inbound(text, pid, chat_id, sender_id), publish=published.append)


def script_remind(fake_model, arguments: dict = REMIND, call_id: str = "call_r") -> None:
    """The model's next reply calls the risky tool (``core_schedule_remind``)."""
    fake_model.script(Reply(content=None, tool_calls=[tool_call("core_schedule_remind", arguments, call_id)]))


def ask_for_approval(
    fake_model,
    published,
    *,
    arguments: dict = REMIND,
    call_id: str = "call_r",
    text: str = "remind me to call mom at 5",
    pid: str = "m1",
    chat_id: str = "chat-a",
) -> tuple[int, int]:
    """A turn whose model wants the risky tool: returns (conversation_id, job_id) awaiting approval."""
    script_remind(fake_model, arguments, call_id)
    result = send(text, pid, published, chat_id=chat_id)
    assert process_job(result.job_id) == "awaiting_approval"
    return result.conversation_id, result.job_id


def read_after_the_question(fake_model, call_id: str = "call_r") -> list[dict]:
    """The last request's messages after the system prompt, checked to be the asking job's own:
    the user's message, the call, its result, the question, the user's reply."""
    sent = fake_model.requests[-1]["messages"][1:]
    assert [(m["role"], m.get("tool_call_id")) for m in sent] == [
        ("user", None),
        ("assistant", None),
        ("tool", call_id),
        ("assistant", None),
        ("user", None),
    ]
    assert sent[1]["tool_calls"][0]["id"] == call_id
    assert sent[3]["content"].startswith(QUESTION)
    return sent


# Only an unambiguous yes or no answers a question; anything else is an ordinary message.
APPROVED_REPLIES = [
    "YES",
    "Ok!",
    "yes please",
    "yes, go ahead",
    "sure, go ahead",
    "ok 👍",
    "👍",
    "👍🏽",
    "✅✅",
    "Sim",
    "SIM",  # as the Portuguese question writes it
    "Sim, pode!",
    "pode",
    "claro!",
    "claro 👍",
    "tá bom",
    "Com certeza.",
    "of course, thanks",
]
REJECTED_REPLIES = [
    "no",
    "nope.",
    "reject",
    "no thanks",
    "No, thank you!",
    "Não",
    "NÃO",  # as the Portuguese question writes it
    "nao",
    "não, obrigado",
    "nao pode",
    "👎",
    "❌",
    "cancel",
    "stop",
    "don't",
]
NOT_ANSWERS = [
    # the twelve replies of issue 11 item 1: conditional, vague, or led by a yes/no word
    "yes but at 6pm",
    "sim, mas às 18h",
    "ok change the time",
    "go away",
    "não sei",
    "yes but at 6pm please",
    "k",
    "s",
    "go home",
    "nem sei",
    "stop the music",
    "ok 6",
    # single letters, mixed or unknown answers, thanks alone, anything long
    "y",
    "n",
    "N",
    "ok 👎",
    "yes no",
    "👍👎",
    "👍😂",
    "maybe",
    "talvez",
    "please",
    "thanks, yes",
    "yes yes yes yes yes yes yes yes yes",
    "what's the weather tomorrow?",
    # a question back or hesitation is not consent
    "sim?",
    "pode?",
    "certo?",
    "isso?",
    "ok?",
    "yes?",
    "go ahead?",
    "👍?",
    "¿sí",
    "ok...",
    "ok…",
    "no idea what that means, can you explain it",
    "",
    "   ",
    None,
]


@pytest.mark.parametrize(
    "text,expected",
    [(t, "approved") for t in APPROVED_REPLIES]
    + [(t, "rejected") for t in REJECTED_REPLIES]
    + [(t, None) for t in NOT_ANSWERS],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_risky_tool_asks_and_releases_the_worker(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    row = job(job_id)
    assert (row.status, row.locked_until, row.lease_token is not None) == ("awaiting_approval", None, True)
    assert tools.calls == []
    prompt = outbox_texts(conversation_id)
    assert prompt == [f"{QUESTION} (valid for 10 minutes) {QUESTION_SUFFIX['en']}"]
    approval = ToolApproval.get(ToolApproval.job_id == job_id)
    assert (approval.status, approval.tool_input, approval.tool_call_id) == ("pending", REMIND, "call_r")
    assert execute("SELECT expires_at > now() + interval '9 minutes' FROM tool_approval")[0][0]


class DescribedTools(FakeTools):
    """FakeTools whose risky tool has a manifest title but no summary."""

    def describe(self, name: str) -> ToolDescription | None:
        if name != "core_schedule_remind":
            return None
        return ToolDescription(
            title="Schedule a reminder", summary={}, plugin_name="Reminders", tool_name="remind"
        )


def test_a_tool_without_a_summary_is_asked_by_title_and_readable_arguments(
    model_env, fake_model, monkeypatch, published
):
    """Issue 11 item 5: no internal name, no JSON; the user's language; an answer in it approves."""
    registry = DescribedTools()
    monkeypatch.setattr(toolbox, "get_registry", lambda: registry)
    arguments = {
        "text": "call   mom\n",
        "at": "2026-03-14T17:00",
        "tags": ["family", "phone"],
        "loud": True,
        "repeat": {"every": "week", "until": None},
        "note": "x" * 200,
    }
    detail = 'tags: "family", "phone"; loud: {}; repeat: (every: "week"); note: "' + "x" * 119 + '…"'

    english, _ = ask_for_approval(fake_model, published, arguments=arguments)
    (question,) = outbox_texts(english)
    assert question == (
        'I\'d like to use "Schedule a reminder" with text: "call mom"; at: Sat 14 Mar 2026, 17:00; '
        + detail.format("yes")
        + ". (valid for 10 minutes) Reply YES to go ahead or NO to cancel."
    )

    model_env(APPROVAL_TTL_S="3600")
    portuguese, job_id = ask_for_approval(
        fake_model,
        published,
        arguments=arguments,
        text="me lembra de ligar pra mãe amanhã",
        pid="p1",
        chat_id="chat-pt",
    )
    (question,) = outbox_texts(portuguese)
    assert question == (
        'Quero usar "Schedule a reminder" com text: "call mom"; at: sáb 14/03/2026 às 17:00; '
        + detail.format("sim")
        + ". (vale por 1 hora) Responda SIM para confirmar ou NÃO para cancelar."
    )
    for asked in (outbox_texts(english)[0], question):
        assert "core_schedule" not in asked and "{" not in asked and '":' not in asked
    # The answer the question asks for is an answer.
    answer = send("SIM", "p2", published, chat_id="chat-pt")
    assert (answer.status, answer.job_id, answer.reason) == ("answer", job_id, "approval_approved")


def test_a_message_that_tells_no_language_is_asked_in_the_default_one(
    model_env, fake_model, tools, published
):
    model_env(APPROVAL_DEFAULT_LANGUAGE="pt")
    conversation_id, _ = ask_for_approval(fake_model, published, text="17h")
    (question,) = outbox_texts(conversation_id)
    assert question.startswith('Quero usar "Core schedule remind" com text: "call mom"')
    assert question.endswith(QUESTION_SUFFIX["pt"])
    # A message that tells wins over the default.
    english, _ = ask_for_approval(fake_model, published, pid="m2", chat_id="chat-en")
    assert outbox_texts(english)[0].endswith(QUESTION_SUFFIX["en"])


def test_a_collected_burst_is_read_whole_and_asked_in_its_language(model_env, fake_model, tools, published):
    """Collect (issue 14): "oi" tells little; the burst it starts tells Portuguese. The model reads
    the whole burst, the question covers it, and every job of the burst is answered by it."""
    model_env(QUEUE_MODE="collect", APPROVAL_DEFAULT_LANGUAGE="en")
    burst = [
        send(text, f"b{n}", published) for n, text in enumerate(("oi", "me lembra de ligar pra mãe amanhã"))
    ]
    script_remind(fake_model)
    assert process_job(burst[0].job_id) == "awaiting_approval"
    sent = fake_model.requests[-1]["messages"][1:]
    assert [m["content"] for m in sent] == ["oi", "me lembra de ligar pra mãe amanhã"]
    (question,) = outbox_texts(burst[0].conversation_id)
    assert question.endswith(QUESTION_SUFFIX["pt"])
    assert (job(burst[1].job_id).status, job(burst[1].job_id).merged_into) == ("done", burst[0].job_id)
    answer = send("SIM", "b2", published)
    assert (answer.status, answer.job_id) == ("answer", burst[0].job_id)
    # The resumed turn answers the burst: its reply is in reply to the burst's newest message.
    fake_model.script(Reply(content="Pronto: te lembro amanhã."))
    assert process_job(burst[0].job_id) == "done"
    ((in_reply_to,),) = execute(
        "SELECT in_reply_to FROM outbound_message WHERE job_id = %s ORDER BY id DESC LIMIT 1",
        (burst[0].job_id,),
    )
    assert in_reply_to == burst[1].message_id


def test_yes_runs_the_tool_and_finishes_the_turn(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    answer = send("YES", "m2", published)
    assert (answer.status, answer.job_id, answer.reason) == ("answer", job_id, "approval_approved")
    assert (job(job_id).status, job(job_id).kind) == ("pending", "resume")
    fake_model.script(Reply(content="Done: I'll remind you at 17:00."))
    assert process_job(job_id) == "done"
    assert tools.calls == [("core_schedule_remind", REMIND)]
    # The answer belongs to the job it answered, after the question: the model reads the call, its
    # result, the question and the user's YES.
    sent = read_after_the_question(fake_model)
    assert sent[2]["content"] == '{"scheduled": true, "reminder_id": 7}'
    assert sent[4]["content"] == "YES"
    assert outbox_texts(conversation_id)[-1] == "Done: I'll remind you at 17:00."
    approval = ToolApproval.get(ToolApproval.job_id == job_id)
    assert (approval.status, approval.answer_message_id) == ("approved", answer.message_id)
    kinds = [(m.role, m.kind, m.job_id) for m in messages(conversation_id)]
    assert ("assistant", "approval_question", job_id) in kinds
    assert ("user", "approval_answer", job_id) in kinds

    # A later turn still sees the question and the answer, in the order they were written.
    later = send("thanks!", "m3", published)
    assert later.status == "accepted"
    assert process_job(later.job_id) == "done"
    seen = [m["content"] for m in fake_model.requests[-1]["messages"][1:]]
    assert seen[2:] == [
        '{"scheduled": true, "reminder_id": 7}',
        sent[3]["content"],
        "YES",
        "Done: I'll remind you at 17:00.",
        "thanks!",
    ]


def test_no_refuses_and_the_model_is_told(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    assert send("não", "m2", published).reason == "approval_rejected"
    fake_model.script(Reply(content="OK, I won't set it."))
    assert process_job(job_id) == "done"
    assert tools.calls == []
    sent = fake_model.requests[-1]["messages"]
    result = tool_result(sent, "call_r")
    assert "rejected" in result["content"]
    assert sent[-1] == {"role": "user", "content": "não"}
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
    assert "did not answer" in tool_result(fake_model.requests[-1]["messages"], "call_r")["content"]


def test_an_answer_that_is_not_yes_or_no_supersedes_the_question_and_starts_a_turn(
    model_env, fake_model, tools, published
):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    reply = send("yes but at 6pm", "m2", published)
    # Not an answer: the question is closed unanswered and the message is a turn of its own.
    assert (reply.status, reply.reason) == ("accepted", "approval_superseded")
    assert reply.job_id > job_id and published[-1] == reply.job_id
    approval = ToolApproval.get(ToolApproval.job_id == job_id)
    assert (approval.status, approval.answer_message_id) == ("superseded", reply.message_id)
    assert approval.resolved_at is not None
    closed = job(job_id)
    assert (closed.status, closed.error_reason, closed.finished_at is not None) == (
        "done",
        "approval_superseded",
        True,
    )
    fake_model.script(Reply(content="Shall I set it for 18:00 instead?"))
    assert process_job(reply.job_id) == "done"
    assert tools.calls == []  # the 17:00 reminder was never set
    sent = read_after_the_question(fake_model)
    assert "not run" in sent[2]["content"].lower() and "did not approve" in sent[2]["content"]
    assert sent[4] == {"role": "user", "content": "yes but at 6pm"}
    assert outbox_texts(conversation_id)[-1] == "Shall I set it for 18:00 instead?"
    # The closed question is not expired later, and nothing resumes the closed job.
    execute("UPDATE tool_approval SET expires_at = now() - interval '1 second'")
    assert expire_approvals_step() == {"expired_approvals": 0}
    assert (job(job_id).status, ToolApproval.get_by_id(approval.id).status) == ("done", "superseded")


def test_a_superseded_step_tells_the_model_which_calls_did_not_run(model_env, fake_model, tools, published):
    """The model asked for two calls; the loop stopped at the one that needs approval. When the user
    writes something else, neither runs, and each result says why."""
    fake_model.script(
        Reply(
            content=None,
            tool_calls=[
                tool_call("core_schedule_remind", REMIND, "call_r"),
                tool_call("core_time_now", {}, "call_t"),
            ],
        )
    )
    asked = send("remind me to call mom at 5, and what time is it?", "m1", published)
    assert process_job(asked.job_id) == "awaiting_approval"
    reply = send("hmm, what day is it?", "m2", published)
    assert reply.reason == "approval_superseded"
    assert process_job(reply.job_id) == "done"
    assert tools.calls == []
    sent = fake_model.requests[-1]["messages"]
    assert tool_result(sent, "call_r")["content"].startswith("Not run: the user did not approve")
    assert tool_result(sent, "call_t")["content"].startswith("Not run: an earlier call of this step")
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "tool", "tool", "assistant", "user"]


def test_a_new_message_while_asked_is_answered_at_once(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    later = send("what's the weather?", "m2", published)
    # Nothing holds the line any more: the new message is answered now, not after APPROVAL_TTL_S.
    assert process_job(later.job_id) == "done"
    assert (later.status, later.reason) == ("accepted", "approval_superseded")
    assert later.job_id > job_id
    assert outbox_texts(conversation_id)[-1] == "ok: what's the weather?"
    assert tools.calls == []
    # The question is closed: a "yes" now is an ordinary message, answered in its turn.
    after = send("yes", "m3", published)
    assert (after.status, after.reason) == ("accepted", None)
    assert process_job(after.job_id) == "done"
    assert tools.calls == []
    assert outbox_texts(conversation_id)[-1] == "ok: yes"


def test_a_yes_after_the_assistant_answered_the_askers_next_message_is_not_an_approval(
    model_env, fake_model, tools, published
):
    """The asker's second message ran while the question waited and got its own reply; their
    "yes" then answers that reply, not the older question: nothing is approved behind their back."""
    script_remind(fake_model)
    first = send("remind me to call mom at 5", "m1", published)
    second = send("what's the weather tomorrow?", "m2", published)  # accepted before the question
    assert process_job(first.job_id) == "awaiting_approval"
    assert process_job(second.job_id) == "done"  # answered while the question waits
    reply = send("yes", "m3", published)
    assert (reply.status, reply.reason) == ("accepted", "approval_superseded")
    assert process_job(reply.job_id) == "done"
    assert tools.calls == []
    assert execute("SELECT status FROM tool_approval")[0][0] == "superseded"


def test_in_a_group_only_the_asker_can_answer(model_env, fake_model, tools, published):
    """Issue 11 item 2: another member's "ok" is an ordinary message, answered at once while the
    question stays open for the asker, whose "yes" then approves."""
    conversation_id, job_id = ask_for_approval(fake_model, published)
    approval = ToolApproval.get(ToolApproval.job_id == job_id)

    other = send("ok", "m2", published, sender_id="user-2")
    assert (other.status, other.reason) == ("accepted", None)  # not an answer, and nothing superseded
    # It does not wait behind the question: its turn runs now, while the asker's job still waits.
    assert process_job(other.job_id) == "done"
    assert outbox_texts(conversation_id)[-1] == "ok: ok"
    assert tools.calls == []
    assert job(job_id).status == "awaiting_approval"
    assert ToolApproval.get_by_id(approval.id).status == "pending"
    # The other member's turn read the open call as waiting, not as a broken one.
    waiting = tool_result(fake_model.requests[-1]["messages"], "call_r")["content"]
    assert waiting.startswith("Waiting for the user's approval")

    answer = send("yes", "m3", published)
    assert (answer.status, answer.job_id, answer.reason) == ("answer", job_id, "approval_approved")
    fake_model.script(Reply(content="Done: I'll remind you at 17:00."))
    assert process_job(job_id) == "done"
    assert tools.calls == [("core_schedule_remind", REMIND)]
    sent = fake_model.requests[-1]["messages"]
    assert any(m["content"].startswith(QUESTION) for m in sent if m["role"] == "assistant")
    assert sent[-1] == {"role": "user", "content": "yes"}
    assert "ok" not in [m["content"] for m in sent if m["role"] == "user"]  # a later job: not in J's history
    approved = ToolApproval.get_by_id(approval.id)
    assert (approved.status, approved.asked_sender_id) == ("approved", "user-1")


def test_a_non_asker_never_supersedes_and_the_asker_still_can(model_env, fake_model, tools, published):
    conversation_id, job_id = ask_for_approval(fake_model, published)
    other = send("yes but at 6pm", "m2", published, sender_id="user-2")
    assert (other.status, other.reason) == ("accepted", None)
    assert job(job_id).status == "awaiting_approval"
    mine = send("actually, make it 6pm", "m3", published)
    assert (mine.status, mine.reason) == ("accepted", "approval_superseded")
    assert job(job_id).status == "done"


def test_an_askers_newer_question_supersedes_their_older_one(model_env, fake_model, tools, published):
    """Two messages of one member before either ran: the first asks; the second, no longer held
    behind it, asks too. Each member has one open question, the one they read last."""
    first = send("remind me to call mom at 5", "m1", published)
    second = send("and remind me to call dad at 6", "m2", published)
    script_remind(fake_model)
    assert process_job(first.job_id) == "awaiting_approval"
    dad = {"text": "call dad", "at": "18:00"}
    script_remind(fake_model, dad, "call_d")
    assert process_job(second.job_id) == "awaiting_approval"
    assert job(first.job_id).status == "done"
    statuses = execute("SELECT job_id, status FROM tool_approval ORDER BY id")
    assert statuses == [(first.job_id, "superseded"), (second.job_id, "pending")]
    assert send("yes", "m3", published).job_id == second.job_id
    fake_model.script(Reply(content="Set for 18:00."))
    assert process_job(second.job_id) == "done"
    assert tools.calls == [("core_schedule_remind", dad)]


def test_a_yes_after_expiry_is_expired_at_once_and_the_user_is_told(model_env, fake_model, tools, published):
    """Issue 11 item 3: no sweep ran, but the answer comes after expires_at: the approval is
    expired, the tool does not run, and the resumed turn tells the user."""
    conversation_id, job_id = ask_for_approval(fake_model, published)
    execute("UPDATE tool_approval SET expires_at = now() - interval '1 second'")
    late = send("yes", "m2", published)
    assert (late.status, late.job_id, late.reason) == ("answer", job_id, "approval_expired")
    assert published[-1] == job_id
    approval = ToolApproval.get(ToolApproval.job_id == job_id)
    assert (approval.status, approval.answer_message_id) == ("expired", late.message_id)
    fake_model.script(Reply(content="That request had expired, so I didn't set it. Shall I ask again?"))
    assert process_job(job_id) == "done"
    assert tools.calls == []
    sent = fake_model.requests[-1]["messages"]
    assert "after the approval request had expired" in tool_result(sent, "call_r")["content"]
    assert sent[-1] == {"role": "user", "content": "yes"}
    assert (
        outbox_texts(conversation_id)[-1]
        == "That request had expired, so I didn't set it. Shall I ask again?"
    )
    assert expire_approvals_step() == {"expired_approvals": 0}  # nothing left for the sweep


def test_a_second_yes_is_a_new_message(model_env, fake_model, tools, published):
    _, job_id = ask_for_approval(fake_model, published)
    assert send("yes", "m2", published).status == "answer"
    # The approval is resolved; another "yes" is an ordinary message queued behind the resume.
    assert send("yes", "m3", published).status == "accepted"


def test_worker_is_never_held_while_waiting(model_env, fake_model, tools, worker):
    from zenthor.broker import lease_heartbeat

    script_remind(fake_model)
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
