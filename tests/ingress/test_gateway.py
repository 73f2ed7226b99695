"""The webhook gateway over real HTTP: signatures, body and field errors, size, unicode, health."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.ingress.helpers import TEST_SECRET, ThreadedGateway, count, sign_headers, signed_post
from zenthor.broker import broker
from zenthor.channels.webhook.gateway import create_app
from zenthor.models import Message
from zenthor.queue import sweep_state

SECRET = TEST_SECRET
CALLBACK = "http://127.0.0.1:9/replies"  # never called: these tests run no worker


@pytest.fixture
def gateway(settings_env):
    settings_env(WEBHOOK_SECRET=SECRET, WEBHOOK_CALLBACK_URL=CALLBACK, WEBHOOK_DEFAULT_ACCOUNT="acct")
    published: list[int] = []
    running = ThreadedGateway(
        create_app(publish=lambda job_id: published.append(job_id) or True, broker=broker)
    )
    running.published = published
    with httpx.Client(base_url=running.url, timeout=10) as client:
        running.client = client
        yield running
    running.stop()


def post(gateway, body: bytes | dict, *, account: str = "acct", headers=None, **signing_options):
    """POST ``body`` signed with the gateway's secret (``secret=...`` to sign with another)."""
    return signed_post(
        gateway.client, f"/v1/webhook/{account}/messages", body, headers=headers, **signing_options
    )


def post_unsigned(gateway, body: dict, headers: dict[str, str], *, account: str = "acct"):
    raw = json.dumps(body).encode()
    return gateway.client.post(f"/v1/webhook/{account}/messages", content=raw, headers=headers)


def valid(**overrides) -> dict:
    body = {"message_id": "m-1", "chat_id": "chat-1", "sender_id": "u-1", "text": "hello"}
    body.update(overrides)
    return body


def nothing_written() -> bool:
    return all(
        count(table) == 0 for table in ("inbound_dedupe", "message", "agent_job", "conversation", "contact")
    )


def test_accepted_then_duplicate(gateway):
    first = post(gateway, valid(sender_name="Ann", sent_at="2025-05-01T10:00:00Z"))
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    again = post(gateway, valid(sender_name="Ann", sent_at="2025-05-01T10:00:00Z"))
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert count("message") == 1 and count("agent_job") == 1
    assert len(gateway.published) == 1


def test_the_webhooks_sent_at_is_stored_with_the_message(gateway):
    assert post(gateway, valid(sent_at="2025-05-01T10:00:00+02:00")).status_code == 202
    assert post(gateway, valid(message_id="m-2", sent_at=1746086400)).status_code == 202
    assert post(gateway, valid(message_id="m-3")).status_code == 202  # an id alone is enough
    stored = {m.provider_message_id: m.sent_at for m in Message.select()}
    assert stored["m-1"] == datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    assert stored["m-2"].timestamp() == 1746086400 and stored["m-3"] is None


def test_a_request_without_standard_headers_is_401_naming_the_missing_header(gateway):
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = sign_headers(json.dumps(valid()).encode())
        del headers[missing]
        response = post_unsigned(gateway, valid(), headers)
        assert response.status_code == 401
        assert response.json()["check"] == "missing_header" and response.json()["header"] == missing
        assert missing in response.json()["error"]
    assert nothing_written()


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "v1," + "A" * 44,
        "v2,abc",
        "v1,not base64!",
        "garbage",
        "v1",
    ],
)
def test_a_wrong_signature_is_401_no_matching_signature_and_writes_nothing(gateway, signature):
    headers = {**sign_headers(json.dumps(valid()).encode()), "webhook-signature": signature}
    response = post_unsigned(gateway, valid(), headers)
    assert response.status_code == 401
    expected = "missing_header" if not signature else "no_matching_signature"
    assert response.json()["check"] == expected
    assert nothing_written()


