"""End to end with real processes: ``zenthor gateway`` and ``dramatiq zenthor.actors`` workers,
a fake callback server for the replies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.ingress.helpers import (
    TEST_SECRET,
    CallbackServer,
    GatewayProcess,
    count,
    inbound,
    sign_headers,
    signed_post,
    verify_callback,
)
from tests.support.workers import DbThread, WorkerProcess, wait_for
from zenthor.ingress import accept

SECRET = TEST_SECRET


@pytest.fixture
def stack(settings_env):
    callback = CallbackServer()
    env = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_CALLBACK_URL": callback.url,
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "OUTBOUND_RETRY_BASE_MS": "100",
    }
    settings_env(**env)
    worker = WorkerProcess("e2e-worker", threads=8, processes=2, env={**env, "LOG_LEVEL": "WARNING"})
    gateway = GatewayProcess(env)
    yield gateway, worker, callback
    gateway.stop()
    worker.stop()
    callback.stop()


def test_the_same_inbound_from_threads_and_processes_at_once_makes_one_reply(stack, tmp_path):
    gateway, _worker, callback = stack
    body = json.dumps({"message_id": "same", "chat_id": "c", "sender_id": "s", "text": "only once"}).encode()
    body_file = tmp_path / "body.json"
    body_file.write_bytes(body)
    url = f"{gateway.url}/v1/webhook/acct/messages"
    start_at = time.time() + 1.5
    # 2 processes x 3 threads over HTTP through the gateway ...
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ingress.post_many",
                url,
                str(body_file),
                json.dumps(sign_headers(body, SECRET)),
                "3",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # ... and 4 threads calling accept() directly in this process, all at the same moment.
    statuses: list[str] = []
    message = inbound("only once", message_id="same", chat_id="c", sender_id="s")

    def direct() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        statuses.append(accept(message).status)

    threads = [DbThread(target=direct) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [int(line) for proc in procs for line in proc.communicate(timeout=60)[0].split()]
    assert len(codes) == 6 and set(codes) <= {200, 202}
    assert codes.count(202) + statuses.count("accepted") == 1
    assert codes.count(200) + statuses.count("duplicate") == 9
    wait_for(lambda: len(callback.ok_records()) >= 1, 30, message="the reply")
    time.sleep(1.0)  # give a wrong second reply the time to show up
    assert len(callback.ok_records()) == 1
    assert count("message", "role = 'user'") == 1 and count("agent_job") == 1
    assert count("outbound_message") == 1


def test_500_webhook_messages_over_50_chats_get_one_reply_each_in_order(stack):
    gateway, worker, callback = stack
    chats, per_chat = 50, 10
    url = f"{gateway.url}/v1/webhook/acct/messages"

    def send_chat_messages(chat: int, client: httpx.Client) -> None:
        # A chat's messages are sent one after another (a person types in order).
        for n in range(per_chat):
            body = json.dumps(
                {
                    "message_id": f"c{chat}-n{n}",
                    "chat_id": f"chat-{chat}",
                    "sender_id": f"u{chat}",
                    "text": f"c{chat}-n{n}",
                }
            ).encode()
            response = signed_post(client, url, body, SECRET)
            assert response.status_code == 202, response.text

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda chat: send_chat_messages(chat, client), range(chats)))
    wait_for(
        lambda: len(callback.ok_records()) >= chats * per_chat,
        180,
        interval=0.5,
        message=f"{chats * per_chat} replies (got {len(callback.ok_records())})",
    )
    time.sleep(1.0)
    replies = callback.ok_records()
    assert len(replies) == chats * per_chat
    by_chat: dict[str, list[int]] = defaultdict(list)
    for record in replies:
        body = record.json
        match = re.search(r"c(\d+)-n(\d+)$", body["text"])
        assert match, body["text"]
        assert body["chat_id"] == f"chat-{match.group(1)}"
        by_chat[body["chat_id"]].append(int(match.group(2)))
    assert len(by_chat) == chats
    for chat_id, numbers in by_chat.items():
        assert numbers == list(range(per_chat)), chat_id
    assert len({r.headers["Idempotency-Key"] for r in replies}) == chats * per_chat
    # Each callback verifies with the receiver's copy of the secret; its webhook-id is its key.
    assert all(verify_callback(r, SECRET) == r.headers["Idempotency-Key"] for r in replies)
    assert count("outbound_message", "status = 'sent'") == chats * per_chat
    assert worker.proc.poll() is None
