"""Dispatch throughput with leases against plain Dramatiq, on the same RabbitMQ and Postgres.

    python -m bench.queue [--jobs 3000] [--baseline-messages 5000] [--threads 8]

Runs in a fresh database and vhost of its own (dropped at the end):
1. baseline: a plain Dramatiq no-op actor, one in-process worker with N threads draining a
   pre-filled queue;
2. ours: the dispatch actor (claim, a no-op turn, token-fenced completion writing the reply and
   its outbox row, nudge of the next job) over 1,000 conversations, the same worker shape.
Prints both rates in jobs/s, their ratio and the claim latency p50/p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

from bench.scratch import Scratch

scratch = Scratch(
    "queue",
    rabbitmq=True,
    env={"AGENT_TURN": "bench.turns:noop_turn", "DATABASE_POOL_SIZE": "40"},
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drain(broker, queues: set[str], threads: int, done: callable, total: int) -> float:
    """Start a worker on ``queues`` and time how long it takes until ``done()`` reaches ``total``."""
    import dramatiq

    worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    try:
        while done() < total:
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        worker.stop(timeout=10_000)
        # Worker.start adds a hook to the broker that stop leaves behind; the next run would log
        # "adding a middleware of the same type twice".
        broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not worker]


def bench_baseline(broker, messages: int, threads: int) -> float:
    import dramatiq

    counter = {"n": 0}
    lock = threading.Lock()

    @dramatiq.actor(queue_name="bench_noop", max_retries=0)
    def noop(i: int) -> None:
        with lock:
            counter["n"] += 1

    for i in range(messages):
        noop.send(i)
    elapsed = drain(broker, {"bench_noop"}, threads, lambda: counter["n"], messages)
    return messages / elapsed


def bench_dispatch(broker, jobs: int, conversations: int, threads: int) -> tuple[float, list[float]]:
    from zenthor.actors.publish import publish_dispatch
    from zenthor.db import database, execute
    from zenthor.models import Conversation, Message
    from zenthor.queue import enqueue_job

    # zenthor.actors exports the actor under the module's name, so fetch the module itself.
    dispatch_module = sys.modules["zenthor.actors.dispatch"]
    latencies: list[float] = []
    real_claim = dispatch_module.claim

    def timed_claim(job_id, worker):
        started = time.perf_counter()
        try:
            return real_claim(job_id, worker)
        finally:
            latencies.append(time.perf_counter() - started)

    dispatch_module.claim = timed_claim
    job_ids = []
    with database.atomic():
        ids = [
            Conversation.create(channel="bench", account_id="a", chat_id=f"c{i}").id
            for i in range(conversations)
        ]
        for n in range(jobs):
            conversation = ids[n % conversations]
            message = Message.create(conversation=conversation, role="user", content=f"m{n}")
            job_ids.append(enqueue_job(conversation, message.id))
    # Only each conversation's first job is published; the rest follow through the actor's nudge.
    for job_id in job_ids[:conversations]:
        publish_dispatch(job_id)

    def finished() -> int:
        return execute("SELECT count(*) FROM agent_job WHERE status = 'done'")[0][0]

    elapsed = drain(broker, {"dispatch"}, threads, finished, jobs)
    dispatch_module.claim = real_claim
    return jobs / elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--baseline-messages", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    with scratch.services():
        import logging

        from zenthor.broker import broker

        logging.getLogger().setLevel(logging.WARNING)
        baseline = bench_baseline(broker, args.baseline_messages, args.threads)
        ours, latencies = bench_dispatch(broker, args.jobs, args.conversations, args.threads)

    print(
        f"baseline  plain dramatiq no-op actor: {baseline:8.0f} jobs/s  ({args.baseline_messages} messages)"
    )
    print(
        f"zenthor   dispatch with leases:       {ours:8.0f} jobs/s  ({args.jobs} jobs, {args.conversations} conversations)"
    )
    print(f"ratio     {ours / baseline:.2f}  (target >= 0.6)")
    print(
        f"claim latency p50 {percentile(latencies, 0.5) * 1000:.2f} ms  p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
        f"  (mean {statistics.mean(latencies) * 1000:.2f} ms over {len(latencies)} claims)"
    )
    print(f"one worker process, {args.threads} threads, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
