"""Turns in long chats: does a turn's cost stay flat as its conversation grows (issue 11, item 9)?

    python -m bench.history [--sizes 100,3000,30000] [--turns 30] [--window 32000]

Runs in a fresh Postgres database and RabbitMQ vhost of its own (dropped at the end), with a fake
OpenAI-compatible model on 127.0.0.1 that answers at once. For each size S, a conversation is
filled with S earlier messages (each user message with its finished job and its reply, written
set-based), behind 100,000 messages of 100 other chats, and then ``--turns`` turns run one after
another in it through the real dispatch path (``process_job``: claim, the agent turn that loads
the history and calls the model, token-fenced completion). The baseline, measured in the same run,
is the same turns in a chat with no earlier messages. Prints the median and p90 turn time, the
ratio of the median to the baseline's, the rows the turn's history read returned, and the time of
reading the whole conversation (what every turn did before the tail read) for comparison.

A turn reads the tail until the context window is full, so its cost grows with a chat only until
the chat fills the window (a few thousand short messages at 32k tokens) and then stays flat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.scratch import Scratch

scratch = Scratch(
    "history",
    rabbitmq=True,
    env={"AI_MODEL": "bench-model", "AI_API_KEY": "bench"},
)

OTHER_MESSAGES = 100_000
OTHER_CHATS = 100


def fill_others() -> None:
    """Messages and finished jobs of other chats, so the tables are not the one chat alone."""
    from zenthor.db import execute

    first = execute(
        "INSERT INTO conversation (channel, account_id, chat_id) "
        "SELECT 'bench', 'bench', 'other-' || g FROM generate_series(1, %s) AS g RETURNING id",
        (OTHER_CHATS,),
    )[0][0]
    execute(
        "INSERT INTO message (conversation_id, role, content) "
        "SELECT %s + g %% %s, 'user', 'other ' || g FROM generate_series(1, %s) AS g",
        (first, OTHER_CHATS, OTHER_MESSAGES),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, message_id, status, finished_at) "
        "SELECT conversation_id, id, 'done', now() FROM message ORDER BY id"
    )
    execute("UPDATE message AS m SET job_id = j.id FROM agent_job AS j WHERE j.message_id = m.id")


def make_chat(tag: str, size: int) -> int:
    """A conversation with ``size`` earlier messages: user, reply, user, reply, ... all answered."""
    from zenthor.db import execute

    conversation = execute(
        "INSERT INTO conversation (channel, account_id, chat_id) VALUES ('bench', 'bench', %s) RETURNING id",
        (tag,),
    )[0][0]
    if size:
        execute(
            "INSERT INTO message (conversation_id, role, content) "
            "SELECT %s, CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END, "
            "'message ' || g || ' ' || repeat('x', 40) FROM generate_series(1, %s) AS g",
            (conversation, size),
        )
        execute(
            "INSERT INTO agent_job (conversation_id, message_id, status, finished_at) "
            "SELECT %s, id, 'done', now() FROM message WHERE conversation_id = %s AND role = 'user' ORDER BY id",
            (conversation, conversation),
        )
        execute(
            "UPDATE message AS m SET job_id = j.id FROM agent_job AS j "
            "WHERE j.message_id = m.id AND m.conversation_id = %s",
            (conversation,),
        )
        execute(
            "UPDATE message AS m SET job_id = j.id FROM agent_job AS j "
            "WHERE j.message_id = m.id - 1 AND m.conversation_id = %s AND m.role = 'assistant'",
            (conversation,),
        )
    for table in ("message", "agent_job", "conversation"):
        execute(f"ANALYZE {table}")
    return conversation


def run_turns(conversation: int, turns: int, window: int) -> tuple[list[float], int]:
    """Run ``turns`` turns one after another in ``conversation``: (turn times in ms, rows read)."""
    from zenthor.actors.dispatch import process_job
    from zenthor.agent.context import load_history
    from zenthor.db import database, execute
    from zenthor.models import Message
    from zenthor.queue import enqueue_job

    timings = []
    rows = 0
    for i in range(turns):
        message = Message.create(conversation=conversation, role="user", content=f"question {i}")
        job = enqueue_job(conversation, message.id)
        execute("UPDATE message SET job_id = %s WHERE id = %s", (job, message.id))
        started = time.perf_counter()
        outcome = process_job(job)
        timings.append((time.perf_counter() - started) * 1000)
        database.close()
        if outcome != "done":
            raise SystemExit(f"job {job} ended {outcome!r}, not done")
        rows = len(load_history(conversation, job, message.id, window=window))
    return timings, rows


def whole_read_ms(conversation: int) -> float:
    """Median time of reading every message of the conversation (what a turn did before)."""
    from zenthor.db import execute

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        execute(
            "SELECT id, role, content, tool_calls, tool_call_id, job_id FROM message "
            "WHERE conversation_id = %s ORDER BY id",
            (conversation,),
        )
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def p90(values: list[float]) -> float:
    """The 90th percentile of ``values``."""
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,3000,30000")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--window", type=int, default=32_000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    from tests.support.fake_model import FakeModel

    with FakeModel(delay_s=0.0) as model:
        os.environ["AI_BASE_URL"] = model.base_url  # before the settings are first read
        os.environ["AI_CONTEXT_WINDOW"] = str(args.window)
        with scratch.services():
            fill_others()
            run_turns(make_chat("warmup", 10), 5, args.window)  # the SDK client, the pool, imports
            base_times, base_rows = run_turns(make_chat("empty", 0), args.turns, args.window)
            base = statistics.median(base_times)
            print(f"fake model, no delay; window {args.window} tokens; {args.turns} turns per chat")
            print(
                f"{'earlier msgs':>12} {'median ms':>10} {'p90 ms':>8} {'ratio':>6} {'rows read':>9} {'whole read ms':>13}"
            )
            print(f"{0:>12} {base:>10.2f} {p90(base_times):>8.2f} {1.0:>6.2f} {base_rows:>9} {'-':>13}")
            for size in sizes:
                conversation = make_chat(f"chat-{size}", size)
                times, rows = run_turns(conversation, args.turns, args.window)
                median = statistics.median(times)
                print(
                    f"{size:>12} {median:>10.2f} {p90(times):>8.2f} {median / base:>6.2f} {rows:>9} "
                    f"{whole_read_ms(conversation):>13.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
