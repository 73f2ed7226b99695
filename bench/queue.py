"""Dispatch throughput with leases against plain Dramatiq, on the same RabbitMQ and Postgres.

    python -m bench.queue [--jobs 3000] [--baseline-messages 5000] [--threads 8]

Runs in a fresh database and vhost of its own (dropped at the end):
1. baseline: a plain Dramatiq no-op actor, one in-process worker with N threads draining a
   pre-filled queue;
2. ours: the dispatch actor (claim, a no-op turn, token-fenced completion writing the reply and
   its outbox row, nudge of the next job) over 1,000 conversations, the same worker shape.
Prints both rates in jobs/s, their ratio, the claim latency p50/p99, and what a job costs:
database round trips and statements per job (counted on our side, ``zenthor.db.round_trips``:
every ``cursor.execute``, Peewee's own BEGIN/COMMIT included) and, where the server has
``pg_stat_statements`` (``ZENTHOR_BENCH_PG_ADMIN_URL`` at a cluster that preloads it, see
bench/README.md), each statement's calls, planning and execution time; broker publishes per job (each waits for its publisher confirm), counted by a
wrapper around the broker's ``enqueue`` from before the seed publishes until the last job is done;
and CPU per job, of this database's Postgres backends and of the worker process, over the same span.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections import Counter

from bench.scratch import Scratch

scratch = Scratch(
    "queue",
    rabbitmq=True,
    # followup: one turn per job, what this bench measures (collect would answer a conversation's
    # queued jobs in one turn; bench.collect compares the two).
    env={"AGENT_TURN": "bench.turns:noop_turn", "DATABASE_POOL_SIZE": "40", "QUEUE_MODE": "followup"},
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


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


class CpuSplit:
    """CPU used during a block by this database's Postgres backends (read from
    ``pg_stat_activity``; other databases' sessions on the shared server are left out) and by this
    process (the worker's threads, pika, the progress probe)."""

    def __init__(self, execute) -> None:
        self.execute = execute
        self.postgres_s = 0.0
        self.process_s = 0.0

    def _backends(self) -> dict[int, float]:
        rows = self.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {row[0]: cpu_seconds(row[0]) for row in rows}

    def __enter__(self) -> CpuSplit:
        self._before = self._backends()
        self._process_before = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process_s = time.process_time() - self._process_before
        after = self._backends()  # backends opened during the block started from zero
        self.postgres_s = sum(cpu - self._before.get(pid, 0.0) for pid, cpu in after.items())


class PublishCounter:
    """Counts the broker's publishes (by queue) while installed; each one waits for a confirm when
    the broker has ``confirm_delivery`` on."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.by_queue: Counter[str] = Counter()
        self.refused = 0
        self._mu = threading.Lock()
        self._real = broker.enqueue

    def __enter__(self) -> PublishCounter:
        def counting_enqueue(message, *, delay=None):
            try:
                result = self._real(message, delay=delay)
            except Exception:
                with self._mu:
                    self.refused += 1
                raise
            with self._mu:
                self.by_queue[message.queue_name] += 1
            return result

        self.broker.enqueue = counting_enqueue
        return self

    def __exit__(self, *exc: object) -> None:
        del self.broker.enqueue  # back to the class's method

    @property
    def publishes(self) -> int:
        return sum(self.by_queue.values())

    @property
    def confirms(self) -> int:
        return self.publishes if getattr(self.broker, "confirm_delivery", False) else 0


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


def bench_dispatch(
    broker, jobs: int, conversations: int, threads: int
) -> tuple[float, list[float], dict[str, object]]:
    from zenthor.actors.publish import publish_dispatch
    from zenthor.db import database, execute, round_trips
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

    def finished() -> int:
        return execute("SELECT count(*) FROM agent_job WHERE status = 'done'")[0][0]

    # The progress probe runs on this thread: its round trips are not the jobs' and are taken out.
    probes = {"n": 0}

    def finished_uncounted() -> int:
        probes["n"] += 1
        return finished()

    statements_counted = scratch.reset_statement_stats()
    with PublishCounter(broker) as publishes, CpuSplit(execute) as cpu:
        round_trips.reset()
        round_trips.enabled = True
        # Only each conversation's first job is published; the rest follow through the actor's nudge.
        for job_id in job_ids[:conversations]:
            publish_dispatch(job_id)
        elapsed = drain(broker, {"dispatch"}, threads, finished_uncounted, jobs)
        round_trips.enabled = False
    dispatch_module.claim = real_claim
    costs = {
        "round_trips": round_trips.round_trips - probes["n"],
        "statements": round_trips.statements - probes["n"],
        "by_kind": round_trips.by_kind - Counter({"SELECT": probes["n"]}),
        "publishes": publishes.publishes,
        "by_queue": publishes.by_queue,
        "confirms": publishes.confirms,
        "refused": publishes.refused,
        "postgres_cpu_s": cpu.postgres_s,
        "process_cpu_s": cpu.process_s,
        "statement_stats": scratch.statement_stats() if statements_counted else None,
    }
    return jobs / elapsed, latencies, costs


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
        ours, latencies, costs = bench_dispatch(broker, args.jobs, args.conversations, args.threads)

    print(
        f"baseline  plain dramatiq no-op actor: {baseline:8.0f} jobs/s  ({args.baseline_messages} messages)"
    )
    print(
        f"zenthor   dispatch with leases:       {ours:8.0f} jobs/s  ({args.jobs} jobs, {args.conversations} conversations)"
    )
    print(f"ratio     {ours / baseline:.2f}  (target >= 0.5, issue 13)")
    print(
        f"claim latency p50 {percentile(latencies, 0.5) * 1000:.2f} ms  p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
        f"  (mean {statistics.mean(latencies) * 1000:.2f} ms over {len(latencies)} claims)"
    )
    per_job = args.jobs
    kinds = ", ".join(f"{kind} {n / per_job:.2f}" for kind, n in sorted(costs["by_kind"].items()))
    queues = ", ".join(f"{queue} {n / per_job:.2f}" for queue, n in sorted(costs["by_queue"].items()))
    print(
        f"per job   database round trips {costs['round_trips'] / per_job:.2f}"
        f"  statements {costs['statements'] / per_job:.2f}  ({kinds})"
    )
    print(
        f"per job   broker publishes {costs['publishes'] / per_job:.2f}  ({queues};"
        f" seed publishes of each conversation's first job included)"
        f"  publisher confirms waited for {costs['confirms'] / per_job:.2f}  refused {costs['refused']}"
    )
    print(
        f"per job   CPU ms: Postgres (this database's backends) {costs['postgres_cpu_s'] * 1000 / per_job:.2f}"
        f"  worker process {costs['process_cpu_s'] * 1000 / per_job:.2f}"
    )
    if costs["statement_stats"]:
        print("statements (pg_stat_statements, this database, from the first publish):")
        print("    calls  plan ms  plans  exec ms  total ms  statement")
        for calls, plan_ms, plans, exec_ms, total_ms, text in costs["statement_stats"]:
            print(f"    {calls:5d}  {plan_ms:7.3f}  {plans:5d}  {exec_ms:7.3f}  {total_ms:8.0f}  {text}")
    print(f"one worker process, {args.threads} threads, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