def test_a_signature_with_another_secret_is_refused_and_the_body_names_no_secret(gateway):
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLWFub3RoZXItYWNjb3VudA=="
    response = post(gateway, valid(), secret=other)
    assert response.status_code == 401 and response.json()["check"] == "no_matching_signature"
    expected = sign_headers(json.dumps(valid()).encode())["webhook-signature"].split(",")[1]
    assert SECRET not in response.text and other not in response.text and expected[:12] not in response.text
    assert nothing_written()


def test_a_request_signed_10_minutes_ago_is_401_naming_the_timestamp(gateway):
    response = post(gateway, valid(), timestamp=int(time.time()) - 600)
    assert response.status_code == 401
    assert response.json()["check"] == "timestamp_outside_tolerance"
    assert "webhook-timestamp" in response.json()["error"] and "600 s old" in response.json()["error"]
    future = post(gateway, valid(), timestamp=int(time.time()) + 600)
    assert future.status_code == 401 and future.json()["check"] == "timestamp_outside_tolerance"
    garbled = post_unsigned(gateway, valid(), {**sign_headers(b"{}"), "webhook-timestamp": "soon"})
    assert garbled.status_code == 401 and garbled.json()["check"] == "invalid_header"
    assert nothing_written()


def test_a_timestamp_inside_the_tolerance_is_accepted(gateway, settings_env):
    assert post(gateway, valid(), timestamp=int(time.time()) - 240).status_code == 202


def test_two_signatures_in_one_header_one_valid_is_accepted(gateway):
    wrong = "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZw=="
    response = post(gateway, valid(), secret=[wrong, SECRET])
    assert response.status_code == 202, response.text
    assert post(gateway, valid(message_id="m-2"), secret=[SECRET, wrong]).status_code == 202


def test_a_valid_request_replayed_to_another_account_is_refused_and_stores_nothing(gateway):
    raw = json.dumps(valid()).encode()
    headers = {"Content-Type": "application/json", **sign_headers(raw)}
    replayed = gateway.client.post("/v1/webhook/other/messages", content=raw, headers=headers)
    assert replayed.status_code == 404 and replayed.json()["check"] == "unknown_account"
    assert "unknown account" in replayed.json()["error"]
    assert nothing_written()
    assert gateway.client.post("/v1/webhook/acct/messages", content=raw, headers=headers).status_code == 202


def test_the_signature_covers_the_id_and_the_timestamp(gateway):
    raw = json.dumps(valid()).encode()
    headers = sign_headers(raw)
    for name, value in (("webhook-id", "msg_other"), ("webhook-timestamp", str(int(time.time()) - 1))):
        response = gateway.client.post(
            "/v1/webhook/acct/messages", content=raw, headers={**headers, name: value}
        )
        assert response.status_code == 401 and response.json()["check"] == "no_matching_signature"
    assert nothing_written()


