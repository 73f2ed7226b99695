"""Webhook accounts (issue 12, slice 2): a secret per account, several at a time, encrypted at
rest; ``zenthor webhook`` manages them; the gateway verifies and the sender signs with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from tests.ingress.helpers import (
    TEST_SECRET,
    CallbackServer,
    ThreadedGateway,
    count,
    free_port,
    sign_headers,
    signed_post,
    verify_callback,
)
from tests.support.factories import make_conversation
from tests.support.workers import wait_for
from zenthor.broker import broker
from zenthor.channels.webhook import account_store
from zenthor.channels.webhook.gateway import create_app
from zenthor.channels.webhook.signing import SignatureError
from zenthor.db import database, execute

KEY = "test-zenthor-secret-key-0123456789"
CALLBACK = "http://127.0.0.1:9/replies"


def zenthor(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zenthor.cli", *args],
        env={**os.environ, "LOG_LEVEL": "WARNING", "ZENTHOR_SECRET_KEY": KEY, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def gateway(settings_env):
    settings_env(
        ZENTHOR_SECRET_KEY=KEY,
        WEBHOOK_SECRET=TEST_SECRET,
        WEBHOOK_CALLBACK_URL=CALLBACK,
        WEBHOOK_SENDER_RATE_PER_MIN="0",  # these tests post many messages of one sender
    )
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    with httpx.Client(base_url=running.url, timeout=10) as client:
        running.client = client
        yield running
    running.stop()


def message(n: int = 1, sender: str = "u-1") -> dict:
    return {"message_id": f"m-{n}", "chat_id": "chat-1", "sender_id": sender, "text": f"hello {n}"}


def test_add_account_prints_a_secret_once_stores_it_encrypted_and_list_never_shows_it(settings_env):
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    added = zenthor("webhook", "add-account", "shop", "--callback-url", "http://127.0.0.1:9/shop")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and len(secret) > 40
    stored = execute("SELECT secrets::text FROM webhook_account WHERE account_id = 'shop'")[0][0]
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    again = zenthor("webhook", "add-account", "shop")
    assert again.returncode == 2 and "already exists" in again.stderr and "whsec_" not in again.stdout
    listed = zenthor("webhook", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (account,) = json.loads(listed.stdout)
    assert account["account_id"] == "shop" and account["callback_url"] == "http://127.0.0.1:9/shop"
    assert len(account["secrets"]) == 1 and secret not in listed.stdout
    rotated = zenthor("webhook", "rotate-secret", "shop", "--keep-old-for", "1h")
    assert rotated.returncode == 0 and rotated.stdout.strip() not in (secret, "")
    assert len(json.loads(zenthor("webhook", "list", "--json").stdout)[0]["secrets"]) == 2
    bad = zenthor("webhook", "rotate-secret", "shop", "--keep-old-for", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    assert zenthor("webhook", "remove-account", "shop").returncode == 0
    assert count("webhook_account") == 0
    missing = zenthor("webhook", "remove-account", "shop")
    assert missing.returncode == 2 and "unknown webhook account 'shop'" in missing.stderr


def test_add_account_without_the_key_names_it():
    result = zenthor("webhook", "add-account", "shop", ZENTHOR_SECRET_KEY="")
    assert result.returncode == 2 and "ZENTHOR_SECRET_KEY" in result.stderr
    assert count("webhook_account") == 0


def test_each_account_verifies_with_its_own_secret_only(gateway):
    shop = account_store.add_account("shop")
    other = account_store.add_account("other")
    assert signed_post(gateway.client, "/v1/webhook/shop/messages", message(1), shop).status_code == 202
    # The shortcut secret serves the default account only; another account's secret does not serve shop.
    for wrong in (TEST_SECRET, other):
        response = signed_post(gateway.client, "/v1/webhook/shop/messages", message(2), wrong)
        assert response.status_code == 401 and response.json()["check"] == "no_matching_signature"
    # A valid request for shop replayed to other: refused, nothing stored.
    raw = json.dumps(message(3)).encode()
    headers = sign_headers(raw, shop)
    replayed = gateway.client.post("/v1/webhook/other/messages", content=raw, headers=headers)
    assert replayed.status_code == 401
    assert count("message") == 1
    assert signed_post(gateway.client, "/v1/webhook/default/messages", message(4)).status_code == 202
    unknown = signed_post(gateway.client, "/v1/webhook/nobody/messages", message(5))
    assert unknown.status_code == 404 and unknown.json()["check"] == "unknown_account"


def test_during_a_rotation_both_secrets_verify_and_after_the_grace_only_the_new_one(gateway):
    old = account_store.add_account("shop")
    new = account_store.rotate_secret("shop", keep_old_for=timedelta(seconds=2))
    url = "/v1/webhook/shop/messages"
    assert signed_post(gateway.client, url, message(1), old).status_code == 202
    assert signed_post(gateway.client, url, message(2), new).status_code == 202
    # A sender mid-rotation may sign with both: accepted.
    assert signed_post(gateway.client, url, message(3), [old, new]).status_code == 202
    n = iter(range(10, 10_000))
    wait_for(
        lambda: signed_post(gateway.client, url, message(next(n)), old).status_code == 401,
        15,
        interval=0.2,
        message="the old secret lapses",
    )
    assert signed_post(gateway.client, url, message(20_000), new).status_code == 202
    # A rotation that keeps nothing refuses the old secret at once.
    newest = account_store.rotate_secret("shop", keep_old_for=timedelta(0))
    assert signed_post(gateway.client, url, message(20_001), new).status_code == 401
    assert signed_post(gateway.client, url, message(20_002), newest).status_code == 202


def test_an_accounts_contact_policy_is_its_own(gateway):
    account_store.add_account("shop", contact_policy="allowlist", allow_from="vip")
    secret = account_store.rotate_secret("shop", keep_old_for=timedelta(0))
    url = "/v1/webhook/shop/messages"
    stranger = signed_post(gateway.client, url, message(1, sender="stranger"), secret)
    assert (stranger.status_code, stranger.json()) == (202, {"status": "ignored"})
    assert signed_post(gateway.client, url, message(2, sender="vip"), secret).json() == {"status": "accepted"}
    # The default account keeps the channel's policy (open).
    assert signed_post(gateway.client, "/v1/webhook/default/messages", message(3, sender="x")).json() == {
        "status": "accepted"
    }
    assert count("message") == 2


def test_replies_go_to_the_accounts_callback_signed_with_its_newest_secret(settings_env):
    from zenthor.actors.deliver import deliver_row
    from zenthor.agent.replies import write_replies

    callback = CallbackServer()
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    try:
        old = account_store.add_account("shop", callback_url=callback.url)
        new = account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))
        conversation_id = make_conversation("chat-1", channel="webhook", account_id="shop")
        with database.atomic():
            (outbound_id,) = write_replies(conversation_id, None, ["hi"]).outbound_ids
        assert deliver_row(outbound_id) == "sent"
        (record,) = callback.all_records()
        assert verify_callback(record, new) == record.headers["Idempotency-Key"] == str(outbound_id)
        with pytest.raises(SignatureError):
            verify_callback(record, old)
        # An account without a callback URL, or removed: the reply is not sent anywhere else.
        account_store.remove_account("shop")
        with database.atomic():
            (second,) = write_replies(conversation_id, None, ["again"]).outbound_ids
        assert deliver_row(second) != "sent" and len(callback.all_records()) == 1
    finally:
        callback.stop()


def test_the_gateway_refuses_to_start_when_accounts_exist_and_the_key_is_missing_or_wrong(settings_env):
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    account_store.add_account("shop")
    port = str(free_port())
    for key, needle in (
        ("", "missing setting ZENTHOR_SECRET_KEY"),
        ("another-key-of-sixteen+", "ZENTHOR_SECRET_KEY does not decrypt"),
    ):
        result = zenthor("gateway", "--port", port, ZENTHOR_SECRET_KEY=key)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"zenthor: {needle}"), result.stderr
        assert KEY not in result.stderr
