"""The gateway's accept path (issue 13, item 5): one short transaction and one publish per request.

A request reads no account (the process caches them) and checks no connection out of the pool
(its database threads keep theirs), yet a cached account is never trusted on its own: the accept
transaction checks that the stored row is still the one read, so a removed, disabled or rotated
account, or a grace that ended, is refused from the very next request. ``GATEWAY_WORKERS`` runs
more uvicorn processes.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.ingress.helpers import (
    TEST_SECRET,
    GatewayProcess,
    ThreadedGateway,
    count,
    inbound,
    signed_post,
)
from zenthor.broker import broker
from zenthor.channels.webhook import account_store
from zenthor.channels.webhook.accounts import load_account
from zenthor.channels.webhook.gateway import create_app
from zenthor.db import database, execute, round_trips
from zenthor.ingress import accept
from zenthor.ingress.pipeline import PreconditionFailed

KEY = "test-zenthor-secret-key-0123456789"
CALLBACK = "http://127.0.0.1:9/replies"  # never called: no worker runs here


@pytest.fixture
def gateway(settings_env):
    """A gateway with one database thread (DATABASE_POOL_SIZE 2), so which connection serves a
    request is known; its test-process pool keeps the session's size."""
    settings_env(
        ZENTHOR_SECRET_KEY=KEY,
        WEBHOOK_SECRET=TEST_SECRET,
        WEBHOOK_CALLBACK_URL=CALLBACK,
        WEBHOOK_DEFAULT_ACCOUNT="acct",
        WEBHOOK_SENDER_RATE_PER_MIN="0",
        DATABASE_POOL_SIZE="2",
    )
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    with httpx.Client(base_url=running.url, timeout=10) as client:
        running.client = client
        yield running
    running.stop()


def message(n: int, sender: str = "u-1", chat: str = "chat-1") -> dict:
    return {"message_id": f"m-{n}", "chat_id": chat, "sender_id": sender, "text": f"hello {n}"}


def post(gateway, account: str, body: dict | bytes, secret: str):
    return signed_post(gateway.client, f"/v1/webhook/{account}/messages", body, secret)


def test_a_cached_account_is_refused_from_the_next_request_once_disabled_rotated_or_removed(gateway):
    secret = account_store.add_account("shop")
    assert post(gateway, "shop", message(1), secret).json() == {"status": "accepted"}  # now cached
    # Disabled by an operator (any change of the row): the very next message is ignored.
    execute("UPDATE webhook_account SET contact_policy = 'disabled' WHERE account_id = 'shop'")
    disabled = post(gateway, "shop", message(2), secret)
    assert (disabled.status_code, disabled.json()) == (202, {"status": "ignored"})
    execute("UPDATE webhook_account SET contact_policy = 'open' WHERE account_id = 'shop'")
    assert post(gateway, "shop", message(3), secret).json() == {"status": "accepted"}
    # Rotated without a grace: the old secret is refused at once, the new one accepted at once.
    new = account_store.rotate_secret("shop", keep_old_for=timedelta(0))
    refused = post(gateway, "shop", message(4), secret)
    assert refused.status_code == 401 and refused.json()["check"] == "no_matching_signature"
    assert post(gateway, "shop", message(5), new).json() == {"status": "accepted"}
    # Removed: a valid signature under the cached secret is 404, also with a body that the cached
    # copy alone would have answered 400 (the account is checked first, as without a cache).
    account_store.remove_account("shop")
    gone = post(gateway, "shop", message(6), new)
    assert gone.status_code == 404 and gone.json()["check"] == "unknown_account"
    assert post(gateway, "shop", message(7), new).status_code == 404
    assert count("message") == 3 and count("inbound_dedupe") == 4  # 1, 2 (ignored), 3, 5


def test_a_removed_account_whose_cached_copy_would_answer_400_is_404(gateway):
    secret = account_store.add_account("shop")
    assert post(gateway, "shop", message(1), secret).status_code == 202
    account_store.remove_account("shop")
    broken = post(gateway, "shop", b'{"message_id": ', secret)
    assert broken.status_code == 404 and broken.json()["check"] == "unknown_account"


def test_a_row_added_for_the_shortcut_account_wins_from_the_next_request(gateway):
    assert post(gateway, "acct", message(1), TEST_SECRET).status_code == 202  # the shortcut, cached
    new = account_store.add_account("acct")  # no carried secret: WEBHOOK_SECRET stops verifying
    refused = post(gateway, "acct", message(2), TEST_SECRET)
    assert refused.status_code == 401 and refused.json()["check"] == "no_matching_signature"
    assert post(gateway, "acct", message(3), new).status_code == 202


