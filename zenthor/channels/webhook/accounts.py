"""Which webhook accounts exist, and with what secrets, callback URL and contact policy.

An account is a row of ``webhook_account`` (``zenthor webhook add-account``), or the one-account
shortcut: ``WEBHOOK_SECRET`` (+ ``WEBHOOK_CALLBACK_URL``) serves only the account named by
``WEBHOOK_DEFAULT_ACCOUNT``. A row wins over the shortcut. Any other account id is unknown.

The gateway keeps the accounts it read in an :class:`AccountCache` (one per process), so a request
costs no account read and no decryption. A cached account is never trusted on its own: the accept
transaction checks, in its first statement, that the row is still the one that was read
(:meth:`Cached.precondition`), and a request the cached copy would refuse is decided again on a
fresh read. So a rotation, a removal, a policy change or an expired grace takes effect for the very
next request, as without the cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    cached = load_account(account_id, settings)
    return cached.account if cached is not None else None


@dataclass(frozen=True)
class Cached:
    """An account as the gateway read it, with what proves it is still current: ``version`` is
    the row's hash (None: no row, the ``WEBHOOK_SECRET`` shortcut), ``live_until`` the earliest
    expiry of its live secrets."""

    account: WebhookAccount
    version: str | None
    live_until: datetime | None

    def precondition(self) -> tuple[str, dict[str, Any]]:
        """A SQL condition (with its parameters) that holds while the stored account is still
        this one: :func:`~zenthor.ingress.accept` checks it in the accept transaction."""
        if self.version is None:
            return account_store.STILL_ABSENT, {"stored_account": self.account.account_id}
        return account_store.STILL_STORED, {
            "stored_account": self.account.account_id,
            "stored_version": self.version,
            "stored_live_until": self.live_until,
        }


def load_account(account_id: str, settings: Settings | None = None) -> Cached | None:
    """:func:`find_account` with the version its cached copy is checked against (reads Postgres:
    call it with a connection open)."""
    settings = settings or get_settings()
    stored = account_store.load_versioned(account_id, settings)
    if stored is None:
        shortcut = shortcut_account(account_id, settings)
        return Cached(shortcut, None, None) if shortcut is not None else None
    row = stored.account
    allow = frozenset(part.strip() for part in row.allow_from.split(",") if part.strip())
    account = WebhookAccount(
        account_id, row.secrets, row.callback_url, ContactPolicy(row.contact_policy, allow)
    )
    return Cached(account, stored.version, stored.live_until)


class AccountCache:
    """The accounts one gateway process has read (decrypted), by id; unknown ids are not kept.

    Nothing here expires on a clock: every use is checked against the database where it matters
    (see the module docstring), and :meth:`put` replaces an entry with each fresh read. At most
    ``limit`` accounts are kept (the oldest read goes first).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._entries: dict[str, Cached] = {}
        self._mu = threading.Lock()

    def get(self, account_id: str) -> Cached | None:
        """The cached account, or None when it was never read (or was unknown at the last read)."""
        return self._entries.get(account_id)

    def put(self, account_id: str, cached: Cached | None) -> None:
        """Remember a fresh read; None (unknown now) forgets the account."""
        with self._mu:
            self._entries.pop(account_id, None)
            if cached is None:
                return
            if len(self._entries) >= self.limit:
                self._entries.pop(next(iter(self._entries)))
            self._entries[account_id] = cached
