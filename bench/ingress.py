"""Ingress benchmark: webhook in ▸ callback out, dispatch latency at half load, and a replay storm.

    python -m bench.ingress [--messages 2000] [--chats 200] [--senders 32] [--half-seconds 10]
                            [--storm-unique 10000] [--storm-copies 10] [--worker-processes 2]
                            [--worker-threads 8] [--gateway-workers 1] [--gateway-only]

Runs in a fresh Postgres database and RabbitMQ vhost of its own (dropped at the end), with real
processes: ``zenthor gateway`` and ``dramatiq zenthor.actors`` (placeholder turn), and a fake
callback server in this process that receives the replies.

1. Throughput: ``--messages`` signed webhook POSTs over ``--chats`` chats from ``--senders``
   threads as fast as the gateway takes them; end to end = first POST to last reply received.
   Latency per message = its POST to its reply at the callback (p50, p99).
2. Half load: POSTs paced at half the measured end-to-end rate for ``--half-seconds``; latency
   from the inbound accepted (agent_job.created_at) to its dispatch started (started_at), p50/p99.
3. Replay storm: ``--storm-unique`` messages each submitted ``--storm-copies`` times (shuffled,
   16 threads calling accept() as ``zenthor replay`` does); dedupe rate, and double processing
   (more than one user message, job or reply for one inbound) which must be zero.

``--gateway-only`` measures the accept path alone instead: ``--messages`` POSTs answered per second
and the gateway's CPU per POST, with no worker running.

Baseline, in the same run: the bare Postgres floor, one INSERT of a message row per transaction
from the same number of threads; accept()'s rate in the storm is printed as a ratio of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.scratch import Scratch

SECRET = "whsec_YmVuY2gtc2VjcmV0LW9mLXRoZS1pbmdyZXNzLWJlbmNobWFyaw=="
scratch = Scratch(
    "ingress",
    rabbitmq=True,
    env={
        "DATABASE_POOL_SIZE": "48",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "WEBHOOK_SENDER_RATE_PER_MIN": "0",  # the bench measures throughput, not the cost limit
        # One turn and one callback per message (collect would answer a chat's queued messages at
        # once; bench.collect measures that).
        "QUEUE_MODE": "followup",
    },
)
MARK = re.compile(r"\b(b\d+-\d+)$")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A worker closing an idle keep-alive connection resets it: not an error of the bench.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children (uvicorn workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    for each in [pid, *map(int, children)]:
        try:
            fields = open(f"/proc/{each}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Callback:
    """The fake webhook receiver: records when each reply (by its marker) arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: with Nagle on, the body waits for the
            # client's delayed ACK of the headers (40 ms on Linux) and every call looks 40 ms slow.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                match = MARK.search(json.loads(body)["text"])
                with outer.lock:
                    if match:
                        if match.group(1) in outer.arrivals:
                            outer.duplicates += 1
                        else:
                            outer.arrivals[match.group(1)] = now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cb"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")
    )


def post_factory(gateway_url: str):
    import httpx

    from tests.ingress.helpers import signed_post

    local = threading.local()

    def post(marker: str, chat: str) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
        body = json.dumps({"message_id": marker, "chat_id": chat, "sender_id": chat, "text": marker}).encode()
        return signed_post(client, f"{gateway_url}/v1/webhook/acct/messages", body, SECRET).status_code

    return post


