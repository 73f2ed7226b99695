"""The OpenAPI description of the gateway, served at ``GET /openapi.json``.

Written by hand beside the code it describes (gateway.py, validation.py, signing.py); the fuzz
test (tests/ingress/test_fuzz.py) runs schemathesis against a real gateway with it, so a status,
a field or a header the code and this document disagree on fails there.
"""

from __future__ import annotations

from typing import Any

from zenthor.channels.webhook.signing import (
    ID_HEADER,
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

MAX_BODY_BYTES = 64 * 1024

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, never a secret or an expected value"},
        "field": {"type": "string", "description": "the body field (or account_id, sender_id) at fault"},
        "check": {
            "type": "string",
            "description": "which check failed",
            "enum": [
                "missing_header",
                "invalid_header",
                "timestamp_outside_tolerance",
                "no_matching_signature",
                "legacy_signature_refused",
                "unknown_account",
                "sender_rate_limit",
            ],
        },
        "header": {"type": "string", "description": "the request header at fault"},
    },
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _status(value: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": [value]}},
                }
            }
        },
    }


_REQUIRED_UNLESS_LEGACY = (
    " Required (401 missing_header without it), except on a gateway with "
    "WEBHOOK_ACCEPT_LEGACY_SIGNATURE=true for a request that carries only the deprecated "
    f"{LEGACY_SIGNATURE_HEADER}."
)


def _signature_header(name: str, description: str) -> dict[str, Any]:
    # Not "required: true": a gateway in a legacy migration accepts requests without it.
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description + "." + _REQUIRED_UNLESS_LEGACY,
    }


_LEGACY_HEADER = {
    "name": LEGACY_SIGNATURE_HEADER,
    "in": "header",
    "required": False,
    "deprecated": True,
    "schema": {"type": "string"},
    "description": "Deprecated: sha256=<hex HMAC-SHA256 of the body alone> (replayable). Refused "
    "(401 legacy_signature_refused) unless WEBHOOK_ACCEPT_LEGACY_SIGNATURE=true; ignored when any "
    "Standard Webhooks header is present.",
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the webhook API (a new dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zenthor Assist webhook gateway",
            "version": "1",
            "description": (
                "Signed with Standard Webhooks (https://www.standardwebhooks.com): "
                f"{ID_HEADER}, {TIMESTAMP_HEADER} (Unix seconds), {SIGNATURE_HEADER} "
                '("v1,<base64 HMAC-SHA256 of id.timestamp.body>", space-separated; any one valid '
                "signature verifies). Replies are POSTed to the account's callback URL, signed the same way."
            ),
        },
        "paths": {
            "/v1/webhook/{account_id}/messages": {
                "post": {
                    "operationId": "receiveMessage",
                    "summary": "Accept one inbound message for an account",
                    "parameters": [
                        {
                            "name": "account_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                        },
                        _signature_header(ID_HEADER, "the delivery id (a retried delivery keeps it)"),
                        _signature_header(
                            TIMESTAMP_HEADER, "Unix seconds; refused outside WEBHOOK_TOLERANCE_S"
                        ),
                        _signature_header(SIGNATURE_HEADER, "space-separated v1,<base64> signatures"),
                        _LEGACY_HEADER,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}},
                    },
                    "responses": {
                        "200": _status("duplicate", "seen before (same message_id): nothing written"),
                        "202": {
                            "description": "accepted (a turn will answer) or ignored (contact policy)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {
                                            "status": {"type": "string", "enum": ["accepted", "ignored"]}
                                        },
                                    }
                                }
                            },
                        },
                        "400": _error("the body is not UTF-8 JSON or not a JSON object"),
                        "401": _error("the signature does not verify; check names the failed check"),
                        "404": _error("unknown account, or no such route"),
                        "405": _error("method not allowed"),
                        "413": _error(f"the body is larger than {MAX_BODY_BYTES} bytes"),
                        "422": _error("a field is missing or has the wrong type; field names it"),
                        "429": _error(
                            "this sender is over its cost limit: nothing stored",
                            {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True}},
                        ),
                        "503": _error(
                            "retry later: the database is unavailable, or this gateway cannot read "
                            "the account's secrets (ZENTHOR_SECRET_KEY changed since it started; "
                            "the gateway log names it), or the account kept changing (an operator "
                            "rotating it) while the request was accepted"
                        ),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Postgres, RabbitMQ, consumers, pending jobs and the sweep, each named",
                    "responses": {
                        "200": {
                            "description": "healthy",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "unhealthy",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Message": {
                    "type": "object",
                    "required": ["message_id", "chat_id", "sender_id", "text"],
                    "properties": {
                        "message_id": {"type": "string", "minLength": 1, "description": "the dedupe key"},
                        "chat_id": {"type": "string", "minLength": 1},
                        "sender_id": {"type": "string", "minLength": 1},
                        "text": {"type": "string", "minLength": 1},
                        "sender_name": {"type": ["string", "null"]},
                        "sent_at": {
                            "description": "the sender's time: ISO 8601 or Unix seconds",
                            "type": ["string", "number", "null"],
                        },
                    },
                },
            }
        },
    }
