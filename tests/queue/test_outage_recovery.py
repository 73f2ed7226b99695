"""Outage recovery (issue 10, item 10): RabbitMQ or Postgres cut in the middle of traffic.

Real processes: a ``zenthor gateway`` accepts webhook messages, a ``zenthor worker`` (Dramatiq)
answers them with the fake model and delivers to a fake callback server. In the middle of
the traffic the test cuts every connection of its own vhost (and keeps the vhost refusing new ones
for a moment, as a restarting broker does) or of its own database. Every message must still be
answered once and in order per chat, and the backlog must start moving within seconds of the
service being back: not after the 30 s re-publish grace (broker) or the 60 s lease TTL (database).

The production defaults for the grace, the sweep re-check and the lease are kept on purpose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from peewee import InterfaceError, OperationalError

from tests.conftest import TEST_DB, TEST_VHOST
from tests.ingress.helpers import CallbackServer, GatewayProcess, count, signed_post
from tests.support.factories import make_conversation, make_job
from tests.support.fake_model import FakeModel
from tests.support.workers import DbThread, WorkerProcess, log_events, wait_for
from zenthor.db import database, execute
from zenthor.models import AgentJob
from zenthor.queue import ClaimRefused, claim, complete, requeue_stale
from zenthor.queue.jobs import release_after_lost_session

SECRET = "outage-secret"
CHATS, PER_CHAT = 30, 8
TOTAL = CHATS * PER_CHAT
# Well below DISPATCH_REPUBLISH_GRACE_MS (30 s) and AGENT_JOB_LOCK_MS (60 s); the goal is 5 s, the
# rest is headroom for a loaded 2-core CI box.
BOUND_S = 10.0
# Broker outage: the owed nudges must be re-sent within this of the broker being back, and every
# owed job answered within the second bound (the sweep's re-publish grace, 30 s, is what it was).
RESEND_BOUND_S = 5.0
ALL_ANSWERED_S = 25.0


def logged_at(record: dict) -> float:
    """A JSON log line's ``ts`` (local time, ``%Y-%m-%d %H:%M:%S,%f``) as a Unix time."""
    return datetime.strptime(record["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


pytestmark = pytest.mark.timeout(120)


def rabbitmqctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    result = subprocess.run([ctl, "--silent", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or result.stdout
    return result.stdout


def open_vhost_connections() -> list[str]:
    """The vhost's connections RabbitMQ has not closed yet (a closed one stays listed as
    ``closed`` until its client notices)."""
    # list_connections lists every vhost's connections (other test runs share the server).
    rows = [line.split("\t") for line in rabbitmqctl("list_connections", "vhost", "state").splitlines()]
    return [row[1] for row in rows if row[0] == TEST_VHOST and row[1] not in ("closed", "closing")]


def cut_the_vhost() -> None:
    """Close every connection of the vhost and wait until RabbitMQ did (the command only asks).

    A connection still in its handshake when the command ran is not closed by it: ask again.
    """

    def all_closed() -> bool:
        if not open_vhost_connections():
            return True
        rabbitmqctl("close_all_connections", "-p", TEST_VHOST, "test")
        return False

    rabbitmqctl("close_all_connections", "-p", TEST_VHOST, "test")
    wait_for(all_closed, 20, interval=0.2, message="every connection of the vhost closed")


@pytest.fixture
def stack(settings_env):
    callback = CallbackServer()
    model = FakeModel(delay_s=0.15).start()
    env = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_CALLBACK_URL": callback.url,
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "OUTBOUND_RETRY_BASE_MS": "100",
        "AI_BASE_URL": model.base_url,
        "AI_API_KEY": "test-key",
        "AI_MODEL": "fake-model",
        "AI_TIMEOUT_S": "5",
        "LOG_LEVEL": "INFO",
    }
    settings_env(**env)
    worker = WorkerProcess("outage-worker", threads=8, processes=1, env=env)
    try:
        gateway = GatewayProcess(env)
        try:
            yield gateway, worker, callback
        finally:
            # Never leave the vhost refusing connections, whatever happened in the test.
            rabbitmqctl("set_vhost_limits", "-p", TEST_VHOST, '{"max-connections": -1}')
            gateway.stop()
    finally:
        worker.stop()
        callback.stop()
        model.stop()


class Traffic:
    """One sender thread per chat, each posting its messages one after another (a person types in
    order); a 503 (database away) is retried as a provider would, with the same message id."""

    def __init__(
        self, gateway: GatewayProcess, pace_s: float, gates: dict[int, threading.Event] | None = None
    ) -> None:
        self.url = f"{gateway.url}/v1/webhook/acct/messages"
        self.pace_s = pace_s
        self.gates = gates or {}  # message n of every chat waits for gates[n]
        self.unavailable = 0
        self._mu = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=CHATS)
        self._futures = [self._pool.submit(self._chat, chat) for chat in range(CHATS)]
        _running_traffic.append(self)

    def _chat(self, chat: int) -> None:
        with httpx.Client(timeout=30) as client:
            for n in range(PER_CHAT):
                if n in self.gates:
                    assert self.gates[n].wait(60), f"gate {n} never opened"
                body = json.dumps(
                    {
                        "message_id": f"c{chat}-n{n}",
                        "chat_id": f"chat-{chat}",
                        "sender_id": f"u{chat}",
                        "text": f"c{chat}-n{n}",
                    }
                ).encode()
                deadline = time.monotonic() + 30
                while True:
                    response = signed_post(client, self.url, body, SECRET)
                    if response.status_code in (200, 202):
                        break
                    assert response.status_code == 503 and time.monotonic() < deadline, response.text
                    with self._mu:
                        self.unavailable += 1
                    time.sleep(0.1)
                time.sleep(self.pace_s)

    def join(self) -> None:
        for future in self._futures:
            future.result(timeout=60)
        self._pool.shutdown()

    def abandon(self) -> None:
        """After a failed test: open every gate so no sender thread waits, and stop posting."""
        for gate in self.gates.values():
            gate.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


_running_traffic: list[Traffic] = []


@pytest.fixture(autouse=True)
def _no_traffic_left_behind():
    yield
    while _running_traffic:
        _running_traffic.pop().abandon()


def accepted() -> int:
    return count("message", "role = 'user'")


def answered_jobs(job_ids: list[int]) -> int:
    return execute(
        "SELECT count(DISTINCT job_id) FROM outbound_message WHERE status = 'sent' AND job_id = ANY(%s)",
        (job_ids,),
    )[0][0]


def assert_every_message_answered_once_in_order(callback: CallbackServer) -> None:
    wait_for(
        lambda: len(callback.ok_records()) >= TOTAL,
        40,
        interval=0.2,
        message=f"{TOTAL} replies (got {len(callback.ok_records())})",
    )
    time.sleep(1.0)  # give a wrong second reply the time to show up
    replies = callback.ok_records()
    assert len({r.headers["Idempotency-Key"] for r in replies}) == TOTAL
    assert len(replies) == TOTAL, "a reply was posted twice"
    by_chat: dict[str, list[int]] = defaultdict(list)
    for record in replies:
        match = re.search(r"c(\d+)-n(\d+)$", record.json["text"])
        assert match, record.json["text"]
        assert record.json["chat_id"] == f"chat-{match.group(1)}"
        by_chat[record.json["chat_id"]].append(int(match.group(2)))
    assert len(by_chat) == CHATS
    for chat_id, numbers in by_chat.items():
        assert numbers == list(range(PER_CHAT)), chat_id
    assert count("agent_job") == TOTAL and count("agent_job", "status = 'done'") == TOTAL
    assert count("outbound_message", "status = 'sent'") == TOTAL


def test_a_broker_outage_in_the_middle_of_traffic_moves_the_backlog_within_seconds(stack):
    gateway, worker, callback = stack
    # Messages 0-2 of every chat go before the cut, 3-4 while the broker is away, 5-7 after.
    away, back = threading.Event(), threading.Event()
    traffic = Traffic(gateway, pace_s=0.2, gates={3: away, 5: back})
    wait_for(lambda: accepted() >= 2 * CHATS, 30, message="traffic under way")

    # The broker goes away: the vhost refuses new connections (a restarting RabbitMQ) and every
    # open one, the gateway's publishers and the worker's consumers included, is cut.
    rabbitmqctl("set_vhost_limits", "-p", TEST_VHOST, '{"max-connections": 0}')
    cut_at = time.monotonic()
    cut_the_vhost()

    def failed_publishes() -> list[int]:
        return [e["job_id"] for e in log_events(Path(gateway.log_path), "queue.publish.failed")]

    # Messages keep arriving while it is away: accepted, but their dispatch nudge cannot be sent.
    away.set()
    wait_for(
        lambda: accepted() >= 5 * CHATS, 30, message="the messages sent while the broker is away accepted"
    )
    rabbitmqctl("set_vhost_limits", "-p", TEST_VHOST, '{"max-connections": -1}')
    back_at, back_wall = time.monotonic(), time.time()
    back.set()
    owed = failed_publishes()

    # Some owed jobs move early without any fix: the worker nudges a chat's next job when it
    # completes one. The chats whose earlier jobs were all done before the cut wait for a re-send:
    # the time until *every* owed job is answered is what the fix is about.
    wait_for(
        lambda: answered_jobs(owed) >= 1, ALL_ANSWERED_S, interval=0.05, message="a first owed job answered"
    )
    first_s = time.monotonic() - back_at
    wait_for(
        lambda: answered_jobs(owed) >= len(owed),
        ALL_ANSWERED_S,
        interval=0.05,
        message="every owed job answered",
    )
    all_s = time.monotonic() - back_at
    traffic.join()
    print(
        f"\nbroker away {back_at - cut_at:.1f}s, {len(owed)} dispatch nudges failed in the gateway; "
        f"after it came back: first owed job answered in {first_s:.1f}s, all {len(owed)} in {all_s:.1f}s "
        f"({all_s + back_at - cut_at:.1f}s after the cut)"
    )
    assert_every_message_answered_once_in_order(callback)
    republished = [e for e in log_events(Path(gateway.log_path), "queue.publish.owed_republished")]
    assert sum(e["jobs"] for e in republished) >= len(set(owed))
    # The mechanism: the gateway re-sent what it owed within seconds of the broker taking
    # connections again (the "starts moving within 5 s"); answering all of them then
    # depends on how loaded this machine is, and without the fix waits for the 30 s grace.
    first_resend_s = min(logged_at(e) for e in republished) - back_wall
    print(f"first re-send {first_resend_s:.1f}s after the broker came back")
    assert first_resend_s < RESEND_BOUND_S, (
        f"owed nudges re-sent {first_resend_s:.1f}s after the broker was back"
    )
    assert all_s < ALL_ANSWERED_S
    assert worker.proc.poll() is None


def test_a_database_cut_in_the_middle_of_traffic_resumes_the_jobs_in_flight_within_seconds(stack):
    gateway, worker, callback = stack
    traffic = Traffic(gateway, pace_s=0.2)
    wait_for(lambda: accepted() >= TOTAL // 3, 30, message="a third of the traffic accepted")
    wait_for(
        lambda: count("agent_job", "status = 'processing'") >= 4, 10, interval=0.01, message="turns in flight"
    )

    in_flight = [row[0] for row in execute("SELECT id FROM agent_job WHERE status = 'processing'")]
    terminated = execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (TEST_DB,),
    )[0][0]
    cut_at = time.monotonic()
    database.obj.close_idle()  # this process's own idle pooled connections died too

    wait_for(
        lambda: answered_jobs(in_flight) >= len(in_flight),
        BOUND_S + 10,
        interval=0.05,
        message=f"the {len(in_flight)} jobs in flight at the cut answered",
    )
    in_flight_s = time.monotonic() - cut_at
    traffic.join()
    print(
        f"\ndatabase cut ({terminated} sessions) with {len(in_flight)} turns in flight: all answered "
        f"{in_flight_s:.1f}s after the cut; the gateway answered 503 {traffic.unavailable} time(s)"
    )
    assert in_flight_s < BOUND_S, f"the turns in flight at the cut waited {in_flight_s:.1f}s"
    assert_every_message_answered_once_in_order(callback)
    assert worker.proc.poll() is None


def terminate_from_another_session(pid: int) -> None:
    """pg_terminate_backend(pid) from another thread's connection; returns once the session is gone."""

    def run() -> None:
        execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(
            lambda: not execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
            10,
            message="session gone",
        )

    thread = DbThread(target=run)
    thread.start()
    thread.join()


def test_a_completion_whose_session_was_cut_is_written_on_a_fresh_connection():
    """The unit under the database test: the thread's pooled session dies during the turn; the
    fenced completion is retried on a new connection instead of leaving the lease to expire."""
    conversation = make_conversation("cut")
    job_id = make_job(conversation, "hello")
    lease = claim(job_id, "worker-cut")
    (pid,) = execute("SELECT pg_backend_pid()")[0]
    terminate_from_another_session(pid)

    complete(lease)

    assert AgentJob.get_by_id(job_id).status == "done"
    assert execute("SELECT pg_backend_pid()")[0][0] != pid


def test_a_turn_whose_session_was_cut_gives_its_job_back_at_once():
    """What dispatch does when a turn's own read finds the session gone: release now (no attempt
    counted) instead of keeping the lease until it expires; a live session keeps the lease."""
    conversation = make_conversation("cut-turn")
    job_id = make_job(conversation, "hello")
    lease = claim(job_id, "worker-cut")
    assert release_after_lost_session(lease) is False  # the session is alive: nothing changes
    (pid,) = execute("SELECT pg_backend_pid()")[0]
    terminate_from_another_session(pid)
    with pytest.raises((OperationalError, InterfaceError)):  # the turn's read on the dead session
        execute("SELECT 1")

    assert release_after_lost_session(lease) is True

    row = AgentJob.get_by_id(job_id)
    assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)


def test_a_turn_that_cuts_its_session_every_time_is_not_released_for_free_again():
    """A turn whose own work kills its session (a proxy's timeout shorter than a model call) gets
    one free release; the next time its lease is left to expire, so the sweep counts an attempt and
    the job fails after AGENT_JOB_MAX_ATTEMPTS instead of looping for free."""
    conversation = make_conversation("cut-twice")
    job_id = make_job(conversation, "hello")
    for expected in (True, False):
        lease = claim(job_id, "worker-cut")
        assert not isinstance(lease, ClaimRefused), lease
        (pid,) = execute("SELECT pg_backend_pid()")[0]
        terminate_from_another_session(pid)
        with pytest.raises((OperationalError, InterfaceError)):
            execute("SELECT 1")
        assert release_after_lost_session(lease) is expected
    row = AgentJob.get_by_id(job_id)
    assert (row.status, row.attempts, row.error_reason) == ("processing", 0, "session_lost")
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second' WHERE id = %s", (job_id,))
    (stale,) = requeue_stale()
    assert stale.job_id == job_id and AgentJob.get_by_id(job_id).attempts == 1
