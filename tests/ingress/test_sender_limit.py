"""The cost limit per webhook sender (issue 12, slice 3): a token bucket per (account, sender) in
Postgres, taken in the accept transaction, so it holds across gateway processes."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.ingress.helpers import TEST_SECRET, GatewayProcess, count, signed_post
from zenthor.db import execute

RATE, BURST = 30, 10


@pytest.fixture
def two_gateways(settings_env):
    env = {
        "WEBHOOK_SECRET": TEST_SECRET,
        "WEBHOOK_CALLBACK_URL": "http://127.0.0.1:9/replies",  # never called: no worker runs
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "WEBHOOK_SENDER_RATE_PER_MIN": str(RATE),
        "WEBHOOK_SENDER_BURST": str(BURST),
    }
    settings_env(**env)
    first = GatewayProcess(env)
    try:
        second = GatewayProcess(env)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def body(n: int, sender: str) -> dict:
    return {"message_id": f"{sender}-{n}", "chat_id": f"chat-{sender}", "sender_id": sender, "text": f"m{n}"}


def test_60_messages_from_one_sender_in_5_s_over_two_gateways_get_429_beyond_burst_and_rate(two_gateways):
    gateways = two_gateways
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        responses = []
        for n in range(60):
            gateway = gateways[n % 2]  # alternate processes: the bucket is shared through Postgres
            responses.append(signed_post(client, f"{gateway.url}/v1/webhook/acct/messages", body(n, "flood")))
            time.sleep(max(0.0, started + (n + 1) * 5 / 60 - time.monotonic()))  # 60 in 5 s
        elapsed = time.monotonic() - started
        accepted = [r for r in responses if r.status_code == 202]
        limited = [r for r in responses if r.status_code == 429]
        assert len(accepted) + len(limited) == 60, [r.status_code for r in responses]
        assert BURST <= len(accepted) <= BURST + int(RATE * elapsed / 60) + 1, (len(accepted), elapsed)
        for response in limited:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["check"] == "sender_rate_limit" and response.json()["field"] == "sender_id"
            assert "over its limit of 30 messages a minute" in response.json()["error"]
        # Nothing of a refused message is stored: no dedupe key, no message, no job.
        assert count("message") == len(accepted) == count("inbound_dedupe") == count("agent_job")
        # A duplicate of an accepted message is answered 200 and never counts, even now.
        first_accepted = responses.index(accepted[0])
        duplicate = signed_post(
            client, f"{gateways[0].url}/v1/webhook/acct/messages", body(first_accepted, "flood")
        )
        assert duplicate.status_code == 200
        # Another sender of the same account is still accepted.
        other = signed_post(client, f"{gateways[1].url}/v1/webhook/acct/messages", body(0, "calm"))
        assert other.status_code == 202, other.text


def test_a_limit_of_0_turns_it_off(settings_env):
    from tests.ingress.helpers import ThreadedGateway
    from zenthor.broker import broker
    from zenthor.channels.webhook.gateway import create_app

    settings_env(
        WEBHOOK_SECRET=TEST_SECRET,
        WEBHOOK_CALLBACK_URL="http://127.0.0.1:9/replies",
        WEBHOOK_DEFAULT_ACCOUNT="acct",
        WEBHOOK_SENDER_RATE_PER_MIN="0",
    )
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            codes = [
                signed_post(client, "/v1/webhook/acct/messages", body(n, "s")).status_code for n in range(25)
            ]
    finally:
        running.stop()
    assert codes == [202] * 25


def _bucket(sender: str, idle_s: float, tokens: float = 0.0) -> None:
    execute(
        "INSERT INTO webhook_sender_bucket (account_id, sender_id, tokens, updated_at) "
        "VALUES ('acct', %s, %s, now() - make_interval(secs => %s))",
        (sender, tokens, idle_s),
    )


def test_the_sweep_prunes_buckets_that_have_refilled_and_keeps_the_others(settings_env):
    from zenthor.actors.sweep import run_sweep

    settings_env(WEBHOOK_SENDER_RATE_PER_MIN=str(RATE), WEBHOOK_SENDER_BURST=str(BURST))
    full_after_s = BURST * 60 / RATE  # 20 s: an empty bucket is full again after this long
    _bucket("idle", full_after_s + 1)
    _bucket("refilling", full_after_s - 5)
    _bucket("active", 0, tokens=BURST - 1)
    counts = run_sweep("manual")
    assert counts["pruned_webhook_buckets"] == 1
    assert {r[0] for r in execute("SELECT sender_id FROM webhook_sender_bucket")} == {"refilling", "active"}
    # Pruning changed nothing for the idle sender: its next message finds a full bucket.
    from zenthor.channels.webhook.sender_limit import sender_limit
    from zenthor.db import database
    from zenthor.ingress import InboundMessage

    admit = sender_limit(RATE, BURST)
    with database.atomic():
        admit(InboundMessage("webhook", "acct", "c", "idle", "hi", provider_message_id="m"))
    assert execute("SELECT tokens FROM webhook_sender_bucket WHERE sender_id = 'idle'")[0][0] == BURST - 1
    assert run_sweep("manual")["pruned_webhook_buckets"] == 0


def test_the_bucket_prune_goes_in_bounded_batches_through_its_index():
    from zenthor.channels.webhook.sender_limit import prune_buckets
    from zenthor.db import database

    for n in range(25):
        _bucket(f"s{n}", 3600)
    assert prune_buckets(RATE, BURST, batch=10, max_batches=2) == 20
    assert count("webhook_sender_bucket") == 5
    assert prune_buckets(RATE, BURST, batch=10, max_batches=2) == 5
    # With the limit off here, buckets stay a day (a gateway may still have it on).
    _bucket("recent", 3600)
    assert prune_buckets(0, 0, batch=10, max_batches=1) == 0
    with database.atomic():
        execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in execute(
                "EXPLAIN SELECT account_id, sender_id FROM webhook_sender_bucket "
                "WHERE updated_at < now() - interval '20 seconds' ORDER BY updated_at LIMIT 10"
            )
        )
    assert "webhook_sender_bucket_updated_at" in plan, plan


def test_an_ignored_sender_spends_no_token_and_keeps_getting_202_ignored(settings_env):
    from datetime import timedelta

    from tests.ingress.helpers import ThreadedGateway
    from zenthor.broker import broker
    from zenthor.channels.webhook import account_store
    from zenthor.channels.webhook.gateway import create_app

    settings_env(
        ZENTHOR_SECRET_KEY="test-zenthor-secret-key-0123456789",
        WEBHOOK_SENDER_RATE_PER_MIN="1",  # no refill within the test
        WEBHOOK_SENDER_BURST="2",
    )
    account_store.add_account("shop", contact_policy="allowlist", allow_from="vip")
    secret = account_store.rotate_secret("shop", keep_old_for=timedelta(0))
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:

            def post(n: int, sender: str) -> httpx.Response:
                return signed_post(client, "/v1/webhook/shop/messages", body(n, sender), secret)

            ignored = [post(n, "stranger") for n in range(5)]
            vip = [post(n, "vip").status_code for n in range(3)]
    finally:
        running.stop()
    assert [(r.status_code, r.json()) for r in ignored] == [(202, {"status": "ignored"})] * 5
    assert count("webhook_sender_bucket", "sender_id = 'stranger'") == 0
    assert vip == [202, 202, 429]  # the limit still holds for an allowed sender
