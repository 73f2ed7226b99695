"""The cost limit per webhook sender (issue 12, slice 3): a token bucket per (account, sender) in
Postgres, taken in the accept transaction, so it holds across gateway processes."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.ingress.helpers import TEST_SECRET, GatewayProcess, count, signed_post

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