def test_a_plain_secret_is_the_whsec_form_of_its_utf8_bytes_for_a_standard_library():
    """The README's conversion: a library given whsec_ + base64(utf8(secret)) verifies what we
    sign with the plain secret, and we verify what it signs."""
    import base64
    import subprocess
    import sys

    from standardwebhooks.webhooks import Webhook

    from zenthor.channels.webhook import signing

    plain = "plain old secret é"
    converted = subprocess.run(
        [
            sys.executable,
            "-c",
            'import base64, sys; print("whsec_" + base64.b64encode(sys.argv[1].encode()).decode())',
            plain,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert converted == "whsec_" + base64.b64encode(plain.encode()).decode()
    raw = json.dumps(valid()).encode()
    ours = signing.sign_headers(plain, raw, msg_id="msg_1")
    Webhook(converted).verify(raw, ours)  # raises unless it verifies
    stamp = datetime.now(UTC)
    theirs = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(converted).sign("msg_2", stamp, raw.decode()),
    }
    assert signing.verify(raw, theirs, [plain], tolerance_s=300) == "msg_2"


def test_a_non_ascii_webhook_id_is_401_invalid_header(gateway):
    raw = json.dumps(valid()).encode()
    # Signed over the id as the gateway reads the header (latin-1): it would verify, but a sender
    # writing UTF-8 signed other bytes, so the id itself is refused.
    read_as = "msg_é".encode().decode("latin-1")
    headers = sign_headers(raw, msg_id=read_as)
    headers["webhook-id"] = "msg_é".encode()
    response = gateway.client.post("/v1/webhook/acct/messages", content=raw, headers=headers)
    assert response.status_code == 401, response.text
    assert (response.json()["check"], response.json()["header"]) == ("invalid_header", "webhook-id")
    assert nothing_written()


def test_the_legacy_header_alone_is_refused_by_default(gateway):
    response = post(gateway, valid(), legacy=True)
    assert response.status_code == 401
    assert response.json()["check"] == "legacy_signature_refused"
    assert "X-Zenthor-Signature" in response.json()["error"] and nothing_written()


def test_the_legacy_header_is_accepted_with_the_migration_setting_and_warned_once(
    gateway, settings_env, caplog
):
    settings_env(
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_CALLBACK_URL=CALLBACK,
        WEBHOOK_DEFAULT_ACCOUNT="acct",
        WEBHOOK_ACCEPT_LEGACY_SIGNATURE="true",
    )
    legacy_gateway = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    try:
        with httpx.Client(base_url=legacy_gateway.url, timeout=10) as client, caplog.at_level("WARNING"):
            url = "/v1/webhook/acct/messages"
            assert signed_post(client, url, valid(), legacy=True).status_code == 202
            assert signed_post(client, url, valid(message_id="m-2"), legacy=True).status_code == 202
            wrong = signed_post(client, url, valid(message_id="m-3"), "not-the-secret", legacy=True)
            assert wrong.status_code == 401 and wrong.json()["check"] == "no_matching_signature"
            # Both present: the standard one decides, whatever the legacy header says.
            raw = json.dumps(valid(message_id="m-4")).encode()
            both = {**sign_headers(raw, "not-the-secret"), **sign_headers(raw, legacy=True)}
            assert client.post(url, content=raw, headers=both).status_code == 401
            both = {**sign_headers(raw), "X-Zenthor-Signature": "sha256=00"}
            assert client.post(url, content=raw, headers=both).status_code == 202
    finally:
        legacy_gateway.stop()
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "gateway.legacy_signature"]
    assert len(warnings) == 1 and "acct" in warnings[0].getMessage()
    assert count("message") == 3


def test_signature_over_a_different_body_is_refused(gateway):
    raw = json.dumps(valid()).encode()
    response = gateway.client.post(
        "/v1/webhook/acct/messages",
        content=raw + b" ",
        headers=sign_headers(raw),
    )
    assert response.status_code == 401 and nothing_written()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object, got array"),
        (b'"text"', "JSON object, got string"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"message_id": 1' + b"0" * 5_000 + b"}", "not usable JSON"),
    ],
)
def test_broken_json_is_400_naming_the_problem(gateway, raw, needle):
    response = post(gateway, raw)
    assert response.status_code == 400
    assert needle in response.json()["error"]
    assert nothing_written()


@pytest.mark.parametrize("field", ["message_id", "chat_id", "sender_id", "text"])
def test_missing_field_is_422_naming_it(gateway, field):
    body = valid()
    del body[field]
    response = post(gateway, body)
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["error"]
    assert nothing_written()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("message_id", 123, "must be a string, got number"),
        ("chat_id", ["c"], "must be a string, got array"),
        ("sender_id", {"id": 1}, "must be a string, got object"),
        ("text", True, "must be a string, got boolean"),
        ("sender_name", 5, "must be a string, got number"),
        ("sent_at", "yesterday", "not an ISO 8601 time"),
        ("sent_at", False, "boolean"),
        ("text", "", "must not be empty"),
        ("text", "   \n ", "must not be empty"),
        ("message_id", "", "must not be empty"),
        ("chat_id", "x" * 300, "longer than"),
    ],
)
def test_mistyped_or_empty_field_is_422_naming_it(gateway, field, value, needle):
    response = post(gateway, valid(**{field: value}))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and needle in response.json()["error"]
    assert nothing_written()