def wait_replies(callback: Callback, markers: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with callback.lock:
            if all(m in callback.arrivals for m in markers):
                return True
        time.sleep(0.05)
    return False


def throughput(post, callback: Callback, messages: int, chats: int, senders: int, tag: str = "b1") -> dict:
    markers = [(f"{tag}-{i}", f"chat-{i % chats}") for i in range(messages)]
    sent_at: dict[str, float] = {}

    def one(item: tuple[str, str]) -> int:
        sent_at[item[0]] = time.time()
        return post(*item)

    started = time.time()
    with ThreadPoolExecutor(max_workers=senders) as pool:
        codes = list(pool.map(one, markers))
    ingress_done = time.time()
    complete = wait_replies(callback, [m for m, _ in markers], 600)
    with callback.lock:
        arrivals = {m: callback.arrivals[m] for m, _ in markers if m in callback.arrivals}
    finished = max(arrivals.values())
    latencies = [(arrivals[m] - sent_at[m]) * 1000 for m in arrivals]
    return {
        "accepted": codes.count(202),
        "complete": complete,
        "ingress_rate": messages / (ingress_done - started),
        "e2e_rate": len(arrivals) / (finished - started),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def half_load(post, callback: Callback, rate: float, seconds: float, chats: int) -> dict:
    from zenthor.db import database, execute

    total = max(int(rate * seconds), 20)
    interval = 1.0 / rate
    markers = [(f"b2-{i}", f"half-{i % chats}") for i in range(total)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for index, item in enumerate(markers):
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, *item)
    wait_replies(callback, [m for m, _ in markers], 300)
    with database.connection_context():
        rows = execute(
            "SELECT extract(epoch FROM j.started_at - j.created_at) * 1000 FROM agent_job j "
            "JOIN message m ON m.id = j.message_id WHERE m.content LIKE 'b2-%%'"
        )
    waits = [float(r[0]) for r in rows]
    return {"rate": rate, "messages": total, "p50_ms": percentile(waits, 50), "p99_ms": percentile(waits, 99)}


def baseline_inserts(count: int, threads: int) -> float:
    """The Postgres floor: one message-row INSERT per transaction, from ``threads`` threads."""
    from zenthor.db import database, execute

    with database.connection_context():
        (conversation_id,) = execute(
            "INSERT INTO conversation (channel, account_id, chat_id) VALUES ('bench', 'base', 'base') RETURNING id"
        )[0]

    def one(i: int) -> None:
        try:
            with database.atomic():
                execute(
                    "INSERT INTO message (conversation_id, role, content) VALUES (%s, 'user', %s)",
                    (conversation_id, f"base-{i}"),
                )
        finally:
            database.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started)


def storm(unique: int, copies: int, threads: int) -> dict:
    from zenthor.actors.publish import publish_dispatch
    from zenthor.db import database, execute
    from zenthor.ingress import InboundMessage, accept

    submissions = [i for i in range(unique) for _ in range(copies)]
    random.Random(7).shuffle(submissions)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        message = InboundMessage(
            channel="webhook",
            account_id="storm",
            chat_id=f"s{i % 500}",
            sender_id=f"s{i % 500}",
            provider_message_id=f"storm-{i}",
            text=f"b3-{i}",
        )
        try:
            status = accept(message, publish=publish_dispatch).status
        finally:
            database.close()
        with lock:
            counts[status] = counts.get(status, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, submissions))
    elapsed = time.perf_counter() - started
    with database.connection_context():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            (open_jobs,) = execute(
                "SELECT count(*) FROM agent_job j JOIN message m ON m.id = j.message_id "
                "WHERE m.content LIKE 'b3-%%' AND j.status IN ('pending', 'processing')"
            )[0]
            if open_jobs == 0:
                break
            time.sleep(0.5)
        (messages,) = execute("SELECT count(*) FROM message WHERE role = 'user' AND content LIKE 'b3-%%'")[0]
        (double_messages,) = execute(
            "SELECT count(*) FROM (SELECT content FROM message WHERE role = 'user' AND content LIKE 'b3-%%' "
            "GROUP BY content HAVING count(*) > 1) d"
        )[0]
        (double_jobs,) = execute(
            "SELECT count(*) FROM (SELECT message_id FROM agent_job WHERE message_id IN "
            "(SELECT id FROM message WHERE content LIKE 'b3-%%') GROUP BY message_id HAVING count(*) > 1) d"
        )[0]
        (double_replies,) = execute(
            "SELECT count(*) FROM (SELECT in_reply_to FROM outbound_message WHERE in_reply_to IN "
            "(SELECT id FROM message WHERE content LIKE 'b3-%%') GROUP BY in_reply_to HAVING count(*) > 1) d"
        )[0]
        (retried,) = execute(
            "SELECT count(*) FROM agent_job j JOIN message m ON m.id = j.message_id "
            "WHERE m.content LIKE 'b3-%%' AND (j.attempts > 0 OR j.status <> 'done')"
        )[0]
    return {
        "submissions": len(submissions),
        "rate": len(submissions) / elapsed,
        "counts": counts,
        "messages": messages,
        "double": double_messages + double_jobs + double_replies,
        "retried_or_unfinished": retried,
    }


