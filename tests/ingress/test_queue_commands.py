"""Per-conversation queue settings (issue 14, item 4): ``/queue`` and ``/debounce`` typed in a chat,
stored on the conversation in accept's transaction, answered by one outbox row and no turn; and
what ``zenthor ops status`` shows of the modes in force.

Waits are judged by the database's clock (``available_at - created_at`` of a job, both set by one
transaction), never by sleeping.
"""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from tests.ingress.helpers import CallbackServer, count, inbound
from tests.support.workers import wait_for
from zenthor.channels.terminal.chat import TerminalChat
from zenthor.cli import cli
from zenthor.db import execute
from zenthor.ingress import ACCEPTED, COMMAND, DUPLICATE, IGNORED, AcceptResult, accept
from zenthor.ingress.commands import parse_command
from zenthor.ingress.policy import ContactPolicy


class Recorder:
    """Stands in for the dispatch and delivery publishers: records what accept() would nudge."""

    def __init__(self) -> None:
        self.dispatched: list[tuple[int, int | None]] = []
        self.delivered: list[tuple[int, str | None]] = []

    def publish(self, job_id: int, delay_ms: int | None = None) -> bool:
        self.dispatched.append((job_id, delay_ms))
        return True

    def deliver(self, outbound_id: int, channel: str | None = None) -> bool:
        self.delivered.append((outbound_id, channel))
        return True


_numbers = iter(range(1, 1_000_000))


def send(
    text: str, recorder: Recorder | None = None, *, chat_id: str = "chat-1", **overrides
) -> AcceptResult:
    """Accept ``text`` as a new webhook message (a fresh provider id unless one is given)."""
    recorder = recorder or Recorder()
    overrides.setdefault("message_id", f"q-{next(_numbers)}")
    return accept(
        inbound(text, chat_id=chat_id, **overrides), publish=recorder.publish, deliver=recorder.deliver
    )


def modes(conversation_id: int) -> tuple[str | None, int | None]:
    return execute("SELECT queue_mode, debounce_ms FROM conversation WHERE id = %s", (conversation_id,))[0]


def reply_text(result: AcceptResult) -> str:
    return execute("SELECT text FROM outbound_message WHERE id = %s", (result.outbound_id,))[0][0]


def wait_of(job_id: int) -> int:
    """How long after it was accepted job ``job_id`` may be claimed, in ms (the database's clock)."""
    return execute(
        "SELECT (extract(epoch FROM available_at - created_at) * 1000)::int FROM agent_job WHERE id = %s",
        (job_id,),
    )[0][0]


def assert_command(result: AcceptResult, recorder: Recorder | None = None) -> None:
    """A command: no job, its reply in the outbox (delivery nudged once), no assistant message."""
    assert result.status == COMMAND and result.job_id is None and result.outbound_id is not None
    assert count("agent_job", "message_id = %s", (result.message_id,)) == 0
    assert count("message", "id = %s AND job_id IS NULL AND role = 'user'", (result.message_id,)) == 1
    assert count("message", "role = 'assistant'") == 0
    if recorder is not None:
        assert recorder.delivered[-1] == (result.outbound_id, "webhook") and recorder.dispatched == []
        assert result.published is True


# --- /queue -------------------------------------------------------------------------------------


def test_queue_commands_set_clear_and_show_the_conversations_mode():
    recorder = Recorder()
    shown = send("/queue", recorder)  # a brand-new conversation: the command creates it
    assert_command(shown, recorder)
    assert shown.reason == "queue_shown"
    assert reply_text(shown).startswith("Queue mode: followup (the default).")  # the suite's QUEUE_MODE
    conversation = shown.conversation_id
    assert modes(conversation) == (None, None)

    collect = send("/queue collect", recorder)
    assert_command(collect, recorder)
    assert (collect.conversation_id, collect.reason) == (conversation, "queue_set")
    assert modes(conversation) == ("collect", None)
    assert reply_text(collect).startswith("Queue mode for this chat: collect. Messages you send while")
    assert reply_text(send("/queue", recorder)).startswith("Queue mode: collect (set for this chat).")

    followup = send("  /QUEUE   FollowUp  ", recorder)  # any case, any surrounding whitespace
    assert_command(followup, recorder)
    assert modes(conversation) == ("followup", None)
    assert reply_text(followup).startswith("Queue mode for this chat: followup. Every message")

    default = send("/queue default", recorder)
    assert modes(conversation) == (None, None)
    assert reply_text(default).startswith(
        "Queue mode for this chat: back to the default, followup (the default)."
    )
    # One outbox row per command, nothing dispatched, and every reply nudged once, in order.
    assert count("outbound_message") == 5 == len(recorder.delivered)
    assert [row for row, _ in recorder.delivered] == sorted(row for row, _ in recorder.delivered)
    assert count("agent_job") == 0


