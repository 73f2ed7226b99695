"""A fuzzed gateway (issue 12, slice 4).

schemathesis generates requests from the gateway's own ``/openapi.json`` and sends each one twice
to a real ``zenthor gateway`` process: as generated (unsigned, or with generated signature
headers), then signed for the default account. Every answer must be a documented status with a
JSON body matching the document, never a 5xx, and an unsigned request never stores anything.
hypothesis fuzzes the inbound validator directly (arbitrary JSON, unicode, huge numbers, nesting).
The number of examples is bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.ingress.helpers import TEST_SECRET, GatewayProcess, count, sign_headers
from zenthor.channels.webhook.openapi import openapi_document
from zenthor.channels.webhook.validation import BodyError, FieldError, parse_body, to_inbound
from zenthor.ingress import ACCEPTED, DUPLICATE, InboundMessage, InvalidInbound, accept

ACCOUNT = "fuzz"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BOUNDED = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples every run: CI stays fast and a failure reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_gateway():
    running = GatewayProcess(
        {
            "WEBHOOK_SECRET": TEST_SECRET,
            "WEBHOOK_CALLBACK_URL": "http://127.0.0.1:9/replies",  # never called: no worker runs
            "WEBHOOK_DEFAULT_ACCOUNT": ACCOUNT,
        }
    )
    yield running
    running.stop()


# The document the gateway serves (test_the_served_document_is_this_one checks it is).
schema = schemathesis.openapi.from_dict(openapi_document()).include(path_regex="^/v1/webhook/")


def test_the_served_document_is_the_one_fuzzed_and_names_every_route(fuzz_gateway):
    served = httpx.get(f"{fuzz_gateway.url}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == openapi_document()
    assert set(served.json()["paths"]) == {
        "/v1/webhook/{account_id}/messages",
        "/healthz",
        "/metrics",
        "/openapi.json",
    }


@schema.parametrize()
@BOUNDED
def test_fuzzed_requests_get_documented_json_answers_and_unsigned_ones_store_nothing(case, fuzz_gateway):
    before = count("message") + count("inbound_dedupe")
    response = case.call(base_url=fuzz_gateway.url)
    case.validate_response(response, checks=CHECKS)
    assert 400 <= response.status_code < 500, response.text  # no valid signature: never accepted
    assert count("message") + count("inbound_dedupe") == before, "an unsigned request stored something"

    if case.method.upper() != "POST":
        return  # an unsupported method (405, checked above): nothing to sign
    # The same body, signed for the default account: the validator and accept() behind it.
    case.path_parameters = {**(case.path_parameters or {}), "account_id": ACCOUNT}
    kwargs = case.as_transport_kwargs(base_url=fuzz_gateway.url)
    if "json" in kwargs:
        body = json.dumps(kwargs.pop("json")).encode()
    else:
        body = kwargs.pop("data", None) or b""
        body = body.encode() if isinstance(body, str) else body
    headers = {
        **{k: v for k, v in (kwargs.get("headers") or {}).items() if not k.lower().startswith("webhook-")},
        **sign_headers(body),
    }
    signed = httpx.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        content=body,
        headers=headers,
        timeout=30,
    )
    case.validate_response(signed, checks=CHECKS)
    assert signed.status_code in (200, 202, 400, 413, 422, 429), signed.text


# Any text, lone surrogates too: JSON's "\ud800" parses to a str that UTF-8 (and Postgres) cannot hold.
any_text = st.text(st.characters() | st.characters(categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
field_values = st.one_of(
    json_values, any_text.filter(lambda t: t.strip()), st.just("2025-05-01T10:00:00Z"), st.just("hi \ud800")
)
message_bodies = st.fixed_dictionaries(
    {},
    optional={
        name: field_values
        for name in ("message_id", "chat_id", "sender_id", "text", "sender_name", "sent_at", "extra")
    },
)


def _encode(data, ascii_only: bool) -> bytes | None:
    """``data`` as a sender would post it: with ``ascii_only`` every non-ASCII character is a
    ``\\uXXXX`` escape (a lone surrogate too), else raw UTF-8 (surrogates as invalid bytes)."""
    try:
        return json.dumps(data, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return None


def _assert_storable(message: InboundMessage) -> None:
    for name in ("account_id", "chat_id", "sender_id", "text", "provider_message_id", "sender_name"):
        value = getattr(message, name)
        assert value is None or (value.encode("utf-8") and "\x00" not in value), name


@given(data=st.one_of(json_values, message_bodies), ascii_only=st.booleans())
@settings(max_examples=300, deadline=None, derandomize=True)
def test_the_inbound_validator_names_the_problem_or_returns_a_message(data, ascii_only):
    raw = _encode(data, ascii_only)
    if raw is None:
        return
    try:
        parsed = parse_body(raw)
        message = to_inbound("acct", parsed)
    except FieldError as error:
        assert error.field and str(error).startswith(f"{error.field}: ")
        return
    except BodyError as error:
        assert str(error)
        return
    assert isinstance(message, InboundMessage)
    assert message.text.strip() and message.provider_message_id == parsed["message_id"]
    _assert_storable(message)


@given(data=message_bodies, ascii_only=st.booleans())
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_what_the_validator_passes_is_stored_by_accept(data, ascii_only):
    """The validator's promise checked where it matters: each message it returns goes through
    accept() into Postgres (bounded; the same examples every run)."""
    raw = _encode({"message_id": "m", "chat_id": "c", "sender_id": "s", "text": "t", **data}, ascii_only)
    if raw is None:
        return
    try:
        message = to_inbound("acct", parse_body(raw))
    except (BodyError, FieldError):
        return
    result = accept(message, publish=lambda _: True)
    assert result.status in (ACCEPTED, DUPLICATE), result


SURROGATE_FIELDS = ("text", "message_id", "chat_id", "sender_id", "sender_name")


@pytest.mark.parametrize("field", SURROGATE_FIELDS)
def test_a_lone_surrogate_is_refused_with_422_naming_the_field(field, fuzz_gateway):
    body = {"message_id": "m-1", "chat_id": "chat-1", "sender_id": "u-1", "text": "hi", field: "hi \ud800"}
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as the escape \\ud800
    assert b"\\ud800" in raw
    response = httpx.post(
        f"{fuzz_gateway.url}/v1/webhook/{ACCOUNT}/messages",
        content=raw,
        headers={"Content-Type": "application/json", **sign_headers(raw)},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and "surrogate" in response.json()["error"]
    assert count("message") + count("inbound_dedupe") == 0


@pytest.mark.parametrize("field", ["text", "chat_id", "sender_id", "sender_name", "provider_message_id"])
def test_replay_and_ingest_refuse_a_lone_surrogate_the_same_way(field):
    line = {"channel": "webhook", "account_id": "acct", "chat_id": "c", "sender_id": "s", "text": "t"}
    line.update({"provider_message_id": "m-1", field: "x\udfff"})
    with pytest.raises(InvalidInbound) as refused:
        InboundMessage.from_dict(json.loads(json.dumps(line)))
    assert refused.value.field == field


@given(raw=st.binary(max_size=300) | any_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_the_inbound_validator_takes_any_bytes(raw):
    try:
        to_inbound("acct", parse_body(raw))
    except (BodyError, FieldError):
        pass


def test_deep_nesting_and_huge_numbers_are_named_not_crashes():
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"message_id": 1' + b"0" * 5000 + b"}"):
        with pytest.raises((BodyError, FieldError)):
            to_inbound("acct", parse_body(raw))


def test_the_document_describes_the_legacy_header_the_optional_standard_ones_and_the_503s():
    operation = openapi_document()["paths"]["/v1/webhook/{account_id}/messages"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    legacy = headers["X-Zenthor-Signature"]
    assert legacy["deprecated"] is True and "WEBHOOK_ACCEPT_LEGACY_SIGNATURE" in legacy["description"]
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert (
            headers[name]["required"] is False
            and "WEBHOOK_ACCEPT_LEGACY_SIGNATURE" in headers[name]["description"]
        )
    assert "secrets" in operation["responses"]["503"]["description"]
