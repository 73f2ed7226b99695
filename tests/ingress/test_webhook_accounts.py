"""Webhook accounts (issue 12, slice 2): a secret per account, several at a time, encrypted at
rest; ``zenthor webhook`` manages them; the gateway verifies and the sender signs with them."""

from __future__ import annotations

import json
import os
import signal
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
from zenthor.broker import broker
from zenthor.channels.webhook import account_store
from zenthor.channels.webhook.gateway import create_app
from zenthor.channels.webhook.secret_box import SecretKeyError
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


def zenthor_group(*args: str, **env: str) -> subprocess.CompletedProcess:
    """:func:`zenthor` in a process group of its own, killed whole if it outlives the timeout (a
    worker that did start forks Dramatiq processes, which must not outlive the test)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zenthor.cli", *args],
        env={**os.environ, "LOG_LEVEL": "WARNING", "ZENTHOR_SECRET_KEY": KEY, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def expire_old_secrets(account_id: str) -> None:
    """End the grace of ``account_id``'s old secrets now, on the database's clock (what the
    gateway compares expires_at with), instead of waiting for it."""
    entries, now = execute("SELECT secrets, now() FROM webhook_account WHERE account_id = %s", (account_id,))[
        0
    ]
    past = (now - timedelta(seconds=1)).isoformat()
    expired = [entries[0], *({**e, "expires_at": past} for e in entries[1:])]
    execute(
        "UPDATE webhook_account SET secrets = %s::jsonb WHERE account_id = %s",
        (json.dumps(expired), account_id),
    )


def test_during_a_rotation_both_secrets_verify_and_after_the_grace_only_the_new_one(gateway):
    old = account_store.add_account("shop")
    new = account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))
    url = "/v1/webhook/shop/messages"
    assert signed_post(gateway.client, url, message(1), old).status_code == 202
    assert signed_post(gateway.client, url, message(2), new).status_code == 202
    # A sender mid-rotation may sign with both: accepted.
    assert signed_post(gateway.client, url, message(3), [old, new]).status_code == 202
    (shop,) = account_store.list_accounts()
    assert [bool(s["expires_at"]) for s in shop["secrets"]] == [False, True]
    expire_old_secrets("shop")
    refused = signed_post(gateway.client, url, message(4), old)
    assert refused.status_code == 401 and refused.json()["check"] == "no_matching_signature"
    assert signed_post(gateway.client, url, message(5), new).status_code == 202
    # A rotation that keeps nothing refuses the old secret at once.
    newest = account_store.rotate_secret("shop", keep_old_for=timedelta(0))
    assert signed_post(gateway.client, url, message(6), new).status_code == 401
    assert signed_post(gateway.client, url, message(7), newest).status_code == 202


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


def test_replies_are_signed_with_every_live_secret_so_a_receiver_on_the_old_one_verifies(settings_env):
    from zenthor.actors.deliver import deliver_row
    from zenthor.agent.replies import write_replies

    callback = CallbackServer()
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    try:
        old = account_store.add_account("shop", callback_url=callback.url)
        new = account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))
        conversation_id = make_conversation("chat-1", channel="webhook", account_id="shop")

        def reply(text: str) -> tuple[int, object]:
            with database.atomic():
                (outbound_id,) = write_replies(conversation_id, None, [text]).outbound_ids
            assert deliver_row(outbound_id) == "sent"
            return outbound_id, callback.all_records()[-1]

        # During the grace: the receiver still on the old secret verifies, so does one on the new.
        outbound_id, record = reply("hi")
        assert verify_callback(record, old) == record.headers["Idempotency-Key"] == str(outbound_id)
        assert verify_callback(record, new) == str(outbound_id)
        assert len(record.headers["webhook-signature"].split(" ")) == 2
        # After it: the new secret alone signs.
        expire_old_secrets("shop")
        _, record = reply("later")
        assert verify_callback(record, new)
        with pytest.raises(SignatureError):
            verify_callback(record, old)
        # An account without a callback URL, or removed: the reply is not sent anywhere else.
        account_store.remove_account("shop")
        with database.atomic():
            (second,) = write_replies(conversation_id, None, ["again"]).outbound_ids
        assert deliver_row(second) != "sent" and len(callback.all_records()) == 2
    finally:
        callback.stop()


def test_a_worker_that_cannot_read_the_secrets_says_so_by_name_and_keeps_the_reply(settings_env, caplog):
    from zenthor.actors.deliver import deliver_row
    from zenthor.agent.replies import write_replies

    settings_env(ZENTHOR_SECRET_KEY=KEY)
    account_store.add_account("shop", callback_url=CALLBACK)
    conversation_id = make_conversation("chat-1", channel="webhook", account_id="shop")
    with database.atomic():
        (outbound_id,) = write_replies(conversation_id, None, ["hi"]).outbound_ids
    settings_env(ZENTHOR_SECRET_KEY="another-key-of-sixteen+")
    with caplog.at_level("INFO", logger="zenthor.events"):
        outcome = deliver_row(outbound_id)
    assert outcome != "sent"
    (event,) = [r for r in caplog.records if getattr(r, "event", None) == "webhook.secret_key_error"]
    assert event.setting == "ZENTHOR_SECRET_KEY" and event.account_id == "shop"
    assert event.outbound_id == outbound_id and KEY not in event.getMessage()
    # Retryable: the row waits for a worker with the right key, it is not failed.
    status, error = execute("SELECT status, last_error FROM outbound_message WHERE id = %s", (outbound_id,))[
        0
    ]
    assert status == "pending" and "ZENTHOR_SECRET_KEY" in error


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


def test_a_worker_refuses_to_start_when_accounts_exist_and_the_key_is_missing_or_wrong(settings_env):
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    account_store.add_account("shop")
    for key, needle in (
        ("", "missing setting ZENTHOR_SECRET_KEY"),
        ("another-key-of-sixteen+", "ZENTHOR_SECRET_KEY does not decrypt"),
    ):
        # A worker that started would run until the timeout: refusing is immediate.
        result = zenthor_group("worker", "--processes", "1", "--threads", "1", ZENTHOR_SECRET_KEY=key)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.startswith(f"zenthor: {needle}"), result.stderr[-2000:]
        assert KEY not in result.stderr


def test_the_cli_refuses_to_write_a_secret_under_a_key_that_does_not_read_the_stored_ones(settings_env):
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    account_store.add_account("shop")
    before = execute("SELECT secrets::text FROM webhook_account WHERE account_id = 'shop'")[0][0]
    wrong = "another-key-of-sixteen+"
    added = zenthor("webhook", "add-account", "other", ZENTHOR_SECRET_KEY=wrong)
    assert added.returncode == 2 and "ZENTHOR_SECRET_KEY does not decrypt" in added.stderr, added.stderr
    assert "whsec_" not in added.stdout and count("webhook_account") == 1
    rotated = zenthor("webhook", "rotate-secret", "shop", ZENTHOR_SECRET_KEY=wrong)
    assert rotated.returncode == 2 and "ZENTHOR_SECRET_KEY" in rotated.stderr, rotated.stderr
    assert execute("SELECT secrets::text FROM webhook_account WHERE account_id = 'shop'")[0][0] == before
    # The right key still writes.
    assert zenthor("webhook", "add-account", "other").returncode == 0
    assert zenthor("webhook", "rotate-secret", "shop").returncode == 0


def test_adding_the_shortcut_account_keeps_webhook_secret_verifying_for_the_grace(gateway):
    added = zenthor(
        "webhook", "add-account", "default", WEBHOOK_SECRET=TEST_SECRET, WEBHOOK_CALLBACK_URL=CALLBACK
    )
    assert added.returncode == 0, added.stderr
    new = added.stdout.strip()
    assert "WEBHOOK_SECRET still verifies and signs replies for 24h" in added.stderr
    url = "/v1/webhook/default/messages"
    # No downtime: the sender still on WEBHOOK_SECRET is accepted, and so is the new secret.
    assert signed_post(gateway.client, url, message(1), TEST_SECRET).status_code == 202
    assert signed_post(gateway.client, url, message(2), new).status_code == 202
    (default,) = account_store.list_accounts()
    assert default["callback_url"] == CALLBACK  # replies keep going where they went
    assert [bool(s["expires_at"]) for s in default["secrets"]] == [False, True]
    expire_old_secrets("default")
    assert signed_post(gateway.client, url, message(3), TEST_SECRET).status_code == 401
    assert signed_post(gateway.client, url, message(4), new).status_code == 202


def test_changing_the_secret_key_with_the_previous_one_and_reencrypt(settings_env):
    settings_env(ZENTHOR_SECRET_KEY=KEY)
    shop = account_store.add_account("shop")
    account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))
    expire_old_secrets("shop")  # an expired entry is never read: it does not stop a start
    new_key = "the-new-zenthor-secret-key-98765"
    both = settings_env(ZENTHOR_SECRET_KEY=new_key, ZENTHOR_SECRET_KEY_PREVIOUS=KEY)
    assert account_store.check_secret_key(both) == 1
    assert len(account_store.load("shop", both).secrets) == 1
    done = zenthor("webhook", "reencrypt", ZENTHOR_SECRET_KEY=new_key, ZENTHOR_SECRET_KEY_PREVIOUS=KEY)
    assert done.returncode == 0 and "1 secret(s) of 1 account(s)" in done.stdout, done.stderr
    only_new = settings_env(ZENTHOR_SECRET_KEY=new_key, ZENTHOR_SECRET_KEY_PREVIOUS="")
    assert account_store.check_secret_key(only_new) == 1
    assert account_store.load("shop", only_new).secrets != (shop,)  # rotated: the newest secret
    old_only = settings_env(ZENTHOR_SECRET_KEY=KEY)
    with pytest.raises(SecretKeyError, match="ZENTHOR_SECRET_KEY"):
        account_store.check_secret_key(old_only)


def test_the_start_up_check_skips_expired_secrets_stored_under_another_key(settings_env):
    old_key = "an-older-key-long-gone-0000"
    settings_env(ZENTHOR_SECRET_KEY=old_key)
    account_store.add_account("shop")
    settings_env(ZENTHOR_SECRET_KEY=KEY, ZENTHOR_SECRET_KEY_PREVIOUS=old_key)
    account_store.rotate_secret("shop", keep_old_for=timedelta(hours=1))  # the old entry stays under old_key
    expire_old_secrets("shop")
    assert account_store.check_secret_key(settings_env(ZENTHOR_SECRET_KEY_PREVIOUS="")) == 1
