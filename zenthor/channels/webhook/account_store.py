"""The ``webhook_account`` table: add, rotate, list, remove, and read an account's live secrets.

Secrets are stored encrypted (:mod:`~zenthor.channels.webhook.secret_box`), newest first; a
rotation keeps the old ones until their ``expires_at``, after which they are ignored on read and
dropped at the next rotation. Times are UTC ISO strings inside the JSON list, taken from the
database's clock (``now()``) both when written and when compared, so a grace lasts as long on
every gateway whatever the hosts' clocks say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

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


def _db_now() -> datetime:
    # The database's clock, not this host's: the CLI host writes expires_at and every gateway
    # compares it, so one clock has to decide.
    return execute("SELECT now()")[0][0]


def _live(entries: list[dict], now: datetime) -> list[dict]:
    return [e for e in entries if not e.get("expires_at") or datetime.fromisoformat(e["expires_at"]) > now]


def _entry(secret: str, now: datetime, settings: Settings | None, expires_at: datetime | None = None) -> dict:
    return {
        "secret": secret_box.encrypt(secret, settings),
        "created_at": now.isoformat(),
        "expires_at": expires_at.isoformat() if expires_at else None,
    }


@dataclass(frozen=True)
class Versioned:
    """An account as read, with what tells whether it is still the stored one: ``version`` is a
    hash of the whole row, ``live_until`` the earliest ``expires_at`` of its live secrets (None:
    none expires), both compared on the database (:data:`STILL_STORED`)."""

    account: StoredAccount
    version: str
    live_until: datetime | None


# The row is unchanged (any UPDATE of any column changes the hash, a removal drops the row) and no
# secret live when it was read has expired since, on the database's clock. The parameters are
# named for a statement that carries other parameters too.
VERSION_OF_ROW = "md5(webhook_account::text)"
STILL_STORED = (
    "EXISTS (SELECT 1 FROM webhook_account WHERE account_id = %(stored_account)s "
    f"AND {VERSION_OF_ROW} = %(stored_version)s) "
    "AND (%(stored_live_until)s::timestamptz IS NULL OR %(stored_live_until)s::timestamptz > now())"
)
STILL_ABSENT = "NOT EXISTS (SELECT 1 FROM webhook_account WHERE account_id = %(stored_account)s)"


def load(account_id: str, settings: Settings | None = None) -> StoredAccount | None:
    """The account ``account_id`` with its live secrets, or None (reads Postgres)."""
    versioned = load_versioned(account_id, settings)
    return versioned.account if versioned is not None else None


def load_versioned(account_id: str, settings: Settings | None = None) -> Versioned | None:
    """:func:`load` with the row's version and the time its first live secret expires, so a
    cached copy can be checked (:data:`STILL_STORED`) without reading it again."""
    rows = execute(
        f"SELECT secrets, callback_url, contact_policy, allow_from, now(), {VERSION_OF_ROW} "
        "FROM webhook_account WHERE account_id = %s",
        (account_id,),
    )
    if not rows:
        return None
    entries, callback_url, policy, allow_from, now, version = rows[0]
    settings = settings or get_settings()
    live = _live(entries, now)
    secrets = tuple(secret_box.decrypt(e["secret"], settings, account_id=account_id) for e in live)
    expiries = [datetime.fromisoformat(e["expires_at"]) for e in live if e.get("expires_at")]
    return Versioned(
        StoredAccount(account_id, secrets, callback_url, policy, allow_from),
        version,
        min(expiries) if expiries else None,
    )


def check_secret_key(settings: Settings | None = None) -> int:
    """The number of stored accounts, once every live stored secret decrypts with
    ``ZENTHOR_SECRET_KEY`` (or ``ZENTHOR_SECRET_KEY_PREVIOUS``);
    :class:`~zenthor.channels.webhook.secret_box.SecretKeyError` naming the setting otherwise.
    Every process that serves or signs for these accounts (gateway, worker) checks this at start.
    Expired entries are skipped: nothing reads them, and one left from an older key must not stop
    a start."""
    rows = execute("SELECT account_id, secrets, now() FROM webhook_account")
    for account_id, entries, now in rows:
        for entry in _live(entries, now):
            secret_box.decrypt(entry["secret"], settings, account_id=account_id)
    return len(rows)


def _check_key_before_writing(settings: Settings | None, account_id: str | None = None) -> None:
    """Decrypt one live stored entry (``account_id``'s if it has one, else any account's), so a
    wrong ``ZENTHOR_SECRET_KEY`` in the operator's shell is refused before it writes a secret no
    gateway can read. Nothing stored yet: any key is the right one."""
    rows = execute(
        "SELECT account_id, secrets, now() FROM webhook_account "
        "WHERE jsonb_array_length(secrets) > 0 ORDER BY account_id = %s DESC, account_id",
        (account_id or "",),
    )
    for row_account, entries, now in rows:
        live = _live(entries, now)
        if live:
            secret_box.decrypt(live[0]["secret"], settings, account_id=row_account)
            return
    if rows:
        # Only expired entries are stored: no readable proof either way, but the key must at least
        # be set (encrypt() says so by name).
        secret_box.encrypt("", settings)


def add_account(
    account_id: str,
    *,
    callback_url: str | None = None,
    contact_policy: str = "open",
    allow_from: str = "",
    settings: Settings | None = None,
    carry_secret: str | None = None,
    carry_for: timedelta = timedelta(hours=24),
) -> str:
    """Create ``account_id`` with a new secret; returns the secret (shown once, stored encrypted).

    ``carry_secret`` (the ``WEBHOOK_SECRET`` of the shortcut account this row replaces) is kept as
    an old secret for ``carry_for``, so its senders keep verifying while they move to the new one.
    """
    secret = new_secret()
    with database.atomic():
        _check_key_before_writing(settings)
        now = _db_now()
        entries = [_entry(secret, now, settings)]
        if carry_secret and carry_for.total_seconds() > 0:
            entries.append(_entry(carry_secret, now, settings, expires_at=now + carry_for))
        created = (
            AccountRow.insert(
                account_id=account_id,
                secrets=entries,
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
    with database.atomic():
        row = AccountRow.select().where(AccountRow.account_id == account_id).for_update().first()
        if row is None:
            raise AccountError(f"unknown webhook account {account_id!r} (add it with add-account)")
        _check_key_before_writing(settings, account_id)
        now = _db_now()
        lapse = now + keep_old_for
        kept = []
        for entry in _live(list(row.secrets), now):
            expires = datetime.fromisoformat(entry["expires_at"]) if entry.get("expires_at") else None
            if keep_old_for.total_seconds() > 0:
                kept.append({**entry, "expires_at": min(lapse, expires or lapse).isoformat()})
        AccountRow.update(secrets=[_entry(secret, now, settings), *kept], updated_at=now).where(
            AccountRow.account_id == account_id
        ).execute()
    return secret


def reencrypt_all(settings: Settings | None = None) -> tuple[int, int]:
    """Encrypt every live stored secret again under ``ZENTHOR_SECRET_KEY`` (each readable with it
    or ``ZENTHOR_SECRET_KEY_PREVIOUS``) and drop expired entries, one account per transaction;
    returns (accounts, secrets) rewritten. Refuses (SecretKeyError) before writing anything of an
    account one of whose secrets neither key reads."""
    accounts = entries_done = 0
    for (account_id,) in execute("SELECT account_id FROM webhook_account ORDER BY account_id"):
        with database.atomic():
            rows = execute(
                "SELECT secrets, now() FROM webhook_account WHERE account_id = %s FOR UPDATE", (account_id,)
            )
            if not rows:
                continue  # removed meanwhile
            entries, now = rows[0]
            rewritten = [
                {**e, "secret": secret_box.reencrypt(e["secret"], settings, account_id=account_id)}
                for e in _live(entries, now)
            ]
            AccountRow.update(secrets=rewritten, updated_at=now).where(
                AccountRow.account_id == account_id
            ).execute()
        accounts += 1
        entries_done += len(rewritten)
    return accounts, entries_done


def remove_account(account_id: str) -> None:
    """Delete ``account_id``: its requests are refused (404) and its replies not sent from now on."""
    with database.atomic():
        deleted = AccountRow.delete().where(AccountRow.account_id == account_id).execute()
        execute("DELETE FROM webhook_sender_bucket WHERE account_id = %s", (account_id,))
    if not deleted:
        raise AccountError(f"unknown webhook account {account_id!r}")


def list_accounts() -> list[dict]:
    """Every account with its policy, callback URL and its live secrets' times (no secret)."""
    now = _db_now()
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
