"""The history reads only its tail, through the conversation index (issue 11, item 9)."""

from __future__ import annotations

import json

from tests.support.factories import make_conversation, make_job
from zenthor.agent import context
from zenthor.agent.context import fit_to_window, load_history
from zenthor.db import execute

BIG_CHAT = 30_000
OTHER_JOBS = 200_000
OTHER_CHATS = 100


def _build_big_chat() -> tuple[int, int, int]:
    """The layout that exposes the trap: the 30k chat first, then 200k jobs and messages of 100
    other chats, then the turn's own message (the newest row of the table). Returns
    (conversation, job, message)."""
    big = make_conversation("big")
    # User rows have no job_id (their job is found by agent_job.message_id); replies have one.
    execute(
        "INSERT INTO message (conversation_id, role, content) "
        "SELECT %s, CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END, 'message ' || g || ' ' || repeat('x', 40) "
        "FROM generate_series(1, %s) AS g",
        (big, BIG_CHAT),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, message_id, status, finished_at) "
        "SELECT %s, id, 'done', now() FROM message WHERE conversation_id = %s AND role = 'user' ORDER BY id",
        (big, big),
    )
    execute(
        "UPDATE message AS m SET job_id = j.id FROM agent_job AS j "
        "WHERE j.message_id = m.id - 1 AND m.conversation_id = %s AND m.role = 'assistant'",
        (big,),
    )
    first = execute(
        "INSERT INTO conversation (channel, account_id, chat_id) "
        "SELECT 'test', 'acct', 'other-' || g FROM generate_series(1, %s) AS g RETURNING id",
        (OTHER_CHATS,),
    )[0][0]
    execute(
        "INSERT INTO message (conversation_id, role, content) "
        "SELECT %s + g %% %s, 'user', 'other ' || g FROM generate_series(1, %s) AS g",
        (first, OTHER_CHATS, OTHER_JOBS),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, message_id, status, finished_at) "
        "SELECT conversation_id, id, 'done', now() FROM message WHERE conversation_id <> %s ORDER BY id",
        (big,),
    )
    job_id = make_job(big, "the newest question")
    message_id = execute("SELECT message_id FROM agent_job WHERE id = %s", (job_id,))[0][0]
    execute("ANALYZE message")
    execute("ANALYZE agent_job")
    execute("ANALYZE tool_approval")
    return big, job_id, message_id


def test_a_turns_history_in_a_30k_message_chat_reads_the_tail_by_the_conversation_index(monkeypatch):
    conversation, job_id, message_id = _build_big_chat()
    params = {"conversation": conversation, "before": 2**63 - 1, "limit": context.HISTORY_PAGE_ROWS}
    plan = "\n".join(row[0] for row in execute("EXPLAIN (ANALYZE, BUFFERS) " + context._HISTORY_PAGE, params))
    assert "Index Scan Backward using message_conversation_id_idx on message" in plan, plan
    assert "message_pkey" not in plan and "Seq Scan" not in plan, plan
    assert "agent_job_message_id on agent_job" in plan, plan  # the job of a user row: no scan
    print(plan)  # shown with -s: the evidence for the plan test
    # How long it takes is measured in bench.history, not here (times on a shared box are noise);
    # what makes it fast is asserted: the plan above, and a read bounded by pages, not the chat.
    statements = []
    real_execute = context.execute

    def counting_execute(sql, params=None):
        statements.append(sql)
        return real_execute(sql, params)

    monkeypatch.setattr(context, "execute", counting_execute)
    history = load_history(conversation, job_id, message_id, window=32_000)
    monkeypatch.undo()
    # ~1,900 rows fill the window: 10 pages of 200, and one probe for the row before the cut.
    assert len(statements) <= 11, len(statements)
    # The window, not a row cap, ends the read: ~17-token rows fill 32k in under 2,000 rows.
    assert 1000 < len(history) < 2500 and history.truncated
    assert history[-1] == {"role": "user", "content": "the newest question"}
    assert history[-2]["content"].startswith(f"message {BIG_CHAT} ")


def test_a_chat_of_short_messages_that_fits_the_window_is_read_whole():
    """3,000 short messages (~15k tokens) fit a 32k window: all of them are read, none summarized."""
    conversation = make_conversation("short")
    for i in range(1_500):
        job = make_job(conversation, f"q{i}")
        execute(
            "INSERT INTO message (conversation_id, role, content, job_id) VALUES (%s, 'assistant', %s, %s)",
            (conversation, f"a{i}", job),
        )
    job_id = make_job(conversation, "last")
    message_id = execute("SELECT message_id FROM agent_job WHERE id = %s", (job_id,))[0][0]
    tail = load_history(conversation, job_id, message_id, window=32_000)
    whole = load_history(conversation, job_id, message_id, max_messages=10_000)
    assert not tail.truncated and len(tail) == len(whole) == 3_001
    assert fit_to_window("sys", tail, [], window=32_000) == fit_to_window("sys", whole, [], window=32_000)


def test_the_tail_gives_the_same_context_as_the_whole_history():
    """A 2,000-message chat at a 2,000-token window: the tail's context equals the whole one's."""
    conversation = make_conversation("tail")
    for i in range(1, 1001):
        job = make_job(conversation, f"question {i} " + "q" * (i % 7 * 30))
        if i % 5 == 0:  # every fifth turn calls a tool, so some cuts go through a call's unit
            calls = [{"id": f"c{i}", "type": "function", "function": {"name": "t", "arguments": "{}"}}]
            execute(
                "INSERT INTO message (conversation_id, role, content, tool_calls, job_id) "
                "VALUES (%s, 'assistant', '', %s, %s)",
                (conversation, json.dumps(calls), job),
            )
            execute(
                "INSERT INTO message (conversation_id, role, content, tool_call_id, job_id) "
                "VALUES (%s, 'tool', %s, %s, %s)",
                (conversation, "result " * 30, f"c{i}", job),
            )
        else:
            execute(
                "INSERT INTO message (conversation_id, role, content, job_id) VALUES (%s, 'assistant', %s, %s)",
                (conversation, f"answer {i} " + "a" * (i % 5 * 40), job),
            )
    job_id = make_job(conversation, "the newest question")
    message_id = execute("SELECT message_id FROM agent_job WHERE id = %s", (job_id,))[0][0]
    whole = load_history(conversation, job_id, message_id, max_messages=10_000)
    assert not whole.truncated and len(whole) > 2000
    for window in (2000, 700, 5000):
        tail = load_history(conversation, job_id, message_id, window=window)
        assert len(tail) < len(whole) and tail.truncated
        assert whole[-len(tail) :] == list(tail)
        from_tail, _ = fit_to_window("sys", tail, [], window=window)
        from_whole, _ = fit_to_window("sys", whole, [], window=window, history_truncated=False)
        assert from_tail == from_whole, window


def test_every_foreign_key_has_an_index_that_leads_with_it():
    """A delete checks each referencing table by its foreign key: without an index, a full scan."""
    missing = execute(
        """
        SELECT c.conrelid::regclass::text || '.' || a.attname
          FROM pg_constraint AS c
          JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_index AS i
                            WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1] AND i.indisvalid)
         ORDER BY 1
        """
    )
    assert missing == [], missing
