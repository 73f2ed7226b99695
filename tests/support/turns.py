"""Turns for tests, selected in worker subprocesses through ``AGENT_TURN``.

``slow_turn`` sleeps ``TEST_TURN_SECONDS`` (default 3) in short steps, checking its lease at each
step as a real turn does before each model call, then answers ``done: <text>``.
"""

from __future__ import annotations

import os
import time

from zenthor.agent.turn import TurnContext, TurnError, TurnResult
from zenthor.models import Message


def _text(ctx: TurnContext) -> str:
    """The job's user message; in collect mode, every message its turn answers, joined by " | "."""
    ids = list(ctx.message_ids)
    if not ids:
        return ""
    texts = {m.id: m.content for m in Message.select().where(Message.id.in_(ids))}
    return " | ".join(texts.get(message_id, "") for message_id in ids)


def _command(ctx: TurnContext) -> str:
    """The job's own user message (what scripted_turn obeys)."""
    message = Message.get_or_none(Message.id == ctx.message_id) if ctx.message_id else None
    return message.content if message is not None else ""


def slow_turn(ctx: TurnContext) -> TurnResult:
    """Sleep in steps (checking the lease), then reply."""
    deadline = time.monotonic() + float(os.environ.get("TEST_TURN_SECONDS", "3"))
    while time.monotonic() < deadline:
        time.sleep(0.05)
        ctx.checkpoint("slow_turn")
    return TurnResult(replies=[f"done: {_text(ctx)}"])


def blind_slow_turn(ctx: TurnContext) -> TurnResult:
    """Sleep without checking the lease, so only the fenced completion can stop a stale worker."""
    time.sleep(float(os.environ.get("TEST_TURN_SECONDS", "3")))
    return TurnResult(replies=[f"done: {_text(ctx)}"])


def failing_turn(ctx: TurnContext) -> TurnResult:
    """Always fails with a retryable error."""
    raise TurnError("server", "the model answered 500")


def fatal_turn(ctx: TurnContext) -> TurnResult:
    """Fails with an error no retry can fix."""
    raise TurnError("auth", "the model rejected our API key", retryable=False)


def scripted_turn(ctx: TurnContext) -> TurnResult:
    """Does what the user's message says, for process-level tests.

    ``sleep:S`` sleeps S seconds checking the lease every 50 ms (a healthy long turn);
    ``blind:S`` sleeps S seconds without checking (only the fenced completion can stop it);
    ``gate:PATH`` waits, checking the lease, until the file PATH exists;
    ``fail`` raises a retryable error; anything else is echoed. The reply names every message the
    turn answers (collect mode: ``done: first | second``); the command is the job's own message.
    """
    text = _text(ctx)
    command, _, argument = _command(ctx).partition(":")
    if command == "sleep":
        deadline = time.monotonic() + float(argument)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            ctx.checkpoint("scripted_sleep")
    elif command == "blind":
        time.sleep(float(argument))
    elif command == "gate":
        # Wait (checking the lease) until the test creates the file: a turn that runs exactly
        # as long as the test needs, whatever the machine's speed.
        deadline = time.monotonic() + 120
        while not os.path.exists(argument) and time.monotonic() < deadline:
            time.sleep(0.05)
            ctx.checkpoint("scripted_gate")
    elif command == "fail":
        raise TurnError("server", "scripted failure")
    return TurnResult(replies=[f"done: {text}"])
