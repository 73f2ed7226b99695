"""Webhook replies: POST each outbox row to its account's callback URL, signed with Standard
Webhooks (one ``v1,`` signature per live secret of the account, the current time), so a receiver
still on the old secret verifies during a rotation's grace; ``webhook-id`` = ``Idempotency-Key`` =
the row's idempotency key (its outbound id), so a retry of the same row can be dropped by the
receiver and a replayed callback refused once its timestamp is outside the tolerance.

Any 2xx counts as delivered; a timeout, a connection error or any other status raises a
retryable :class:`~zenthor.channels.SendError` (the outbox backs off and tries again).

Secrets this worker cannot decrypt (``ZENTHOR_SECRET_KEY`` missing or another key) emit
``webhook.secret_key_error`` naming the setting and stay retryable: the worker checks the key at
start, so this is a key changed since (a deploy under way, one worker not yet restarted), and
another worker, or this one once restarted with the right key, delivers the reply within the
outbox's retries; failing it at once would lose a reply to a configuration that is being fixed.
"""

from __future__ import annotations

import json
import threading

import httpx

from zenthor.channels import SendError, register_sender
from zenthor.channels.webhook import CHANNEL
from zenthor.channels.webhook.accounts import find_account
from zenthor.channels.webhook.secret_box import SecretKeyError
from zenthor.channels.webhook.signing import sign_headers
from zenthor.db import give_back
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.settings import get_settings

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    global _client
    with _client_lock:
        if _client is None:
            # One pooled client per process (httpx.Client is thread-safe); keep-alive matters at load.
            _client = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        return _client


def callback_body(lease) -> bytes:
    """The JSON body of the callback for an outbox lease (UTF-8, text kept as is)."""
    return json.dumps(
        {
            "outbound_id": lease.outbound_id,
            "account_id": lease.account_id,
            "chat_id": lease.chat_id,
            "conversation_id": lease.conversation_id,
            "in_reply_to": lease.in_reply_to,
            "text": lease.text,
        },
        ensure_ascii=False,
    ).encode("utf-8")


def send_webhook(lease) -> None:
    """POST one reply to the account's callback URL; raise :class:`SendError` unless it answered 2xx."""
    settings = get_settings()
    try:
        account = find_account(lease.account_id, settings)
    except SecretKeyError as error:
        emit(
            ev.WEBHOOK_SECRET_KEY_ERROR,
            outbound_id=lease.outbound_id,
            account_id=lease.account_id[:128],
            setting="ZENTHOR_SECRET_KEY",
            error=str(error)[:300],
        )
        raise SendError(f"ZENTHOR_SECRET_KEY: cannot read the account's secrets: {error}") from None
    if account is None:
        raise SendError(f"unknown webhook account {lease.account_id[:128]!r}: nowhere to send its reply")
    if not account.secrets:
        raise SendError(f"webhook account {lease.account_id[:128]!r} has no live secret to sign with")
    if not account.callback_url:
        raise SendError(f"webhook account {lease.account_id[:128]!r} has no callback URL")
    give_back()  # the account is read: no connection held through the HTTP call
    body = callback_body(lease)
    key = str(lease.outbound_id)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Idempotency-Key": key,
        "X-Zenthor-Provider-Message-Id": lease.provider_message_id,
        # Signed at each attempt: a retry keeps the id and carries a fresh timestamp. One signature
        # per live secret (newest first), so a receiver still on the old one verifies in the grace.
        **sign_headers(account.secrets, body, msg_id=key),
    }
    try:
        response = _http().post(
            account.callback_url, content=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT_S
        )
    except httpx.HTTPError as error:
        raise SendError(f"callback failed: {type(error).__name__}: {str(error)[:150]}") from None
    if not 200 <= response.status_code < 300:
        raise SendError(f"callback answered HTTP {response.status_code}")


def register() -> None:
    """Register the webhook sender: any worker may deliver (queue ``outbound``)."""
    register_sender(CHANNEL, send_webhook)
