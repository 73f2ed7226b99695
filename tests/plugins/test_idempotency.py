"""Tool side effects repeated by a retried turn happen once (real Postgres, real tool threads).

``remind`` stores ``ToolContext.idempotency_key`` under a unique index: the same key, from a retry
or from a concurrent run, gives back the reminder it made the first time. Tools that get no key
are idempotent by content (``remember``, ``cancel``).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.factories import make_conversation
from tests.support.workers import DbThread, wait_for
from zenthor.db import database, execute
from zenthor.models.memory import MemoryNote
from zenthor.models.reminder import Reminder
from zenthor.plugins.registry import load_plugins
from zenthor.plugins.tools import ToolContext, ToolRegistry


@pytest.fixture(scope="module")
def registry():
    return ToolRegistry(load_plugins(persist=False))


def ctx(conversation_id: int, key: str | None = None, sender: str = "alice") -> ToolContext:
    return ToolContext(conversation_id, "test", "acct", "chat-i", sender, None, idempotency_key=key)


def ok(result) -> dict:
    assert result.ok, result.error
    return json.loads(result.content)


def remind_args(text: str = "water the plants", days: int = 1) -> dict:
    when = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT09:00")
    return {"when": when, "timezone": "UTC", "text": text}


def test_tool_context_keeps_its_positional_fields():
    positional = ToolContext(1, "test", "acct", "chat", "alice", 9)
    assert positional.job_id == 9 and positional.idempotency_key is None
    assert replace(positional, idempotency_key="k").idempotency_key == "k"


def test_remind_with_the_same_key_twice_makes_one_reminder(registry):
    conversation_id = make_conversation("chat-i")
    first = ok(registry.call("core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:1")))
    # The retry: same key (the model may even have changed its words; the key names the call).
    second = ok(
        registry.call(
            "core_schedule_remind", remind_args("other words"), ctx(conversation_id, "tool_approval:1")
        )
    )
    assert second == first
    rows = execute("SELECT id, idempotency_key, text FROM reminder")
    assert rows == [(first["reminder_id"], "tool_approval:1", "Reminder: water the plants")]


def test_a_repeat_succeeds_even_when_the_first_run_filled_the_chat(tmp_path):
    from tests.plugins.helpers import write_config

    cfg = write_config(tmp_path / "p.toml", "[config.core-schedule]\nmax_pending_per_conversation = 1\n")
    limited = ToolRegistry(load_plugins(config_path=cfg, plugins_path="", persist=False))
    conversation_id = make_conversation("chat-i")
    first = ok(limited.call("core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:5")))
    again = ok(limited.call("core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:5")))
    assert again == first
    other = limited.call("core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:6"))
    assert not other.ok and "limit 1" in other.error
    assert Reminder.select().count() == 1


def test_different_keys_and_no_key_each_make_a_reminder(registry):
    conversation_id = make_conversation("chat-i")
    ids = {
        ok(registry.call("core_schedule_remind", remind_args(), ctx(conversation_id, key)))["reminder_id"]
        for key in ("tool_approval:1", "tool_approval:2", None, None)
    }
    assert len(ids) == 4
    # Rows without a key (older versions, calls with no key) never conflict with each other.
    assert execute("SELECT count(*) FROM reminder WHERE idempotency_key IS NULL")[0][0] == 2


def test_a_key_never_reveals_another_conversations_reminder(registry):
    mine, theirs = make_conversation("chat-a"), make_conversation("chat-b")
    ok(registry.call("core_schedule_remind", remind_args("secret"), ctx(theirs, "tool_approval:9")))
    result = registry.call("core_schedule_remind", remind_args(), ctx(mine, "tool_approval:9"))
    assert not result.ok and "another conversation" in result.error
    assert "secret" not in result.content
    assert Reminder.select().count() == 1


def test_two_threads_with_the_same_key_make_one_reminder(registry):
    conversation_id = make_conversation("chat-i")
    runs = 8
    barrier = threading.Barrier(runs)
    results: list = [None] * runs

    def run(index: int) -> None:
        barrier.wait()
        results[index] = registry.call(
            "core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:42"), timeout_s=10
        )

    threads = [DbThread(target=run, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers = [ok(result) for result in results]
    assert Reminder.select().count() == 1
    assert {answer["reminder_id"] for answer in answers} == {Reminder.get().id}


def test_a_run_that_loses_the_insert_race_returns_the_winners_reminder(registry):
    """Deterministic race: the winner's row is inserted but not committed when the loser runs.

    The loser's first look finds nothing (uncommitted), its INSERT waits on the unique index, and
    once the winner commits, ON CONFLICT DO NOTHING + SELECT hands it the winner's reminder.
    """
    conversation_id = make_conversation("chat-i")
    outcome: dict = {}

    def loser() -> None:
        outcome["result"] = registry.call(
            "core_schedule_remind", remind_args(), ctx(conversation_id, "tool_approval:77"), timeout_s=15
        )

    thread = DbThread(target=loser)
    with database.atomic():
        winner_id = execute(
            "INSERT INTO reminder (conversation_id, channel, account_id, chat_id, text, due_at,"
            " idempotency_key) VALUES (%s, 'test', 'acct', 'chat-i', 'Reminder: first', now() + interval"
            " '1 day', 'tool_approval:77') RETURNING id",
            (conversation_id,),
        )[0][0]
        thread.start()

        def loser_waits() -> bool:
            # pg_stat_activity is a snapshot per transaction: refresh it on every look.
            execute("SELECT pg_stat_clear_snapshot()")
            waiting = execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE %s AND pid <> pg_backend_pid()",
                ("%INSERT INTO reminder%",),
            )
            return bool(waiting)

        wait_for(loser_waits, timeout=10, message="the second INSERT waiting on the unique index")
    thread.join(15)
    assert ok(outcome["result"])["reminder_id"] == winner_id
    assert Reminder.select().count() == 1


def test_remember_is_idempotent_by_content_per_contact(registry, tmp_path):
    conversation_id = make_conversation("chat-i")
    first = ok(registry.call("core_memory_remember", {"text": "Likes green tea"}, ctx(conversation_id)))
    again = ok(registry.call("core_memory_remember", {"text": " Likes green tea "}, ctx(conversation_id)))
    assert again == first
    # Another contact keeps its own note; another text is another note.
    bob = ok(
        registry.call("core_memory_remember", {"text": "Likes green tea"}, ctx(conversation_id, sender="bob"))
    )
    other = ok(registry.call("core_memory_remember", {"text": "Likes black tea"}, ctx(conversation_id)))
    assert len({first["note_id"], bob["note_id"], other["note_id"]}) == 3
    assert MemoryNote.select().count() == 3


def test_remember_repeat_at_the_limit_succeeds(tmp_path):
    from tests.plugins.helpers import write_config

    cfg = write_config(tmp_path / "p.toml", "[config.core-memory]\nmax_notes_per_contact = 1\n")
    limited = ToolRegistry(load_plugins(config_path=cfg, plugins_path="", persist=False))
    conversation_id = make_conversation("chat-i")
    first = ok(limited.call("core_memory_remember", {"text": "one note"}, ctx(conversation_id)))
    assert ok(limited.call("core_memory_remember", {"text": "one note"}, ctx(conversation_id))) == first
    second = limited.call("core_memory_remember", {"text": "another"}, ctx(conversation_id))
    assert not second.ok and "limit 1" in second.error


def test_sweep_completed_carries_the_counts_of_other_steps(registry, caplog):
    from zenthor.actors.sweep import run_sweep

    conversation_id = make_conversation("chat-i")
    args = {"when": datetime.now(UTC).isoformat(), "text": "now"}
    ok(registry.call("core_schedule_remind", args, ctx(conversation_id)))
    caplog.set_level(logging.INFO, logger="zenthor.events")
    run_sweep("manual")
    completed = [r for r in caplog.records if getattr(r, "event", None) == "queue.sweep.completed"]
    assert completed and completed[-1].steps.get("reminders_delivered") == 1
    assert "requeued" not in completed[-1].steps  # fixed fields are not repeated in steps
