"""The ``webhook_account`` table: add, rotate, list, remove, and read an account's live secrets.

Secrets are stored encrypted (:mod:`~zenthor.channels.webhook.secret_box`), newest first; a
rotation keeps the old ones until their ``expires_at``, after which they are ignored on read and
dropped at the next rotation. Times are UTC ISO strings inside the JSON list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zenthor.channels.webhook import secret_box
from zenthor.channels.webhook.signing import new_secret
from zenthor.db import database, execute
from zenthor.models.webhook_account import WebhookAccount as AccountRow
from zenthor.settings import Settings, get_settings

CONTACT_POLICIES = ("open", "allowlist", "disabled")


class AccountError(ValueError):
    """An account operation that cannot be done (unknown or existing account); the message says why."""


@dataclass(frozen=True)
class StoredAccount:
    """An account row with its live secrets decrypted, newest first."""

    account_id: str
    secrets: tuple[str, ...]
    callback_url: str | None
    contact_policy: str
    allow_from: str


def _now() -> datetime:
    return datetime.now(UTC)


def _live(entries: list[dict], now: datetime) -> list[dict]:
    return [e for e in entries if not e.get("expires_at") or datetime.fromisoformat(e["expires_at"]) > now]


def load(account_id: str, settings: Settings | None = None) -> StoredAccount | None:
    """The account ``account_id`` with its live secrets, or None (reads Postgres)."""
    rows = execute(
        "SELECT secrets, callback_url, contact_policy, allow_from FROM webhook_account WHERE account_id = %s",
        (account_id,),
    )
    if not rows:
        return None
    entries, callback_url, policy, allow_from = rows[0]
    settings = settings or get_settings()
    secrets = tuple(
        secret_box.decrypt(e["secret"], settings, account_id=account_id) for e in _live(entries, _now())
    )
    return StoredAccount(account_id, secrets, callback_url, policy, allow_from)


def check_secret_key(settings: Settings | None = None) -> int:
    """The number of stored accounts, once every stored secret decrypts with ``ZENTHOR_SECRET_KEY``;
    :class:`~zenthor.channels.webhook.secret_box.SecretKeyError` naming the setting otherwise (a
    process that serves or signs for these accounts checks this at start)."""
    rows = execute("SELECT account_id, secrets FROM webhook_account")
    for account_id, entries in rows:
        for entry in entries:
            secret_box.decrypt(entry["secret"], settings, account_id=account_id)
    return len(rows)


def add_account(
    account_id: str,
    *,
    callback_url: str | None = None,
    contact_policy: str = "open",
    allow_from: str = "",
    settings: Settings | None = None,
) -> str:
    """Create ``account_id`` with a new secret; returns the secret (shown once, stored encrypted)."""
    secret = new_secret()
    entry = {
        "secret": secret_box.encrypt(secret, settings),
        "created_at": _now().isoformat(),
        "expires_at": None,
    }
    with database.atomic():
        created = (
            AccountRow.insert(
                account_id=account_id,
                secrets=[entry],
                callback_url=callback_url,
                contact_policy=contact_policy,
                allow_from=allow_from,
            )
            .on_conflict_ignore()
            .execute()
        )
    if not created and AccountRow.get_or_none(AccountRow.account_id == account_id) is not None:
        raise AccountError(
            f"webhook account {account_id!r} already exists (rotate-secret gives it a new secret)"
        )
    return secret


def rotate_secret(account_id: str, *, keep_old_for: timedelta, settings: Settings | None = None) -> str:
    """Give ``account_id`` a new secret; the live old ones verify for ``keep_old_for`` more (never
    longer than they already would). Returns the new secret."""
    secret = new_secret()
    now = _now()
    with database.atomic():
        row = AccountRow.select().where(AccountRow.account_id == account_id).for_update().first()
        if row is None:
            raise AccountError(f"unknown webhook account {account_id!r} (add it with add-account)")
        lapse = now + keep_old_for
        kept = []
        for entry in _live(list(row.secrets), now):
            expires = datetime.fromisoformat(entry["expires_at"]) if entry.get("expires_at") else None
            if keep_old_for.total_seconds() > 0:
                kept.append({**entry, "expires_at": min(lapse, expires or lapse).isoformat()})
        new = {
            "secret": secret_box.encrypt(secret, settings),
            "created_at": now.isoformat(),
            "expires_at": None,
        }
        AccountRow.update(secrets=[new, *kept], updated_at=now).where(
            AccountRow.account_id == account_id
        ).execute()
    return secret


def remove_account(account_id: str) -> None:
    """Delete ``account_id``: its requests are refused (404) and its replies not sent from now on."""
    with database.atomic():
        deleted = AccountRow.delete().where(AccountRow.account_id == account_id).execute()
        execute("DELETE FROM webhook_sender_bucket WHERE account_id = %s", (account_id,))
    if not deleted:
        raise AccountError(f"unknown webhook account {account_id!r}")


def list_accounts() -> list[dict]:
    """Every account with its policy, callback URL and its live secrets' times (no secret)."""
    now = _now()
    accounts = []
    for row in AccountRow.select().order_by(AccountRow.account_id):
        accounts.append(
            {
                "account_id": row.account_id,
                "callback_url": row.callback_url,
                "contact_policy": row.contact_policy,
                "allow_from": row.allow_from,
                "secrets": [
                    {"created_at": e["created_at"], "expires_at": e.get("expires_at")}
                    for e in _live(list(row.secrets), now)
                ],
            }
        )
    return accounts