def test_queue_shows_where_the_mode_comes_from(settings_env):
    settings_env(QUEUE_MODE="followup", QUEUE_MODE_WEBHOOK="collect")
    assert reply_text(send("/queue")).startswith("Queue mode: collect (the default for webhook).")
    assert reply_text(send("/queue followup")).startswith("Queue mode for this chat: followup.")
    assert reply_text(send("/queue default")).startswith(
        "Queue mode for this chat: back to the default, collect (the default for webhook)."
    )


def test_the_conversations_own_mode_is_what_the_claim_applies(settings_env):
    """The stored mode reaches the claim (job_statements.MERGE_BEHIND reads conversation.queue_mode):
    three messages queued in a conversation that chose collect are claimed as one batch."""
    from zenthor.queue import Lease, claim

    settings_env(QUEUE_MODE="followup")
    send("/queue collect")
    jobs = [send(f"part {n}").job_id for n in range(3)]
    lease = claim(jobs[0], "w")
    assert isinstance(lease, Lease) and list(lease.merged_job_ids) == jobs[1:]


# --- /debounce ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stored", "says"),
    [
        ("/debounce 2s", 2000, "Debounce for this chat: 2 s, I answer once you have written nothing for 2 s"),
        ("/debounce 1500ms", 1500, "Debounce for this chat: 1.5 s,"),
        ("/Debounce 1.5 S", 1500, "Debounce for this chat: 1.5 s,"),
        ("/debounce 1min", 60_000, "Debounce for this chat: 1 min,"),
        ("/debounce 0", 0, "Debounce for this chat: off, I answer as soon as a message arrives."),
        (" /DEBOUNCE off ", 0, "Debounce for this chat: off,"),
    ],
)
def test_debounce_commands_store_the_wait_and_say_it(settings_env, text, stored, says):
    settings_env(QUEUE_DEBOUNCE_MS="0", QUEUE_DEBOUNCE_MAX_MS="60000")
    recorder = Recorder()
    result = send(text, recorder)
    assert_command(result, recorder)
    assert result.reason == "debounce_set"
    assert modes(result.conversation_id) == (None, stored)
    assert reply_text(result).startswith(says)
    shown = send("/debounce", recorder)
    assert shown.reason == "debounce_shown"
    assert reply_text(shown).startswith(says.replace("Debounce for this chat:", "Debounce:").rstrip(".,"))
    assert "(set for this chat)" in reply_text(shown)


def test_debounce_default_goes_back_to_the_setting(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="15000")
    assert reply_text(send("/debounce")).startswith(
        "Debounce: 1 s, I answer once you have written nothing for 1 s"
    )
    conversation = send("/debounce 0").conversation_id
    assert modes(conversation) == (None, 0)
    cleared = send("/debounce default")
    assert modes(conversation) == (None, None)
    assert reply_text(cleared).startswith("Debounce for this chat: back to the default, 1 s,")
    assert "(the default)" in reply_text(send("/debounce"))


def test_a_wait_above_the_servers_max_is_stored_but_capped_and_the_reply_says_so(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="0", QUEUE_DEBOUNCE_MAX_MS="15000")
    asked = send("/debounce 30s")
    assert modes(asked.conversation_id) == (None, 30_000)
    assert "15 s" in reply_text(
        asked
    ) and "you asked for 30 s, but this server waits at most 15 s" in reply_text(asked)
    turn = send("hello")
    assert turn.status == ACCEPTED and wait_of(turn.job_id) == 15_000


def test_the_conversations_debounce_holds_its_next_turn():
    recorder = Recorder()
    send("/debounce 2s", recorder)
    turn = send("hello", recorder)
    assert turn.status == ACCEPTED and wait_of(turn.job_id) == 2000
    # The nudge waits as long as the job (the database's remaining time, at most the wait).
    assert recorder.dispatched == [(turn.job_id, turn.delay_ms)] and 0 < turn.delay_ms <= 2000
    # Another conversation keeps the default (QUEUE_DEBOUNCE_MS is 0 here).
    other = send("hello", recorder, chat_id="chat-2")
    assert wait_of(other.job_id) == 0 and other.delay_ms == 0


