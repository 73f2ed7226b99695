"""The context window: never exceeded, newest messages kept, older ones summarized or dropped."""

from __future__ import annotations

import logging

from tests.support.factories import make_conversation, make_job
from zenthor.actors.dispatch import process_job
from zenthor.agent.context import estimate_tokens, fit_to_window, load_history, repair_tool_pairs
from zenthor.db import database
from zenthor.models import Message


def chat(n: int, size: int = 400) -> list[dict]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * size}
        for i in range(n)
    ]


def test_fits_the_window_and_keeps_the_newest():
    history = chat(100)
    turn = [{"role": "user", "content": "the newest question"}]
    messages, compaction = fit_to_window("system prompt", history, turn, window=2000)
    assert estimate_tokens(messages) <= 2000
    assert compaction.estimated_tokens == estimate_tokens(messages)
    assert messages[-1] == turn[0]
    assert messages[-2]["content"].startswith("message 99 ")
    assert compaction.mode == "summarized" and compaction.dropped_messages > 0
    assert messages[1]["role"] == "system" and "Summary of" in messages[1]["content"]
    assert compaction.dropped_messages + compaction.kept_messages == 101


def test_no_compaction_when_everything_fits():
    messages, compaction = fit_to_window("sys", chat(4, 10), [], window=4000)
    assert compaction.mode == "none" and len(messages) == 5


def test_tools_count_against_the_window():
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 200}} for i in range(5)]
    messages, _ = fit_to_window("sys", chat(50), [], window=2000, tools=tools)
    assert estimate_tokens(messages, tools) <= 2000


def test_a_huge_single_message_is_truncated_to_fit():
    messages, _ = fit_to_window("sys", [], [{"role": "user", "content": "y" * 100_000}], window=1000)
    assert estimate_tokens(messages) <= 1000
    assert "truncated" in messages[-1]["content"]


def test_tool_call_and_results_stay_together():
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}],
    }
    result = {"role": "tool", "tool_call_id": "c1", "content": "r" * 2000}
    history = [*chat(10), call, result, {"role": "assistant", "content": "done"}]
    for window in (600, 900, 1500, 3000):
        messages, _ = fit_to_window("sys", history, [], window=window)
        roles = [m["role"] for m in messages]
        assert roles[1] != "tool" and roles[2] != "tool"  # never an orphan result at the start
        if "tool" in roles:
            assert messages[roles.index("tool") - 1].get("tool_calls")


def test_repair_moves_results_next_to_their_call_and_fills_missing_ones():
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "a"}, {"id": "b"}]}
    repaired = repair_tool_pairs(
        [
            call,
            {"role": "assistant", "content": "note"},
            {"role": "tool", "tool_call_id": "a", "content": "A"},
            {"role": "tool", "tool_call_id": "zzz", "content": "orphan"},
        ]
    )
    assert [(m["role"], m.get("tool_call_id")) for m in repaired] == [
        ("assistant", None),
        ("tool", "a"),
        ("tool", "b"),
        ("assistant", None),
    ]


def test_history_leaves_out_later_jobs():
    conversation_id = make_conversation()
    first = make_job(conversation_id, "first")
    make_job(conversation_id, "second")
    job_message = Message.get(Message.job_id == first)
    assert [m["content"] for m in load_history(conversation_id, first, job_message.id)] == ["first"]


def test_turn_context_never_exceeds_the_window(model_env, fake_model, tools, caplog):
    caplog.set_level(logging.INFO)
    model_env(AI_CONTEXT_WINDOW="1500")
    conversation_id = make_conversation(channel="webhook")
    with database.atomic():
        for i in range(60):
            role = "user" if i % 2 == 0 else "assistant"
            Message.create(conversation=conversation_id, role=role, content=f"old {i} " + "z" * 300)
    job_id = make_job(conversation_id, "newest question")
    assert process_job(job_id) == "done"
    body = fake_model.requests[0]
    assert estimate_tokens(body["messages"], body.get("tools")) <= 1500
    assert body["messages"][-1] == {"role": "user", "content": "newest question"}
    assert body["messages"][-2]["content"].startswith("old 59 ")
    compacted = [r for r in caplog.records if getattr(r, "event", None) == "agent.context.compacted"]
    assert compacted and compacted[0].mode in ("summarized", "dropped") and compacted[0].dropped_messages > 0
