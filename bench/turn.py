"""Agent turns against a slow model: does throughput scale with threads while the model is the bottleneck?

    python -m bench.turn [--delay-ms 200] [--threads 1,8,32] [--turns-per-thread 8] [--pool 8]

Runs in a fresh Postgres database and RabbitMQ vhost of its own (dropped at the end), with a fake
OpenAI-compatible model on 127.0.0.1 that answers every request after a fixed delay. For each
thread count N, N threads run the real dispatch path (``process_job``: claim, the agent turn with
its HTTP call to the model, token-fenced completion with the reply and its outbox row) over one
job per conversation. The baseline, measured in the same run, is the ideal for a model-bound
system: N / delay turns per second. Prints turns/s, the ratio to that ideal, the process's
resident memory added per thread (peak RSS during the run minus RSS before it, over N), and the
CPU time of a turn (``process_job``'s own thread, so neither the fake model server, which runs in
this process, nor the RSS sampler is counted).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.scratch import Scratch

scratch = Scratch(
    "turn",
    rabbitmq=True,
    env={"AI_MODEL": "bench-model", "AI_API_KEY": "bench"},
)


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """Samples RSS every 20 ms in the background; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakSessions:
    """Samples, every 20 ms, how many Postgres sessions this process's main pool has open
    (``pg_stat_activity.application_name = 'zenthor <pid>'``, on a connection of its own)."""

    def __init__(self) -> None:
        import psycopg2

        from zenthor.db import connect_kwargs
        from zenthor.settings import get_settings

        self.peak = 0
        self._conn = psycopg2.connect(**connect_kwargs(get_settings().DATABASE_URL, role="bench-probe"))
        self._conn.autocommit = True
        self._name = f"zenthor {os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._conn.cursor() as cursor:
            while not self._stop.wait(0.02):
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self._name,)
                )
                self.peak = max(self.peak, cursor.fetchone()[0])

    def __enter__(self) -> PeakSessions:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def make_jobs(count: int, tag: str) -> list[int]:
    """One user message and job per conversation, so every job may run at once."""
    from zenthor.db import database
    from zenthor.models import Conversation, Message
    from zenthor.queue import enqueue_job

    ids = []
    with database.atomic():
        for i in range(count):
            conversation = Conversation.create(channel="bench", account_id="bench", chat_id=f"{tag}-{i}")
            message = Message.create(conversation=conversation.id, role="user", content=f"hello {i}")
            ids.append(enqueue_job(conversation.id, message.id))
    return ids


def run(threads: int, turns: int, tag: str) -> tuple[float, int, int, float, int]:
    """(turns per second, RSS KiB added per thread, turns that did not finish as done, CPU ms per
    turn, the most Postgres sessions the main pool had open at once)."""
    from zenthor.actors.dispatch import process_job
    from zenthor.db import database

    jobs = make_jobs(turns, tag)
    before = rss_kib()

    cpu_lock = threading.Lock()
    cpu = 0.0

    def one(job_id: int) -> str:
        nonlocal cpu
        started = time.thread_time()
        try:
            return process_job(job_id)
        finally:
            database.close()  # give the pooled connection back, as the worker middleware does
            spent = time.thread_time() - started
            with cpu_lock:
                cpu += spent

    with PeakRss() as peak, PeakSessions() as sessions, ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.perf_counter()
        outcomes = list(pool.map(one, jobs))
        elapsed = time.perf_counter() - started
    failed = sum(1 for outcome in outcomes if outcome != "done")
    return turns / elapsed, max(peak.peak - before, 0) // threads, failed, cpu * 1000 / turns, sessions.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=200)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--turns-per-thread", type=int, default=8)
    parser.add_argument(
        "--pool", type=int, default=8, help="DATABASE_POOL_SIZE of this process (the product's default: 8)"
    )
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    os.environ["DATABASE_POOL_SIZE"] = str(args.pool)  # before the settings are first read

    from tests.support.fake_model import FakeModel

    with FakeModel(delay_s=args.delay_ms / 1000.0) as model:
        os.environ["AI_BASE_URL"] = model.base_url  # before the settings are first read
        with scratch.services():
            # Warm up: the SDK client, the connection pool, imports.
            run(2, 4, "warmup")
            print(
                f"fake model delay {args.delay_ms} ms; baseline = ideal model-bound rate threads/delay;"
                f" DATABASE_POOL_SIZE {args.pool}"
            )
            print(
                f"{'threads':>7} {'turns':>6} {'turns/s':>9} {'ideal/s':>9} {'ratio':>6} {'KiB/thread':>11} {'failed':>6}"
                f" {'CPU ms/turn':>11} {'sessions':>8}"
            )
            for threads in thread_counts:
                turns = max(threads * args.turns_per_thread, 8)
                rate, kib_per_thread, failed, cpu_ms, sessions = run(threads, turns, f"t{threads}")
                ideal = threads / (args.delay_ms / 1000.0)
                print(
                    f"{threads:>7} {turns:>6} {rate:>9.1f} {ideal:>9.1f} {rate / ideal:>6.2f} "
                    f"{kib_per_thread:>11} {failed:>6} {cpu_ms:>11.2f} {sessions:>8}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