def test_the_precondition_refuses_a_copy_whose_grace_ended_or_whose_row_changed(settings_env):
    """What the gateway's cache relies on, on the real database: accept() writes nothing and
    raises PreconditionFailed when the cached copy is no longer the stored account."""
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    account_store.add_account("shop")
    account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))
    cached = load_account("shop")
    assert cached is not None and cached.live_until is not None and len(cached.account.secrets) == 2
    now = execute("SELECT now()")[0][0]
    ended = dataclasses.replace(cached, live_until=now - timedelta(seconds=1))  # the grace ran out
    with pytest.raises(PreconditionFailed):
        accept(inbound(account_id="shop"), publish=lambda _: True, precondition=ended.precondition())
    assert count("inbound_dedupe") == 0 and count("message") == 0 and count("contact") == 0
    result = accept(inbound(account_id="shop"), publish=lambda _: True, precondition=cached.precondition())
    assert result.status == "accepted"
    # Any change of the row (here only its updated_at) makes the copy stale, also for a duplicate.
    execute("UPDATE webhook_account SET updated_at = now() WHERE account_id = 'shop'")
    with pytest.raises(PreconditionFailed):
        accept(inbound(account_id="shop"), publish=lambda _: True, precondition=cached.precondition())
    # The shortcut account (no row) holds only while there is no row.
    shortcut = dataclasses.replace(cached, version=None)
    with pytest.raises(PreconditionFailed):
        accept(
            inbound(account_id="shop", message_id="m-2"),
            publish=lambda _: True,
            precondition=shortcut.precondition(),
        )
    assert count("message") == 1


def test_a_request_costs_no_round_trip_beyond_accepts_own(gateway):
    """No pool checkout (its liveness ping), no check-in and no account read per request: the
    gateway sends exactly what accept() sends when called directly."""
    assert post(gateway, "acct", message(0, chat="warm"), TEST_SECRET).status_code == 202
    execute("SELECT 1")  # this thread's own connection is open before counting
    round_trips.reset()
    round_trips.enabled = True
    try:
        for n in range(1, 11):
            assert post(gateway, "acct", message(n, chat=f"g-{n}"), TEST_SECRET).status_code == 202
        through_gateway = round_trips.round_trips
        round_trips.reset()
        for n in range(1, 11):
            direct = inbound(account_id="acct", message_id=f"d-{n}", chat_id=f"d-{n}", sender_id="u-1")
            assert accept(direct, publish=lambda _: True).status == "accepted"
        direct_calls = round_trips.round_trips
    finally:
        round_trips.enabled = False
        round_trips.reset()
    assert through_gateway == direct_calls, (through_gateway, direct_calls)


def test_a_session_terminated_while_idle_is_replaced_without_a_503(gateway):
    assert post(gateway, "acct", message(1), TEST_SECRET).status_code == 202
    others = execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    )
    assert others, "the gateway's thread keeps its connection between requests"
    execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", ([pid for (pid,) in others],))
    database.obj.close_idle()  # this process's own idle pooled connections died too
    response = post(gateway, "acct", message(2), TEST_SECRET)
    assert response.status_code == 202, response.text
    assert count("message") == 2


def test_zenthor_gateway_runs_gateway_workers_processes(settings_env):
    env = {
        "WEBHOOK_SECRET": TEST_SECRET,
        "WEBHOOK_CALLBACK_URL": CALLBACK,
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "WEBHOOK_SENDER_RATE_PER_MIN": "0",
        "GATEWAY_WORKERS": "2",
    }
    settings_env(**env)
    gateway = GatewayProcess(env)  # no --workers: the setting decides
    try:
        children = Path(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children").read_text().split()
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert sum(b"spawn_main" in command for command in commands) == 2, commands
        with httpx.Client(timeout=10) as client:
            for n in range(8):
                body = message(n, chat=f"w-{n}")
                response = signed_post(client, f"{gateway.url}/v1/webhook/acct/messages", body, TEST_SECRET)
                assert response.status_code == 202, response.text
    finally:
        gateway.stop()
    assert count("message") == 8


def test_a_bad_gateway_workers_is_refused_naming_it():
    result = subprocess.run(
        [sys.executable, "-m", "zenthor.cli", "gateway"],
        env={**os.environ, "GATEWAY_WORKERS": "0", "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "GATEWAY_WORKERS" in result.stderr, result.stderr
