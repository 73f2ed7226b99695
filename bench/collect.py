"""Queue modes: bursts of messages answered in ``followup`` mode (a turn each) and in ``collect`` mode.

    python -m bench.collect [--conversations 200] [--burst 5] [--delay-ms 200] [--processes 2]
                            [--threads 8] [--senders 8] [--pace 0] [--timeout 600]

Issue 14's benchmark. Runs in a fresh Postgres database and RabbitMQ vhost of its own (dropped at
the end), with a fake OpenAI-compatible model in this process that answers every request after
``--delay-ms`` (``tests.support.fake_model``, as bench.turn: the agent turn path is the real one,
with its HTTP call through the openai SDK) and a fake webhook receiver for the replies.

For each mode, baseline (``followup``) first, then ``collect``: a fresh ``zenthor worker`` (real
Dramatiq processes, ``-p``/``-t``, ``QUEUE_MODE`` set to the mode), a small untimed warm-up, then
``--senders`` threads each take conversations in turn and accept that conversation's ``--burst``
messages back to back through :func:`zenthor.ingress.accept` on the webhook channel, as a real
inbound is accepted (dedupe key, contact, message, job, the dispatch nudge after commit). The
worker runs all the while, so a conversation's first turn may already be running when the rest of
its burst arrives: then collect gives it a second turn for the rest. By default the bursts come
as fast as the senders accept them (the workers fall behind, so most bursts wait whole);
``--pace N`` starts N conversations' bursts a second instead (below the workers' capacity, most
conversations' first message is claimed alone, and the rest of the burst makes a second turn).

Per mode: model calls (requests the fake model received), turns run (jobs done that were not
merged into another), jobs answered, replies written (outbox rows) and delivered (webhook
callbacks), wall time (the first job's ``created_at`` to the last ``finished_at``, both Postgres's
clock), turns/s and messages answered/s, and how many turns each conversation got. Then the
ratios collect / followup.

Checks (exit 1 when one fails, with the offending rows printed): every message accepted; every
message has exactly one job and it is ``done``; no job left pending, processing or failed; in
followup no job is merged; in collect every merged job points at a done head of its own
conversation with a smaller id; each turn wrote a reply, answering the newest message it read
(``in_reply_to``), and every user message belongs to the job whose turn answered it; every
conversation got at least one reply, and every reply was delivered once; the model saw, in the
conversation's last call, all of its burst's messages in order.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.scratch import Scratch

SECRET = "whsec_YmVuY2gtc2VjcmV0LW9mLXRoZS1jb2xsZWN0LWJlbmNobWFyaw=="
ACCOUNT = "acct"
MODES = ("followup", "collect")
scratch = Scratch(
    "collect",
    rabbitmq=True,
    env={
        "AI_MODEL": "bench-model",
        "AI_API_KEY": "bench",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_DEFAULT_ACCOUNT": ACCOUNT,
        "QUEUE_DEBOUNCE_MS": "0",  # collect alone: no debounce holds a burst back
    },
)
# A message's text is its marker: <tag>-c<conversation>-m<index in the burst>.
MARKER = re.compile(r"\b([a-z]+)-c(\d+)-m(\d+)\b")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker closing an idle keep-alive connection resets it: not an error of the bench.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Callback:
    """The fake webhook receiver: counts each reply (by outbound id) and its duplicates, by tag."""

    def __init__(self) -> None:
        self.received: dict[int, str] = {}  # outbound_id -> text
        self.duplicates = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # see tests.support.fake_model: Nagle adds 40 ms a call

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with outer.lock:
                    if body["outbound_id"] in outer.received:
                        outer.duplicates += 1
                    outer.received[body["outbound_id"]] = body["text"]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cb"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def delivered(self, outbound_ids: set[int]) -> int:
        """How many of ``outbound_ids`` were received."""
        with self.lock:
            return len(outbound_ids & self.received.keys())


@dataclass
class ModeResult:
    """What one mode's timed run did, and what its checks found."""

    mode: str
    messages: int
    accept_s: float = 0.0
    accept_statuses: Counter[str] = field(default_factory=Counter)
    model_calls: int = 0
    turns: int = 0
    jobs_done: int = 0
    merged: int = 0
    replies: int = 0
    delivered: int = 0
    wall_s: float = 0.0
    turns_per_conversation: Counter[int] = field(default_factory=Counter)
    messages_per_turn: Counter[int] = field(default_factory=Counter)
    # Per conversation: its burst's last message accepted -> the reply answering it written (ms).
    last_to_reply_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.wall_s if self.wall_s else 0.0

    @property
    def answered_per_s(self) -> float:
        return self.jobs_done / self.wall_s if self.wall_s else 0.0


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def send_bursts(
    tag: str, conversations: int, burst: int, senders: int, pace: float = 0.0
) -> tuple[float, Counter[str]]:
    """Accept ``burst`` messages back to back for each of ``conversations`` chats, ``senders``
    chats at a time (with ``pace``, chat ``i``'s burst starts no earlier than ``i / pace`` s
    after the first); returns the seconds it took and the accept() statuses."""
    from zenthor.actors.publish import publish_dispatch
    from zenthor.db import database
    from zenthor.ingress import InboundMessage, accept

    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def one(conversation: int) -> None:
        chat = f"{tag}-c{conversation}"
        got = []
        if pace:
            wait = started + conversation / pace - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        try:
            for index in range(burst):
                marker = f"{chat}-m{index}"
                message = InboundMessage(
                    channel="webhook",
                    account_id=ACCOUNT,
                    chat_id=chat,
                    sender_id=chat,
                    provider_message_id=marker,
                    text=marker,
                )
                got.append(accept(message, publish=publish_dispatch).status)
        finally:
            database.close()  # give the pooled connection back, as the gateway does
        with lock:
            statuses.update(got)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=senders) as pool:
        list(pool.map(one, range(conversations)))
    return time.perf_counter() - started, statuses