def gateway_only(post, gateway_pid: int, args: argparse.Namespace) -> None:
    """The accept path alone: signed POSTs as fast as the gateway answers them (the jobs stay
    pending: no worker runs), with the gateway's CPU per POST (all its processes)."""
    with ThreadPoolExecutor(max_workers=args.senders) as pool:
        list(pool.map(lambda i: post(f"w-{i}", f"chat-{i % args.chats}"), range(300)))  # warm up
        cpu_before = process_cpu_s(gateway_pid)
        started = time.perf_counter()
        codes = list(pool.map(lambda i: post(f"g-{i}", f"chat-{i % args.chats}"), range(args.messages)))
        elapsed = time.perf_counter() - started
        cpu_ms = (process_cpu_s(gateway_pid) - cpu_before) * 1000 / args.messages
    print(
        f"0. gateway only: {args.messages} POSTs, {args.chats} chats, {args.senders} senders, "
        f"gateway workers {args.gateway_workers}"
    )
    print(f"   accepted (202)     {codes.count(202)}")
    print(f"   ingress rate       {args.messages / elapsed:8.1f} msg/s (POSTs answered)")
    print(f"   gateway CPU        {cpu_ms:8.2f} ms per POST (all its processes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--half-seconds", type=float, default=10.0)
    parser.add_argument("--storm-unique", type=int, default=10_000)
    parser.add_argument("--storm-copies", type=int, default=10)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--gateway-workers", type=int, default=1, help="uvicorn processes of the gateway")
    parser.add_argument(
        "--gateway-only",
        action="store_true",
        help="only the gateway's accept path: POSTs answered per second and its CPU, no worker",
    )
    args = parser.parse_args()

    from tests.ingress.helpers import GatewayProcess
    from tests.support.workers import WorkerProcess

    callback = Callback()
    os.environ["WEBHOOK_CALLBACK_URL"] = callback.url  # before the settings are first read
    worker = gateway = None
    with scratch.services():
        try:
            env = {"LOG_LEVEL": "WARNING", "WEBHOOK_CALLBACK_URL": callback.url}
            if args.gateway_only:
                gateway = GatewayProcess(env, workers=args.gateway_workers)
                gateway_only(post_factory(gateway.url), gateway.proc.pid, args)
                return 0
            worker = WorkerProcess(
                "bench-worker", threads=args.worker_threads, processes=args.worker_processes, env=env
            )
            gateway = GatewayProcess(env, workers=args.gateway_workers)
            post = post_factory(gateway.url)
            throughput(post, callback, 100, 20, 8, tag="b0")  # warm up connections and imports

            cpu_before = process_cpu_s(gateway.proc.pid)
            t = throughput(post, callback, args.messages, args.chats, args.senders)
            gateway_cpu_ms = (process_cpu_s(gateway.proc.pid) - cpu_before) * 1000 / args.messages
            print(
                f"1. webhook in -> callback out: {args.messages} messages, {args.chats} chats, {args.senders} senders, "
                f"gateway workers {args.gateway_workers}"
            )
            print(f"   accepted (202)     {t['accepted']}   all replied: {t['complete']}")
            print(f"   ingress rate       {t['ingress_rate']:8.1f} msg/s (POSTs answered)")
            print(f"   gateway CPU        {gateway_cpu_ms:8.2f} ms per POST (all its processes)")
            print(
                f"   end-to-end rate    {t['e2e_rate']:8.1f} msg/s   (target >= 500: ratio {t['e2e_rate'] / 500:.2f})"
            )
            print(f"   POST -> reply      p50 {t['p50_ms']:7.1f} ms   p99 {t['p99_ms']:7.1f} ms")

            h = half_load(post, callback, max(t["e2e_rate"] / 2, 5), args.half_seconds, args.chats)
            print(f"2. half load: {h['messages']} messages paced at {h['rate']:.1f} msg/s")
            print(
                f"   accepted -> dispatch started   p50 {h['p50_ms']:6.1f} ms   p99 {h['p99_ms']:6.1f} ms"
                f"   (target p99 <= 40 ms: ratio {h['p99_ms'] / 40:.2f})"
            )

            base = baseline_inserts(5000, 16)
            s = storm(args.storm_unique, args.storm_copies, 16)
            duplicates = s["counts"].get("duplicate", 0)
            print(
                f"3. replay storm: {args.storm_unique} unique x {args.storm_copies} = {s['submissions']} submissions, 16 threads"
            )
            print(f"   outcomes           {s['counts']}")
            print(
                f"   dedupe rate        {duplicates / s['submissions']:.3f}  (expected {1 - 1 / args.storm_copies:.3f})"
            )
            print(
                f"   user messages      {s['messages']}   double processing: {s['double']}   jobs retried/unfinished: {s['retried_or_unfinished']}"
            )
            print(
                f"   accept() rate      {s['rate']:8.1f} /s   baseline bare INSERT txn {base:8.1f} /s   ratio {s['rate'] / base:.2f}"
            )
            print(f"   callback duplicates over the whole run: {callback.duplicates}")
        finally:
            if gateway is not None:
                gateway.stop()
            if worker is not None:
                worker.stop()
            callback.httpd.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