def test_body_over_64_kib_is_413(gateway):
    response = post(gateway, valid(text="a" * (64 * 1024)))
    assert response.status_code == 413 and nothing_written()


def test_body_over_64_kib_without_content_length_is_413(gateway):
    raw = json.dumps(valid(text="b" * (70 * 1024))).encode()

    def chunks():
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    response = gateway.client.post("/v1/webhook/acct/messages", content=chunks(), headers=sign_headers(raw))
    assert response.status_code == 413 and nothing_written()


def test_body_just_under_the_limit_is_accepted(gateway):
    body = valid(text="")
    overhead = len(json.dumps(body).encode())
    body["text"] = "c" * (64 * 1024 - overhead)
    assert len(json.dumps(body).encode()) == 64 * 1024
    response = post(gateway, body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "text",
    [
        "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽",
        "שלום עולם، مرحبا بالعالم",
        "e\u0301 a\u0308 \u0915\u094d\u0937 Z\u0351\u0352\u0353",
        "\u202eRTL override\u202c and zero\u200bwidth",
        'line1\r\nline2\ttab \\ "quotes"',
    ],
)
def test_unicode_text_is_kept_byte_for_byte(gateway, text):
    response = post(gateway, valid(text=text))
    assert response.status_code == 202
    stored = Message.get(Message.role == "user").content
    assert stored.encode("utf-8") == text.encode("utf-8")


def test_escaped_unicode_in_json_is_decoded_to_the_same_text(gateway):
    raw = b'{"message_id": "m", "chat_id": "c", "sender_id": "s", "text": "\\ud83d\\ude00 ok"}'
    assert post(gateway, raw).status_code == 202
    assert Message.get(Message.role == "user").content == "😀 ok"


def test_an_account_id_with_a_nul_is_422_not_a_crash(gateway):
    response = post(gateway, valid(), account="a%00b")
    assert response.status_code == 422 and response.json()["field"] == "account_id"
    assert "NUL" in response.json()["error"] and nothing_written()


def test_unknown_route_and_wrong_method(gateway):
    wrong_method = gateway.client.get("/v1/webhook/acct/messages")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    unknown = gateway.client.post("/v1/nope")
    assert unknown.status_code == 404 and unknown.json() == {"error": "Not Found"}  # JSON, as every answer


def test_healthz_is_503_until_a_worker_consumes_and_a_sweep_ran_then_200_and_503_when_workers_stop(gateway):
    from tests.support.workers import InProcessWorker, wait_for

    response = gateway.client.get("/healthz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["postgres"] == "ok" and checks["rabbitmq"] == "ok"
    assert checks["dispatch_consumers"].startswith("none: no worker consumes the dispatch queue")
    assert "never ran" in checks["sweep"]
    running = InProcessWorker()  # its boot kicks the sweep
    try:
        wait_for(lambda: gateway.client.get("/healthz").status_code == 200, 30, message="healthy")
        assert set(gateway.client.get("/healthz").json()["checks"].values()) == {"ok"}
    finally:
        running.stop()
    # Every worker gone: unhealthy at once, naming why.
    response = wait_for(
        lambda: (r := gateway.client.get("/healthz")).status_code == 503 and r, 10, message="503 again"
    )
    assert response.json()["checks"]["dispatch_consumers"].startswith("none")


def test_healthz_names_a_job_that_waits_too_long(gateway, settings_env):
    from zenthor.db import execute

    settings_env(
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_CALLBACK_URL=CALLBACK,
        WEBHOOK_DEFAULT_ACCOUNT="acct",
        HEALTH_PENDING_MAX_AGE_S="60",
    )
    post(gateway, valid())
    execute("UPDATE agent_job SET available_at = now() - interval '5 minutes'")
    checks = gateway.client.get("/healthz").json()["checks"]
    assert checks["pending"].startswith("the oldest pending job has waited 3")


def test_healthz_reports_a_stale_sweep(gateway, settings_env):
    from zenthor.db import execute

    sweep_state.record_start("manual")
    sweep_state.record_finish({})
    execute("UPDATE sweep_state SET last_finished_at = now() - interval '1 hour'")
    response = gateway.client.get("/healthz")
    assert response.status_code == 503 and response.json()["checks"]["sweep"].startswith("stale")


def test_healthz_reports_an_unreachable_broker(settings_env):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    settings_env(WEBHOOK_SECRET=SECRET, WEBHOOK_CALLBACK_URL=CALLBACK)
    dead = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F", middleware=[])
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=dead))
    try:
        sweep_state.record_start("manual")
        sweep_state.record_finish({})
        response = httpx.get(f"{running.url}/healthz", timeout=20)
    finally:
        running.stop()
    assert response.status_code == 503
    assert response.json()["checks"]["rabbitmq"].startswith("unreachable")