def _scalar(sql: str, params: tuple = ()) -> Any:
    from zenthor.db import execute

    return execute(sql, params)[0][0]


_RUN_JOBS = """
    FROM agent_job AS j JOIN conversation AS c ON c.id = j.conversation_id
   WHERE c.channel = 'webhook' AND c.chat_id LIKE %s"""


def wait_finished(tag: str, expected: int, timeout: float) -> bool:
    """Poll until ``expected`` jobs of the run exist and none is pending or processing."""
    from zenthor.db import database

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            total, open_jobs = (
                _scalar(f"SELECT count(*) {_RUN_JOBS}", (f"{tag}-%",)),
                _scalar(
                    f"SELECT count(*) {_RUN_JOBS} AND j.status IN ('pending', 'processing')", (f"{tag}-%",)
                ),
            )
            if total >= expected and open_jobs == 0:
                return True
            time.sleep(0.1)
        return False
    finally:
        database.close()


def wait_delivered(callback: Callback, tag: str, timeout: float) -> tuple[set[int], int]:
    """Poll until every outbox row of the run was received; (the rows' ids, how many arrived)."""
    from zenthor.db import database, execute

    like = (f"{tag}-%",)
    deadline = time.monotonic() + timeout
    try:
        ids = set()
        while True:
            ids = {
                row[0]
                for row in execute(
                    "SELECT o.id FROM outbound_message AS o JOIN conversation AS c ON c.id = o.conversation_id"
                    " WHERE c.channel = 'webhook' AND c.chat_id LIKE %s",
                    like,
                )
            }
            if callback.delivered(ids) >= len(ids) or time.monotonic() > deadline:
                return ids, callback.delivered(ids)
            time.sleep(0.1)
    finally:
        database.close()


def model_calls(requests: list[dict], tag: str) -> tuple[int, dict[int, list[tuple[int, ...]]]]:
    """The fake model's requests of this run (by the marker of their last user message): how many,
    and for each conversation the burst indexes of the user messages each call carried, in order."""
    calls = 0
    seen: dict[int, list[tuple[int, ...]]] = {}
    for body in requests:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        markers = [MARKER.search(json.dumps(m.get("content"))) for m in users]
        markers = [m for m in markers if m and m.group(1) == tag]
        if not markers:
            continue
        calls += 1
        conversation = int(markers[-1].group(2))
        seen.setdefault(conversation, []).append(tuple(int(m.group(3)) for m in markers))
    return calls, seen