def test_debounce_off_turns_the_wait_off_for_that_conversation_only(settings_env):
    settings_env(QUEUE_DEBOUNCE_MS="1000", QUEUE_DEBOUNCE_MAX_MS="15000")
    recorder = Recorder()
    send("/debounce off", recorder)
    turn = send("hello", recorder)
    assert wait_of(turn.job_id) == 0 and turn.delay_ms == 0
    assert recorder.dispatched == [(turn.job_id, None)]
    other = send("hello", recorder, chat_id="chat-2")
    assert wait_of(other.job_id) == 1000


# --- what is not a command, bad values, duplicates, ignored senders --------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("/queue fast", '"fast" is not a queue mode'),
        ("/queue collect now", '/queue takes one word, not "collect now"'),
        ("/debounce 2", '"2" has no unit: write 2s or 2ms'),
        ("/debounce soon", '"soon" is not a duration'),
        ("/debounce -1s", '"-1s" is not a duration'),
        ("/debounce 11min", '"11min" is too long: the most is 10 min'),
        ("/debounce 2s please", '/debounce takes one value, not "2s please"'),
    ],
)
def test_a_bad_command_gets_the_help_and_changes_nothing(text, names):
    recorder = Recorder()
    conversation = send("/queue collect", recorder).conversation_id
    send("/debounce 3s", recorder)
    result = send(text, recorder)
    assert_command(result, recorder)
    assert result.reason.endswith("_help")
    assert modes(conversation) == ("collect", 3000)
    reply = reply_text(result)
    assert reply.startswith(f"Sorry, {names}. Use /")
    usage = "/queue collect" if text.startswith("/queue") else "/debounce 2s or /debounce 1500ms"
    assert usage in reply


@pytest.mark.parametrize(
    "text", ["/queued collect", "please /queue collect", "/debouncer 2s", "queue collect", ""]
)
def test_only_a_first_word_of_exactly_queue_or_debounce_is_a_command(text):
    """(After leading mentions: ``test_a_command_after_a_mention_is_a_command``.)"""
    assert parse_command(text) is None
    if text:
        result = send(text)
        assert result.status == ACCEPTED and result.job_id is not None
        assert count("outbound_message") == 0 and modes(result.conversation_id) == (None, None)


def test_a_command_after_a_mention_is_a_command():
    """A WhatsApp group message reaches the assistant only when it mentions it."""
    command = parse_command("@5511999990000 /queue followup")
    assert command is not None and (command.name, command.action, command.value) == (
        "queue",
        "set",
        "followup",
    )
    assert parse_command("@5511999990000") is None
    assert parse_command("@someone please /queue followup") is None


def test_a_duplicate_command_changes_nothing():
    recorder = Recorder()
    first = send("/queue collect", recorder, message_id="dup-1")
    conversation = first.conversation_id
    send("/queue default", recorder)
    again = send("/queue collect", recorder, message_id="dup-1")
    assert again.status == DUPLICATE and again.outbound_id is None
    assert modes(conversation) == (None, None)
    assert count("outbound_message") == 2 and len(recorder.delivered) == 2
    assert count("message") == 2 and count("agent_job") == 0


def test_a_command_from_a_sender_the_policy_ignores_stays_ignored():
    recorder = Recorder()
    result = accept(
        inbound("/queue collect", message_id="ig-1", sender_id="stranger"),
        publish=recorder.publish,
        deliver=recorder.deliver,
        policy=ContactPolicy("allowlist", frozenset({"user-1"})),
    )
    assert result.status == IGNORED and result.outbound_id is None
    assert count("conversation") == 0 and count("outbound_message") == 0 and recorder.delivered == []


def test_a_command_emits_its_event(caplog):
    caplog.set_level(logging.INFO, logger="zenthor.events")
    result = send("/debounce nope")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "inbound.command"]
    assert (record.command, record.outcome, record.outbound_id, record.conversation_id) == (
        "debounce",
        "help",
        result.outbound_id,
        result.conversation_id,
    )
    assert (record.channel, record.account_id, record.message_id) == ("webhook", "acct", result.message_id)