def test_metrics_expose_queue_gauges_and_event_counters(gateway):
    post(gateway, valid())
    text = gateway.client.get("/metrics").text
    assert 'zenthor_jobs{status="pending"} 1.0' in text
    assert 'zenthor_outbox{status="pending"} 0.0' in text
    assert 'zenthor_events_total{event="inbound.accepted"}' in text


def test_the_shortcut_secret_serves_only_the_default_account(settings_env):
    settings_env(WEBHOOK_SECRET=SECRET, WEBHOOK_CALLBACK_URL=CALLBACK)  # WEBHOOK_DEFAULT_ACCOUNT unset
    running = ThreadedGateway(create_app(publish=lambda _: True, broker=broker))
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            acct = signed_post(client, "/v1/webhook/acct/messages", valid())
            assert acct.status_code == 404 and acct.json()["check"] == "unknown_account"
            assert signed_post(client, "/v1/webhook/default/messages", valid()).status_code == 202
    finally:
        running.stop()
    assert count("message") == 1


def test_a_malformed_whsec_secret_is_refused_at_start_without_echoing_it(settings_env):
    from zenthor.settings import SettingsError

    with pytest.raises(SettingsError, match="WEBHOOK_SECRET: must be whsec_ followed by base64") as error:
        settings_env(WEBHOOK_SECRET="whsec_!!not-base64!!", WEBHOOK_CALLBACK_URL=CALLBACK)
    assert "!!not-base64!!" not in str(error.value)


def test_healthz_and_metrics_report_each_whatsapp_account(gateway):
    from zenthor.queue.channel_leases import acquire_account, release_account, set_account_state

    owned = acquire_account("whatsapp", "shop", "host-a", ttl_ms=60_000, auth_mode="postgres")
    set_account_state(owned, "connected")
    gone = acquire_account("whatsapp", "old", "host-b", ttl_ms=60_000, auth_mode="local")
    set_account_state(gone, "logged_out", error="logged out by WhatsApp: pair again")
    release_account(gone)
    accounts = gateway.client.get("/healthz").json()["channel_accounts"]
    assert accounts["whatsapp:shop"] == "ok"
    assert accounts["whatsapp:old"].startswith("logged_out: logged out by WhatsApp")
    text = gateway.client.get("/metrics").text
    assert 'zenthor_whatsapp_account_state{account="shop",state="connected"} 1.0' in text
    assert 'zenthor_whatsapp_account_state{account="old",state="logged_out"} 1.0' in text
    assert 'zenthor_whatsapp_lease_held{account="shop"} 1.0' in text
    assert 'zenthor_whatsapp_lease_held{account="old"} 0.0' in text
    assert 'zenthor_whatsapp_last_inbound_age_seconds{account="shop"} -1.0' in text
    assert 'zenthor_whatsapp_rate_limited_total{account="shop"} 0.0' in text