def measure(tag: str, result: ModeResult, conversations: int, burst: int) -> None:
    """Fill ``result`` from the database (the run's jobs, messages and replies) and check it."""
    from zenthor.db import database, execute

    like = (f"{tag}-%",)
    fail = result.failures
    try:
        jobs = execute(
            "SELECT j.id, j.conversation_id, j.message_id, j.status, j.merged_into, j.attempts,"
            "       j.error_reason, j.lease_token, m.job_id, m.content"
            "  FROM agent_job AS j JOIN conversation AS c ON c.id = j.conversation_id"
            "  LEFT JOIN message AS m ON m.id = j.message_id"
            " WHERE c.channel = 'webhook' AND c.chat_id LIKE %s ORDER BY j.id",
            like,
        )
        by_id = {row[0]: row for row in jobs}
        result.jobs_done = sum(1 for row in jobs if row[3] == "done")
        heads = [row for row in jobs if row[3] == "done" and row[4] is None]
        result.turns = len(heads)
        result.merged = sum(1 for row in jobs if row[4] is not None)
        (span,) = execute(
            f"SELECT extract(epoch FROM max(j.finished_at) - min(j.created_at)) {_RUN_JOBS}", like
        )[0]
        result.wall_s = float(span or 0.0)

        if len(jobs) != result.messages:
            fail.append(f"{len(jobs)} jobs for {result.messages} messages")
        if len({row[2] for row in jobs}) != len(jobs):
            fail.append("a message has more than one job")
        not_done = [row for row in jobs if row[3] != "done"]
        for row in not_done[:20]:
            fail.append(
                f"job {row[0]} (conversation {row[1]}, message {row[2]} {row[9]!r}) is {row[3]}:"
                f" merged_into {row[4]}, attempts {row[5]}, error {row[6]}, token {row[7]}"
            )
        if len(not_done) > 20:
            fail.append(f"... {len(not_done) - 20} more jobs not done")
        if result.mode == "followup" and result.merged:
            fail.append(f"{result.merged} jobs merged in followup mode")
        batches: dict[int, list[tuple]] = {row[0]: [row] for row in heads}
        for row in jobs:
            if row[4] is None:
                continue
            head = by_id.get(row[4])
            if (
                head is None
                or head[1] != row[1]
                or head[0] >= row[0]
                or head[3] != "done"
                or head[4] is not None
            ):
                fail.append(f"job {row[0]} merged_into {row[4]}, which is not a done head before it: {head}")
            else:
                batches[head[0]].append(row)
        # Every user message belongs to the job that answered it (the completion moves them).
        for row in jobs:
            answered_by = row[4] if row[4] is not None else row[0]
            if row[3] == "done" and row[8] != answered_by:
                fail.append(
                    f"message {row[2]} of job {row[0]} has job_id {row[8]}, answered by {answered_by}"
                )
        result.messages_per_turn = Counter(len(batch) for batch in batches.values())
        per_conversation = Counter(row[1] for row in heads)
        result.turns_per_conversation = Counter(per_conversation.values())

        replies = execute(
            "SELECT o.job_id, o.in_reply_to, o.conversation_id FROM outbound_message AS o"
            " JOIN conversation AS c ON c.id = o.conversation_id"
            " WHERE c.channel = 'webhook' AND c.chat_id LIKE %s",
            like,
        )
        result.replies = len(replies)
        reply_of = Counter(row[0] for row in replies)
        for head_id in batches:
            if reply_of[head_id] != 1:
                fail.append(f"turn of job {head_id} wrote {reply_of[head_id]} replies")
        for job_id, in_reply_to, _ in replies:
            batch = batches.get(job_id)
            if batch is None:
                fail.append(f"a reply of job {job_id}, which is not a turn of the run")
            elif in_reply_to != max(row[2] for row in batch):
                newest = max(row[2] for row in batch)
                fail.append(
                    f"reply of job {job_id} answers message {in_reply_to}, the newest it read is {newest}"
                )
        answered_conversations = {row[2] for row in replies}
        all_conversations = _scalar(
            "SELECT count(*) FROM conversation WHERE channel = 'webhook' AND chat_id LIKE %s", like
        )
        if all_conversations != conversations:
            fail.append(f"{all_conversations} conversations, expected {conversations}")
        if len(answered_conversations) != all_conversations:
            fail.append(f"{all_conversations - len(answered_conversations)} conversations got no reply")
        result.last_to_reply_ms = [
            float(row[0])
            for row in execute(
                "SELECT extract(epoch FROM o.created_at - m.created_at) * 1000"
                "  FROM conversation AS c"
                "  JOIN LATERAL (SELECT max(u.id) AS id FROM message AS u"
                "                 WHERE u.conversation_id = c.id AND u.role = 'user') AS last ON true"
                "  JOIN message AS m ON m.id = last.id"
                "  JOIN outbound_message AS o ON o.in_reply_to = m.id"
                " WHERE c.channel = 'webhook' AND c.chat_id LIKE %s",
                like,
            )
        ]
        if len(result.last_to_reply_ms) != all_conversations:
            fail.append(
                f"{all_conversations - len(result.last_to_reply_ms)} conversations' last message got no reply"
            )
    finally:
        database.close()


