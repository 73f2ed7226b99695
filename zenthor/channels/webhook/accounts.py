"""Which webhook accounts exist, and with what secrets, callback URL and contact policy.

An account is a row of ``webhook_account`` (``zenthor webhook add-account``), or the one-account
shortcut: ``WEBHOOK_SECRET`` (+ ``WEBHOOK_CALLBACK_URL``) serves only the account named by
``WEBHOOK_DEFAULT_ACCOUNT``. A row wins over the shortcut. Any other account id is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from zenthor.channels.webhook import CHANNEL, account_store
from zenthor.ingress.policy import ContactPolicy, policy_for
from zenthor.settings import Settings, get_settings


@dataclass(frozen=True)
class WebhookAccount:
    """One account as the gateway and the sender see it: ``secrets`` newest first (any verifies
    inbound; the newest signs callbacks)."""

    account_id: str
    secrets: tuple[str, ...]
    callback_url: str | None
    policy: ContactPolicy


def shortcut_account(account_id: str, settings: Settings) -> WebhookAccount | None:
    """The ``WEBHOOK_SECRET`` account when ``account_id`` is ``WEBHOOK_DEFAULT_ACCOUNT``, else None."""
    if not settings.WEBHOOK_SECRET or account_id != settings.WEBHOOK_DEFAULT_ACCOUNT:
        return None
    return WebhookAccount(
        account_id, (settings.WEBHOOK_SECRET,), settings.WEBHOOK_CALLBACK_URL, policy_for(CHANNEL, settings)
    )


def find_account(account_id: str, settings: Settings | None = None) -> WebhookAccount | None:
    """The account ``account_id``, or None when it is unknown (reads Postgres: call it with a
    connection open)."""
    settings = settings or get_settings()
    stored = account_store.load(account_id, settings)
    if stored is None:
        return shortcut_account(account_id, settings)
    allow = frozenset(part.strip() for part in stored.allow_from.split(",") if part.strip())
    return WebhookAccount(
        account_id, stored.secrets, stored.callback_url, ContactPolicy(stored.contact_policy, allow)
    )
