"""Benchmark: the cost of the plugin tool interface, and reminder delivery throughput.

1. ``ToolRegistry.call`` (argument validation + a thread per call with a timeout) against the
   baseline of calling the same handler directly, for ``core_time_now`` (pure CPU) and
   ``core_memory_recall`` (one Postgres query).
2. ``deliver_due_reminders`` (lock with SKIP LOCKED, write reply + outbox row, stamp the reminder)
   against the baseline of ``write_replies`` alone for the same number of texts in one transaction.

Runs in a fresh Postgres database of its own (dropped at the end):

    .venv/bin/python -m bench.plugins --calls 2000 --reminders 2000
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from bench.scratch import Scratch

scratch = Scratch("plugins")


def per_call_us(fn, count: int) -> float:
    """Microseconds per call of ``fn`` over ``count`` calls (after a short warm-up)."""
    for _ in range(min(50, count)):
        fn()
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count * 1e6


def bench_calls(count: int) -> None:
    from zenthor.plugins.registry import load_plugins
    from zenthor.plugins.tools import ToolContext, ToolRegistry

    report = load_plugins(persist=False)
    registry = ToolRegistry(report)
    ctx = ToolContext(1, "bench", "acct", "chat", "alice", None)
    registry.call("core_memory_remember", {"text": "likes tea"}, ctx)
    print(f"tool calls ({count} each)")
    print(f"{'tool':22s} {'direct us':>10s} {'call() us':>10s} {'ratio':>6s}")
    for name, args in (
        ("core_time_now", {"timezone": "Europe/Berlin"}),
        ("core_memory_recall", {"limit": 5}),
    ):
        handler = report.tools[name].handler
        direct = per_call_us(lambda h=handler, a=args: h(a, ctx), count)
        wrapped = per_call_us(lambda n=name, a=args: registry.call(n, a, ctx), count)
        print(f"{name:22s} {direct:10.1f} {wrapped:10.1f} {wrapped / direct:6.2f}")


def bench_reminders(count: int) -> None:
    from zenthor.agent.replies import write_replies
    from zenthor.db import database, execute
    from zenthor.models import Conversation
    from zenthor.models.reminder import Reminder
    from zenthor.plugins.builtin.core_schedule.delivery import deliver_due_reminders

    conversation = Conversation.create(channel="bench", account_id="acct", chat_id="chat")
    started = time.perf_counter()
    with database.atomic():
        write_replies(conversation.id, None, [f"baseline {n}" for n in range(count)])
    baseline = time.perf_counter() - started

    due = datetime.now(UTC) - timedelta(seconds=1)
    rows = [
        {"conversation_id": conversation.id, "channel": "bench", "account_id": "acct", "chat_id": "chat",
         "text": f"Reminder: {n}", "due_at": due}
        for n in range(count)
    ]  # fmt: skip
    for start in range(0, count, 1000):
        Reminder.insert_many(rows[start : start + 1000]).execute()
    published: list[int] = []
    started = time.perf_counter()
    delivered = 0
    while True:
        n = deliver_due_reminders(write_replies, published.extend, limit=200)["reminders_delivered"]
        if n == 0:
            break
        delivered += n
    elapsed = time.perf_counter() - started
    left = execute("SELECT count(*) FROM reminder WHERE delivered_at IS NULL")[0][0]
    print(f"\nreminder delivery ({count} due, batches of 200)")
    print(f"{'':26s} {'seconds':>8s} {'per s':>8s}")
    print(f"{'baseline write_replies':26s} {baseline:8.2f} {count / baseline:8.0f}")
    print(f"{'deliver_due_reminders':26s} {elapsed:8.2f} {delivered / elapsed:8.0f}")
    print(f"ratio (delivery / baseline time): {elapsed / baseline:.2f}; delivered {delivered}, left {left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reminders", type=int, default=2000)
    args = parser.parse_args()
    with scratch.services():
        bench_calls(args.calls)
        bench_reminders(args.reminders)


if __name__ == "__main__":
    main()