def run_mode(
    mode: str, args: argparse.Namespace, model: Any, callback: Callback, env: dict[str, str]
) -> ModeResult:
    """One mode: a fresh worker in that mode, an untimed warm-up, then the timed bursts."""
    from tests.support.workers import WorkerProcess

    tag = mode
    result = ModeResult(mode, args.conversations * args.burst)
    worker = WorkerProcess(
        f"bench-collect-{mode}",
        threads=args.threads,
        processes=args.processes,
        env={**env, "QUEUE_MODE": mode, "QUEUE_MODE_WEBHOOK": mode},
    )
    keep_log = False
    try:
        warm = f"warm{mode}"
        send_bursts(warm, args.processes * args.threads, args.burst, args.senders)
        if not wait_finished(warm, args.processes * args.threads * args.burst, 120):
            result.failures.append("the warm-up did not finish in 120 s")
            keep_log = True
            return result
        first_request = len(model.requests)

        result.accept_s, result.accept_statuses = send_bursts(
            tag, args.conversations, args.burst, args.senders, args.pace
        )
        if result.accept_statuses != Counter({"accepted": result.messages}):
            result.failures.append(f"accept() answered {dict(result.accept_statuses)}")
        if not wait_finished(tag, result.messages, args.timeout):
            result.failures.append(f"jobs still open after {args.timeout} s")
        outbound_ids, result.delivered = wait_delivered(callback, tag, 60)
        if result.delivered != len(outbound_ids):
            result.failures.append(
                f"{len(outbound_ids) - result.delivered} replies not delivered within 60 s"
            )
        result.model_calls, seen = model_calls(model.requests[first_request:], tag)
        measure(tag, result, args.conversations, args.burst)
        if result.model_calls != result.turns:
            result.failures.append(f"{result.model_calls} model calls for {result.turns} turns")
        everything = tuple(range(args.burst))
        for conversation in range(args.conversations):
            calls = seen.get(conversation)
            if not calls or calls[-1] != everything:
                result.failures.append(
                    f"conversation {tag}-c{conversation}: its last model call carried user messages"
                    f" {calls[-1] if calls else None}, expected {everything}"
                )
        keep_log = bool(result.failures)
        return result
    finally:
        worker.stop()
        errors = [e for e in worker.events() if str(e.get("level")).upper() in ("ERROR", "CRITICAL")]
        if errors:
            print(f"  {mode}: the worker logged {len(errors)} errors, e.g. {errors[0]}")
            keep_log = True
        if keep_log:
            print(f"  {mode}: worker log kept at {worker.log_path}")
        else:
            Path(worker.log_path).unlink(missing_ok=True)