def test_without_a_delivery_publisher_the_reply_waits_for_the_outbox_sweep():
    from zenthor.ingress import pipeline

    saved = list(pipeline._default)
    pipeline.set_default_publisher(lambda job_id, **_: True)  # no deliver=: nothing to nudge with
    try:
        result = accept(inbound("/queue", message_id="nd-1"))
    finally:
        pipeline._default[:] = saved
    assert result.status == COMMAND and result.published is None
    assert count("outbound_message", "id = %s AND status = 'pending'", (result.outbound_id,)) == 1


# --- ops status ---------------------------------------------------------------------------------


def test_ops_status_shows_the_modes_in_force_and_the_conversations_own(settings_env):
    settings_env(
        QUEUE_MODE="collect",
        QUEUE_MODE_WHATSAPP="followup",
        QUEUE_COLLECT_MAX="7",
        QUEUE_DEBOUNCE_MS="500",
        QUEUE_DEBOUNCE_MAX_MS="9000",
    )
    send("/queue followup", chat_id="a")
    send("/queue followup", chat_id="b")
    send("/debounce 2s", chat_id="b")
    send("/queue collect", chat_id="c")
    send("/debounce off", chat_id="d")
    send("/queue", chat_id="e")  # shows only: chooses nothing

    as_json = CliRunner().invoke(cli, ["ops", "status", "--json"], catch_exceptions=False)
    assert json.loads(as_json.output)["queue_modes"] == {
        "mode": "collect",
        "channel_modes": {"whatsapp": "followup"},
        "collect_max": 7,
        "debounce_ms": 500,
        "debounce_max_ms": 9000,
        "conversations": {"queue_mode": {"collect": 1, "followup": 2}, "debounce_ms": {"0": 1, "2000": 1}},
    }
    human = CliRunner().invoke(cli, ["ops", "status"], catch_exceptions=False).output
    assert "queue mode:  collect (QUEUE_MODE)  per channel: whatsapp=followup  collect max 7" in human
    assert (
        "debounce:    500 ms (QUEUE_DEBOUNCE_MS), a burst waits at most 9 s (QUEUE_DEBOUNCE_MAX_MS)" in human
    )
    assert "conversations' own: /queue collect=1  followup=2   /debounce off=1  2 s=1" in human


def test_ops_status_with_no_conversation_choosing_its_own():
    human = CliRunner().invoke(cli, ["ops", "status"], catch_exceptions=False).output
    assert "queue mode:  followup (QUEUE_MODE)  per channel: none  collect max 20" in human
    assert "debounce:    off (QUEUE_DEBOUNCE_MS), a burst waits at most 15 s (QUEUE_DEBOUNCE_MAX_MS)" in human
    assert "conversations' own: /queue none   /debounce none" in human


# --- delivery, end to end -----------------------------------------------------------------------


@pytest.fixture
def callback(settings_env):
    server = CallbackServer()
    settings_env(
        WEBHOOK_CALLBACK_URL=server.url,
        WEBHOOK_SECRET="test-secret",
        WEBHOOK_DEFAULT_ACCOUNT="acct",
        OUTBOUND_RETRY_BASE_MS="30",
        OUTBOUND_RETRY_MAX_MS="200",
    )
    yield server
    server.stop()


def test_a_commands_reply_is_delivered_on_the_webhook_by_a_worker(callback, worker):
    # The registered publishers (zenthor.actors, imported by the worker fixture): delivery is nudged.
    result = accept(inbound("/queue collect", message_id="e2e-1"))
    assert result.status == COMMAND and result.published is True
    wait_for(lambda: callback.ok_records(), 15, message="the command's reply POSTed")
    (record,) = callback.ok_records()
    assert record.json["outbound_id"] == result.outbound_id and record.json["chat_id"] == "chat-1"
    assert record.json["text"].startswith("Queue mode for this chat: collect.")
    assert count("outbound_message", "id = %s AND status = 'sent'", (result.outbound_id,)) == 1
    assert count("agent_job") == 0 and count("message", "role = 'assistant'") == 0


def test_a_commands_reply_is_shown_in_the_terminal_chat():
    """The terminal's own process polls its outbox rows (no delivery nudge, no worker)."""
    shown: list[str] = []
    chat = TerminalChat("local", "carol", "carol", shown.append, publish=Recorder().publish)
    assert chat.send("/debounce 2s").status == COMMAND
    assert chat.poll_once() == 1
    assert len(shown) == 1 and shown[0].startswith("Debounce for this chat: 2 s,")
    # The next message is an ordinary turn, answered after the conversation's wait.
    turn = chat.send("hello")
    assert turn.status == ACCEPTED and wait_of(turn.job_id) == 2000
