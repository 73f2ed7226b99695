"""The terminal chat, replay, the ingest actor, dedupe pruning, and the sender registry."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ingress.helpers import count, inbound
from tests.support.workers import wait_for
from zenthor.actors.sweep import run_sweep
from zenthor.channels import get_sender, register_sender
from zenthor.channels.terminal.chat import TerminalChat
from zenthor.db import execute
from zenthor.ingress import accept, prune_dedupe_keys
from zenthor.ingress.replay import replay_lines


def test_terminal_chat_shows_each_reply_once_in_order(worker):
    shown: list[str] = []
    chat = TerminalChat("local", "alice", "alice", shown.append)
    assert chat.send("first").status == "accepted"
    assert chat.send("second").status == "accepted"
    wait_for(lambda: chat.poll_once() >= 0 and len(shown) == 2, 15, message="two replies shown")
    # The default turn echoes the message (its exact wording belongs to the agent).
    assert shown[0].endswith("first") and shown[1].endswith("second")
    assert chat.poll_once() == 0
    assert count("outbound_message", "status = 'sent'") == 2
    # Another chat window on the same conversation shows nothing again.
    other: list[str] = []
    assert TerminalChat("local", "alice", "alice", other.append).poll_once() == 0 and other == []


def test_terminal_replies_wait_in_the_outbox_until_a_chat_polls(worker):
    chat = TerminalChat("local", "bob", "bob", lambda text: None)
    chat.send("while away")
    wait_for(lambda: count("outbound_message") == 1, 15)
    assert count("outbound_message", "status = 'pending'") == 1
    later: list[str] = []
    assert TerminalChat("local", "bob", "bob", later.append).poll_once() == 1
    assert len(later) == 1 and later[0].endswith("while away")


def test_replay_counts_duplicates_and_invalid_lines():
    first = inbound("one", message_id="r-1").to_dict()
    second = inbound("two", message_id="r-2").to_dict()
    legacy = {**inbound("three").to_dict(), "message_id": "r-3"}
    del legacy["provider_message_id"]
    lines = [
        json.dumps(first),
        json.dumps(second),
        "",
        json.dumps(first),
        json.dumps(legacy),
        "{oops",
        '{"channel": "webhook"}',
    ]
    report = replay_lines(lines, publish=lambda _: True)
    assert (report.accepted, report.duplicate, report.invalid) == (3, 1, 2)
    assert report.errors[0].startswith("line 6: not JSON")
    assert report.errors[1] == "line 7: account_id: is required"
    again = replay_lines(lines, publish=lambda _: True)
    assert (again.accepted, again.duplicate) == (0, 4)
    assert count("message") == 3


def test_replay_counts_a_recorded_chat_command():
    command = json.dumps(inbound("/queue followup", message_id="r-cmd").to_dict())
    report = replay_lines([command], publish=lambda _: True)
    assert (report.command, report.accepted, report.invalid) == (1, 0, 0)


def test_replay_command_end_to_end(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(
        "\n".join(json.dumps(inbound(f"t{i}", message_id=f"x-{i % 5}").to_dict()) for i in range(10))
    )
    result = subprocess.run(
        [sys.executable, "-m", "zenthor.cli", "replay", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accepted 5, duplicates skipped 5" in result.stdout
    assert count("agent_job") == 5


def test_ingest_actor_accepts_once(worker):
    from zenthor.actors.ingest import ingest, send_inbound

    message = inbound("via actor")
    for _ in range(3):
        send_inbound(message)
    ingest.send({"channel": "webhook"})  # invalid: dead-lettered, not retried
    wait_for(lambda: count("outbound_message") == 1, 15)
    worker.broker.join("ingest", timeout=10_000)
    assert count("message", "role = 'user'") == 1 and count("agent_job") == 1
    wait_for(lambda: dead_letters("ingest") == 1, 15, message="the invalid payload in ingest.XQ")


def dead_letters(queue: str) -> int:
    """Messages waiting in ``queue``'s dead-letter queue (a passive declare reads the count)."""
    from zenthor.broker import broker

    return broker.channel.queue_declare(f"{queue}.XQ", passive=True).method.message_count


def test_replaying_a_line_without_id_or_sent_at_twice_writes_nothing_and_names_the_line():
    """Issue 11, item 6: such a line used to make a message, a job and a reply on every replay."""
    line = json.dumps(
        {"channel": "webhook", "account_id": "acct", "chat_id": "c", "sender_id": "u", "text": "hi"}
    )
    reports = [replay_lines([line], publish=lambda _: True) for _ in range(2)]
    for report in reports:
        assert (report.accepted, report.duplicate, report.invalid) == (0, 0, 1)
        assert report.errors[0].startswith(
            "line 1: sent_at: is required when the message has no provider_message_id"
        )
    assert count("message") == 0 and count("agent_job") == 0 and count("inbound_dedupe") == 0