def show(results: dict[str, ModeResult], args: argparse.Namespace) -> None:
    """The table, the ratios and the checks."""
    print(
        f"{'mode':<9} {'messages':>8} {'accept s':>8} {'model calls':>11} {'turns':>6} {'answered':>8}"
        f" {'merged':>6} {'replies':>7} {'delivered':>9} {'wall s':>7} {'turns/s':>8} {'msgs/s':>7}"
    )
    for r in results.values():
        print(
            f"{r.mode:<9} {r.messages:>8} {r.accept_s:>8.2f} {r.model_calls:>11} {r.turns:>6} {r.jobs_done:>8}"
            f" {r.merged:>6} {r.replies:>7} {r.delivered:>9} {r.wall_s:>7.2f} {r.turns_per_s:>8.1f}"
            f" {r.answered_per_s:>7.1f}"
        )
    for r in results.values():
        turns = ", ".join(
            f"{n} turn{'s' if n > 1 else ''}: {c}" for n, c in sorted(r.turns_per_conversation.items())
        )
        sizes = ", ".join(f"{n} msg: {c}" for n, c in sorted(r.messages_per_turn.items()))
        print(f"{r.mode:<9} conversations by turns they got: {turns}")
        print(f"{'':<9} turns by messages they answered:  {sizes}")
    for r in results.values():
        if r.last_to_reply_ms:
            print(
                f"{r.mode:<9} burst's last message accepted -> its reply written:"
                f" p50 {percentile(r.last_to_reply_ms, 50):.0f} ms  p99 {percentile(r.last_to_reply_ms, 99):.0f} ms"
            )
    base, ours = results.get("followup"), results.get("collect")
    if base and ours and ours.model_calls and base.wall_s and ours.wall_s:
        print(
            f"ratio collect/followup: model calls {ours.model_calls / base.model_calls:.3f}"
            f" ({base.model_calls / ours.model_calls:.2f}x fewer; expected about {args.burst}x when a whole burst"
            f" waits), replies {ours.replies / max(base.replies, 1):.3f},"
            f" messages answered/s {ours.answered_per_s / base.answered_per_s:.2f}x,"
            f" wall {ours.wall_s / base.wall_s:.2f}"
        )
    ideal = args.processes * args.threads / (args.delay_ms / 1000)
    print(f"ideal model-bound turn rate for -p {args.processes} -t {args.threads}: {ideal:.0f} turns/s")
    for r in results.values():
        print(f"checks {r.mode}: " + ("ok" if not r.failures else f"{len(r.failures)} FAILED"))
        for failure in r.failures[:40]:
            print(f"    {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument(
        "--burst", type=int, default=5, help="messages per conversation, accepted back to back"
    )
    parser.add_argument("--delay-ms", type=int, default=200, help="the fake model's answer time")
    parser.add_argument("--processes", "-p", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", "-t", type=int, default=8, help="threads per worker process")
    parser.add_argument(
        "--senders", type=int, default=8, help="threads accepting bursts, one chat each at a time"
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="conversations whose burst starts per second (0: as fast as the senders accept)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds a mode may take to finish its jobs"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="which modes to run, in order")
    parser.add_argument(
        "--debounce-ms",
        type=int,
        default=0,
        help="QUEUE_DEBOUNCE_MS for the accepts (0: off): a burst waits that long a quiet",
    )
    args = parser.parse_args()
    # Before the settings are first read: accept() runs in this process and applies it.
    os.environ["QUEUE_DEBOUNCE_MS"] = str(args.debounce_ms)

    from tests.support.fake_model import FakeModel

    callback = Callback()
    started = time.monotonic()
    results: dict[str, ModeResult] = {}
    try:
        with FakeModel(delay_s=args.delay_ms / 1000.0) as model:
            # Before the settings are first read; the worker processes inherit them too.
            os.environ["AI_BASE_URL"] = model.base_url
            os.environ["WEBHOOK_CALLBACK_URL"] = callback.url
            env = {
                "LOG_LEVEL": "WARNING",
                "AI_BASE_URL": model.base_url,
                "WEBHOOK_CALLBACK_URL": callback.url,
            }
            with scratch.services():
                from zenthor.settings import get_settings

                print(
                    f"bench.collect: {args.conversations} conversations x {args.burst} messages per mode,"
                    f" fake model {args.delay_ms} ms, worker -p {args.processes} -t {args.threads},"
                    f" {args.senders} senders, {f'{args.pace:g} bursts/s' if args.pace else 'unpaced'},"
                    f" QUEUE_COLLECT_MAX {get_settings().QUEUE_COLLECT_MAX},"
                    f" QUEUE_DEBOUNCE_MS {get_settings().QUEUE_DEBOUNCE_MS}, {os.cpu_count()} cores,"
                    f" load average {os.getloadavg()[0]:.2f}"
                )
                for mode in args.modes.split(","):
                    results[mode] = run_mode(mode, args, model, callback, env)
    finally:
        callback.httpd.shutdown()
        callback.httpd.server_close()
    show(results, args)
    print(
        f"callback duplicates over the whole run: {callback.duplicates}; took {time.monotonic() - started:.0f} s"
    )
    failed = any(r.failures for r in results.values()) or callback.duplicates
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
