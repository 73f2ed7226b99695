"""The built-in plugins against real Postgres: time, memory per contact, reminders delivered on time."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.support.factories import make_conversation
from tests.support.workers import DbThread, wait_for
from zenthor.agent.replies import write_replies
from zenthor.db import database
from zenthor.models import Message, OutboundMessage
from zenthor.models.memory import MemoryNote
from zenthor.models.reminder import Reminder
from zenthor.plugins.builtin.core_schedule.delivery import deliver_due_reminders
from zenthor.plugins.registry import load_plugins
from zenthor.plugins.tools import ToolContext, ToolRegistry


@pytest.fixture(scope="module")
def registry():
    return ToolRegistry(load_plugins(persist=False))


def ctx(conversation_id: int = 1, sender: str | None = "alice", chat: str = "chat-1", account: str = "acct"):
    return ToolContext(conversation_id, "test", account, chat, sender, None)


def ok(result) -> dict:
    assert result.ok, result.error
    return json.loads(result.content)


# --- core-time ----------------------------------------------------------------------------


def test_time_now_in_a_timezone(registry):
    before = datetime.now(ZoneInfo("Asia/Tokyo"))
    out = ok(registry.call("core_time_now", {"timezone": "Asia/Tokyo"}, ctx()))
    moment = datetime.fromisoformat(out["iso"])
    assert out["timezone"] == "Asia/Tokyo" and out["utc_offset"] == "+09:00"
    assert abs((moment - before).total_seconds()) < 5
    assert out["weekday"] == moment.strftime("%A")


def test_time_now_defaults_to_the_configured_timezone(registry):
    assert ok(registry.call("core_time_now", {}, ctx()))["timezone"] == "UTC"


def test_time_add_keeps_wall_clock_across_dst(registry):
    # Europe/Berlin switches to summer time on 2025-03-30.
    args = {"start": "2025-03-29T09:00", "days": 1, "timezone": "Europe/Berlin"}
    out = ok(registry.call("core_time_add", args, ctx()))
    assert out["result"]["iso"] == "2025-03-30T09:00:00+02:00"
    args = {"start": "2025-03-30T01:30", "hours": 1, "timezone": "Europe/Berlin"}
    assert ok(registry.call("core_time_add", args, ctx()))["result"]["iso"] == "2025-03-30T03:30:00+02:00"
    args = {"start": "2025-01-31", "weeks": -1, "minutes": 90}
    assert ok(registry.call("core_time_add", args, ctx()))["result"]["iso"] == "2025-01-24T01:30:00+00:00"


def test_time_diff(registry):
    out = ok(registry.call("core_time_diff", {"start": "2025-01-01", "end": "2025-03-01T12:30"}, ctx()))
    assert (out["days"], out["hours"], out["minutes"]) == (59, 12, 30)
    out = ok(
        registry.call(
            "core_time_diff", {"start": "2025-01-02T00:00Z", "end": "2025-01-01T00:00+01:00"}, ctx()
        )
    )
    assert out["total_seconds"] == -(25 * 3600)


@pytest.mark.parametrize(
    ("name", "args", "error"),
    [
        ("core_time_now", {"timezone": "Mars/Base"}, "unknown timezone 'Mars/Base'"),
        ("core_time_diff", {"end": "next tuesday"}, "'next tuesday' is not an ISO-8601 date"),
        (
            "core_time_add",
            {"start": "9999-12-31", "days": 5},
            "the result is outside the supported date range",
        ),
    ],
)
def test_time_bad_input(registry, name, args, error):
    result = registry.call(name, args, ctx())
    assert not result.ok and result.error.startswith(error), result.error


# --- core-memory --------------------------------------------------------------------------


def test_memory_is_per_contact(registry):
    alice, bob = ctx(sender="alice"), ctx(sender="bob")
    first = ok(registry.call("core_memory_remember", {"text": "Likes green tea"}, alice))
    ok(registry.call("core_memory_remember", {"text": "Allergic to peanuts"}, alice))
    ok(registry.call("core_memory_remember", {"text": "Prefers coffee"}, bob))
    notes = ok(registry.call("core_memory_recall", {}, alice))["notes"]
    assert [n["text"] for n in notes] == ["Allergic to peanuts", "Likes green tea"]  # newest first
    assert notes[1]["note_id"] == first["note_id"]
    assert [n["text"] for n in ok(registry.call("core_memory_recall", {"query": "TEA"}, alice))["notes"]] == [
        "Likes green tea"
    ]
    # The same sender on another account is another contact.
    assert ok(registry.call("core_memory_recall", {}, ctx(sender="alice", account="other")))["notes"] == []
    # Bob cannot forget Alice's note by id.
    result = registry.call("core_memory_forget", {"note_id": first["note_id"]}, bob)
    assert not result.ok and "nothing was forgotten" in result.error
    assert ok(registry.call("core_memory_forget", {"note_id": first["note_id"]}, alice)) == {"forgotten": 1}
    assert ok(registry.call("core_memory_forget", {"query": "peanuts"}, alice)) == {"forgotten": 1}
    assert MemoryNote.select().where(MemoryNote.sender_id == "alice").count() == 0
    assert MemoryNote.select().where(MemoryNote.sender_id == "bob").count() == 1


def test_memory_query_is_literal_and_limits_hold(tmp_path):
    from tests.plugins.helpers import write_config

    cfg = write_config(
        tmp_path / "p.toml", "[config.core-memory]\nmax_notes_per_contact = 2\nmax_note_chars = 10\n"
    )
    registry = ToolRegistry(load_plugins(config_path=cfg, plugins_path="", persist=False))
    alice = ctx()
    ok(registry.call("core_memory_remember", {"text": "100% sure"}, alice))
    ok(registry.call("core_memory_remember", {"text": "a_b"}, alice))
    third = registry.call("core_memory_remember", {"text": "third"}, alice)
    assert not third.ok and "limit 2" in third.error
    too_long = registry.call("core_memory_remember", {"text": "x" * 11}, alice)
    assert not too_long.ok and "the limit is 10" in too_long.error
    # "%" and "_" are literal characters, not LIKE wildcards.
    assert [n["text"] for n in ok(registry.call("core_memory_recall", {"query": "%"}, alice))["notes"]] == [
        "100% sure"
    ]
    assert [n["text"] for n in ok(registry.call("core_memory_recall", {"query": "_"}, alice))["notes"]] == [
        "a_b"
    ]
    missing = registry.call("core_memory_forget", {}, alice)
    assert not missing.ok and "note_id, or a query" in missing.error


def test_memory_without_sender_uses_the_chat(registry):
    ok(registry.call("core_memory_remember", {"text": "group note"}, ctx(sender=None, chat="group-7")))
    assert MemoryNote.get().sender_id == "group-7"


# --- core-schedule ------------------------------------------------------------------------


def test_remind_stores_a_reminder_in_its_timezone(registry):
    conversation_id = make_conversation("chat-r")
    when = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).replace(
        hour=9, minute=0, second=0, microsecond=0, tzinfo=None
    )
    args = {"when": when.isoformat(), "timezone": "Europe/Berlin", "text": "call mum"}
    out = ok(registry.call("core_schedule_remind", args, ctx(conversation_id, chat="chat-r")))
    reminder = Reminder.get_by_id(out["reminder_id"])
    assert reminder.due_at == when.replace(tzinfo=ZoneInfo("Europe/Berlin"))
    assert reminder.text == "Reminder: call mum" and reminder.timezone == "Europe/Berlin"
    assert out["due"]["time"] == "09:00:00"
    listed = ok(registry.call("core_schedule_list", {}, ctx(conversation_id)))["reminders"]
    assert [r["reminder_id"] for r in listed] == [reminder.id]
    assert ok(registry.call("core_schedule_cancel", {"reminder_id": reminder.id}, ctx(conversation_id)))[
        "cancelled"
    ]
    assert ok(registry.call("core_schedule_list", {}, ctx(conversation_id)))["reminders"] == []
    # Cancelling again (a retried turn) gives the same answer; an unknown id is still an error.
    again = registry.call("core_schedule_cancel", {"reminder_id": reminder.id}, ctx(conversation_id))
    assert ok(again) == {"cancelled": True, "reminder_id": reminder.id}
    unknown = registry.call("core_schedule_cancel", {"reminder_id": reminder.id + 1}, ctx(conversation_id))
    assert not unknown.ok and "no reminder" in unknown.error


@pytest.mark.parametrize(
    ("when", "error"),
    [
        ("2001-01-01T09:00", "is in the past"),
        ("tomorrow at 9", "is not an ISO-8601 date"),
        ("2999-01-01T09:00", "at most 366 days ahead"),
    ],
)
def test_remind_bad_times(registry, when, error):
    conversation_id = make_conversation("chat-bad")
    result = registry.call("core_schedule_remind", {"when": when, "text": "x"}, ctx(conversation_id))
    assert not result.ok and error in result.error
    assert Reminder.select().count() == 0


def test_reminder_is_delivered_at_its_time_through_the_sweep(registry):
    from zenthor.actors.sweep import run_sweep

    conversation_id = make_conversation("chat-due")
    due = datetime.now(UTC) + timedelta(seconds=2)
    args = {"when": due.isoformat(), "text": "stretch your legs"}
    reminder_id = ok(registry.call("core_schedule_remind", args, ctx(conversation_id, chat="chat-due")))[
        "reminder_id"
    ]

    # Before its time, a sweep sends nothing.
    counts = run_sweep("manual")
    assert counts.get("reminders_delivered", 0) == 0
    assert OutboundMessage.select().count() == 0

    def delivered():
        run_sweep("manual")
        return Reminder.get_by_id(reminder_id).delivered_at

    delivered_at = wait_for(delivered, timeout=15, interval=0.25, message="reminder delivered")
    assert delivered_at >= due
    outbound = OutboundMessage.get()
    assert (outbound.conversation_id, outbound.chat_id, outbound.text) == (
        conversation_id,
        "chat-due",
        "Reminder: stretch your legs",
    )
    assert Reminder.get_by_id(reminder_id).outbound_id == outbound.id
    assert Message.get(Message.role == "assistant").content == "Reminder: stretch your legs"
    # Later sweeps never send it again.
    run_sweep("manual")
    assert OutboundMessage.select().count() == 1


def test_reminder_written_before_a_restart_is_delivered(worker):
    """A due reminder in Postgres (e.g. written before the workers restarted) is sent by a fresh worker."""
    conversation_id = make_conversation("chat-restart")
    Reminder.create(
        conversation_id=conversation_id,
        channel="test",
        account_id="acct",
        chat_id="chat-restart",
        text="Reminder: from before the restart",
        due_at=datetime.now(UTC) - timedelta(seconds=30),
    )
    # The worker's boot kicks the sweep; the reminders step runs in it.
    wait_for(
        lambda: (
            OutboundMessage.select()
            .where(OutboundMessage.text == "Reminder: from before the restart")
            .exists()
        ),
        timeout=20,
        interval=0.2,
        message="reminder delivered by the worker's sweep",
    )
    assert Reminder.get().delivered_at is not None


def test_two_concurrent_sweeps_never_deliver_twice():
    conversation_id = make_conversation("chat-race")
    past = datetime.now(UTC) - timedelta(seconds=5)
    Reminder.insert_many(
        [
            {
                "conversation_id": conversation_id,
                "channel": "test",
                "account_id": "acct",
                "chat_id": "chat-race",
                "text": f"Reminder: {n}",
                "due_at": past,
            }
            for n in range(40)
        ]
    ).execute()
    published: list[int] = []
    barrier = threading.Barrier(4)
    results: list[dict] = []

    def slow_write(conversation_id, job_id, texts):
        # Widen the window between selecting a row and stamping it, where a double delivery would hide.
        time.sleep(0.01)
        return write_replies(conversation_id, job_id, texts)

    def run():
        barrier.wait()
        try:
            for _ in range(3):
                results.append(deliver_due_reminders(slow_write, published.extend, limit=7))
        finally:
            database.close()

    threads = [DbThread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(r["reminders_delivered"] for r in results) == 40
    texts = [o.text for o in OutboundMessage.select()]
    assert sorted(texts) == sorted(f"Reminder: {n}" for n in range(40))  # each exactly once
    assert sorted(published) == sorted(o.id for o in OutboundMessage.select())
    assert Reminder.select().where(Reminder.delivered_at.is_null()).count() == 0