def test_the_ingest_actor_dead_letters_a_message_without_id_or_sent_at(worker, caplog):
    """Issue 11, item 6: a (re)delivered payload without id or time is never accepted; it lands in
    ingest.XQ with a typed event, once per delivery."""
    from zenthor.actors.ingest import ingest

    payload = {"channel": "webhook", "account_id": "acct", "chat_id": "c", "sender_id": "u", "text": "hi"}
    caplog.set_level(logging.INFO, logger="zenthor.events")
    ingest.send(payload)
    ingest.send(payload)  # a redelivery of the same payload
    worker.broker.join("ingest", timeout=10_000)
    wait_for(lambda: dead_letters("ingest") == 2, 15, message="both deliveries in ingest.XQ")
    assert count("message") == 0 and count("agent_job") == 0 and count("inbound_dedupe") == 0
    events = [r for r in caplog.records if getattr(r, "event", None) == "inbound.dead_lettered"]
    assert len(events) == 2
    assert events[0].channel == "webhook" and events[0].account_id == "acct"
    assert events[0].reason.startswith("sent_at: is required")


def test_sweep_prunes_old_dedupe_keys_in_batches(settings_env):
    settings_env(INBOUND_DEDUPE_TTL_S="3600")
    for i in range(25):
        accept(inbound(message_id=f"old-{i}"), publish=lambda _: True)
    accept(inbound(message_id="fresh"), publish=lambda _: True)
    execute(
        "UPDATE inbound_dedupe SET created_at = now() - interval '2 hours' WHERE provider_message_id LIKE 'old-%%'"
    )
    assert prune_dedupe_keys(batch=10, max_batches=2) == {"pruned_dedupe": 20}
    assert run_sweep("manual")["pruned_dedupe"] == 5
    assert count("inbound_dedupe") == 1
    # A pruned key no longer dedupes (beyond retention, a replay is a new message).
    assert accept(inbound(message_id="old-1"), publish=lambda _: True).status == "accepted"


def test_sender_registry_validates_and_routes():
    assert get_sender("webhook").queue_name == "outbound"
    assert get_sender("terminal").queue_name is None
    with pytest.raises(ValueError, match="queue_name=None"):
        register_sender("broken", None)
    register_sender("whatsapp-test", lambda lease: None, queue_name="outbound.whatsapp-test")
    from zenthor.actors.deliver import queue_for_channel

    assert queue_for_channel("whatsapp-test") == "outbound.whatsapp-test"
    assert queue_for_channel("unknown-channel") == "outbound"
    # A process without the WhatsApp sender (a dispatch worker) never routes its rows to the shared
    # queue: the runtime that owns the account polls its own rows (no nudge at all).
    assert queue_for_channel("whatsapp") is None


def test_the_readme_replay_example_does_what_the_readme_says(tmp_path):
    """The README's replay file, run twice: its documented summaries, and no log line per message."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"```jsonl\n(.*?)```", readme, re.S).group(1)
    said = re.findall(r"^\$ zenthor replay outage.jsonl.*\n(.*)$", readme, re.M)
    path = tmp_path / "outage.jsonl"
    path.write_text(example)
    for expected in said:
        result = subprocess.run(
            [sys.executable, "-m", "zenthor.cli", "replay", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == expected
        assert "inbound.accepted" not in result.stderr
    assert len(said) == 2 and count("agent_job") == 1


def test_zenthor_chat_shows_the_conversation_and_no_log_line_between(worker, tmp_path):
    """A real ``zenthor chat`` process: its screen is the conversation; logs are warnings only."""
    import selectors

    chat = subprocess.Popen(
        [sys.executable, "-m", "zenthor.cli", "chat", "--chat", "screen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    screen = ""
    try:
        chat.stdin.write("hello there\n")
        chat.stdin.flush()
        selector = selectors.DefaultSelector()
        selector.register(chat.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while "assistant>" not in screen and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                screen += os.read(chat.stdout.fileno(), 4096).decode()
        chat.stdin.write("/quit\n")
        chat.stdin.flush()
        rest, errors = chat.communicate(timeout=30)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    screen += rest
    assert chat.returncode == 0, errors[-2000:]
    assert "assistant> " in screen and "hello there" in screen  # the echo responder's reply
    assert "{" not in screen and "queue.job" not in screen
    levels = [json.loads(line)["level"] for line in errors.splitlines() if line.startswith("{")]
    assert set(levels) <= {"WARNING", "ERROR", "CRITICAL"}, errors[-2000:]
