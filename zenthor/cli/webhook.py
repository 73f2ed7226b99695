"""``zenthor webhook``: webhook accounts and their secrets (see ops/runbook.md).

Each account has its own secrets (Standard Webhooks ``whsec_...``), stored encrypted with
``ZENTHOR_SECRET_KEY``; a new secret is printed once and never again.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta

import click

from zenthor.cli.common import bootstrap

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds; :class:`click.BadParameter` otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 24h, 30m, 90s or 7d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _account_id(_ctx, _param, value: str) -> str:
    if not value.strip() or len(value) > 128 or "/" in value:
        raise click.BadParameter("must be 1 to 128 characters, without '/'")
    return value


def _fail(error: Exception) -> None:
    sys.stderr.write(f"zenthor: {error}\n")
    raise SystemExit(2)


def check_secret_key_or_exit(settings) -> int:
    """The number of webhook accounts once ``ZENTHOR_SECRET_KEY`` reads every live stored secret;
    else one line naming the setting on stderr and exit status 2. The start-up check of every
    process that verifies or signs for the accounts (``zenthor gateway``, ``zenthor worker``)."""
    from zenthor.channels.webhook.account_store import check_secret_key
    from zenthor.channels.webhook.secret_box import SecretKeyError
    from zenthor.db import database

    try:
        with database.connection_context():
            return check_secret_key(settings)
    except SecretKeyError as error:
        _fail(error)
    raise AssertionError("unreachable")


@click.group("webhook")
def webhook() -> None:
    """Webhook accounts: add, rotate a secret, list, remove, re-encrypt."""


@webhook.command("add-account")
@click.argument("account_id", callback=_account_id)
@click.option("--callback-url", default=None, help="Where this account's replies are POSTed.")
@click.option(
    "--contact-policy",
    type=click.Choice(["open", "allowlist", "disabled"]),
    default=None,
    help="Who is answered on this account (default: open; for WEBHOOK_DEFAULT_ACCOUNT, "
    "WEBHOOK_CONTACT_POLICY).",
)
@click.option("--allow-from", default=None, help="Allowed sender ids, comma-separated (allowlist).")
@click.option(
    "--keep-old-for",
    default="24h",
    show_default=True,
    help="For WEBHOOK_DEFAULT_ACCOUNT while WEBHOOK_SECRET is set: how long that secret still "
    "verifies (and signs replies) beside the new one (0: at once refused).",
)
def add_account_command(
    account_id: str,
    callback_url: str | None,
    contact_policy: str | None,
    allow_from: str | None,
    keep_old_for: str,
) -> None:
    """Create ACCOUNT_ID and print its secret (shown once: give it to the sender now).

    Adding WEBHOOK_DEFAULT_ACCOUNT while WEBHOOK_SECRET is set replaces the shortcut at once: its
    secret is carried into the new account for --keep-old-for, and its callback URL and contact
    policy unless given, so no sender or receiver breaks meanwhile."""
    keep = parse_duration(keep_old_for)
    settings = bootstrap("cli")
    from zenthor.channels.webhook.account_store import AccountError, add_account
    from zenthor.channels.webhook.secret_box import SecretKeyError

    replaces_shortcut = bool(settings.WEBHOOK_SECRET) and account_id == settings.WEBHOOK_DEFAULT_ACCOUNT
    if replaces_shortcut:
        callback_url = callback_url or settings.WEBHOOK_CALLBACK_URL
        contact_policy = contact_policy or settings.WEBHOOK_CONTACT_POLICY
        allow_from = settings.WEBHOOK_ALLOW_FROM if allow_from is None else allow_from
    try:
        secret = add_account(
            account_id,
            callback_url=callback_url,
            contact_policy=contact_policy or "open",
            allow_from=allow_from or "",
            settings=settings,
            carry_secret=settings.WEBHOOK_SECRET if replaces_shortcut else None,
            carry_for=keep,
        )
    except (AccountError, SecretKeyError) as error:
        _fail(error)
    click.echo(secret)
    click.echo(f"account {account_id} added; the secret above is shown once", err=True)
    if replaces_shortcut:
        kept = (
            f"WEBHOOK_SECRET still verifies and signs replies for {keep_old_for}"
            if keep.total_seconds() > 0
            else "WEBHOOK_SECRET no longer verifies (--keep-old-for 0)"
        )
        click.echo(
            f"this account replaces the WEBHOOK_SECRET shortcut from now on: {kept}; callback "
            f"{callback_url or '-'}, policy {contact_policy}. Move the sender to the new secret, "
            "then unset WEBHOOK_SECRET and WEBHOOK_CALLBACK_URL",
            err=True,
        )
    elif account_id == settings.WEBHOOK_DEFAULT_ACCOUNT:
        # The shell may lack the gateways' WEBHOOK_SECRET: then nothing was carried over.
        click.echo(
            "note: WEBHOOK_SECRET is not set here, so nothing was carried over; if the gateways "
            "have it, this account replaced it just now (see ops/runbook.md, rotate the shortcut)",
            err=True,
        )


@webhook.command("rotate-secret")
@click.argument("account_id", callback=_account_id)
@click.option(
    "--keep-old-for",
    default="24h",
    show_default=True,
    help="How long the old secret(s) still verify (0: at once refused).",
)
def rotate_secret_command(account_id: str, keep_old_for: str) -> None:
    """Give ACCOUNT_ID a new secret and print it once; the old one verifies until it lapses."""
    keep = parse_duration(keep_old_for)
    settings = bootstrap("cli")
    from zenthor.channels.webhook.account_store import AccountError, rotate_secret
    from zenthor.channels.webhook.secret_box import SecretKeyError

    try:
        secret = rotate_secret(account_id, keep_old_for=keep, settings=settings)
    except (AccountError, SecretKeyError) as error:
        _fail(error)
    click.echo(secret)
    click.echo(
        f"account {account_id}: new secret above (shown once); old secrets verify for {keep_old_for} more",
        err=True,
    )


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array (for scripts).")
def list_command(as_json: bool) -> None:
    """Every account: callback URL, contact policy and when its live secrets were made (no secret)."""
    bootstrap("cli")
    from zenthor.channels.webhook.account_store import list_accounts

    accounts = list_accounts()
    if as_json:
        click.echo(json.dumps(accounts, sort_keys=True))
        return
    if not accounts:
        click.echo("no webhook accounts (WEBHOOK_SECRET serves WEBHOOK_DEFAULT_ACCOUNT only)")
    for account in accounts:
        secrets = ", ".join(
            f"{s['created_at']}" + (f" (until {s['expires_at']})" if s["expires_at"] else "")
            for s in account["secrets"]
        )
        click.echo(
            f"{account['account_id']}  policy={account['contact_policy']}  "
            f"callback={account['callback_url'] or '-'}  secrets: {secrets}"
        )


@webhook.command("reencrypt")
def reencrypt_command() -> None:
    """Encrypt every stored secret again under ZENTHOR_SECRET_KEY (after changing the key: the old
    one as ZENTHOR_SECRET_KEY_PREVIOUS reads them); expired secrets are dropped."""
    settings = bootstrap("cli")
    from zenthor.channels.webhook.account_store import reencrypt_all
    from zenthor.channels.webhook.secret_box import SecretKeyError

    try:
        accounts, secrets = reencrypt_all(settings)
    except SecretKeyError as error:
        _fail(error)
    click.echo(f"{secrets} secret(s) of {accounts} account(s) now encrypted under ZENTHOR_SECRET_KEY")
    if settings.ZENTHOR_SECRET_KEY_PREVIOUS:
        click.echo(
            "once every gateway and worker runs with this ZENTHOR_SECRET_KEY, unset ZENTHOR_SECRET_KEY_PREVIOUS",
            err=True,
        )


@webhook.command("remove-account")
@click.argument("account_id", callback=_account_id)
def remove_account_command(account_id: str) -> None:
    """Delete ACCOUNT_ID: its requests get 404 and its pending replies are no longer sent."""
    bootstrap("cli")
    from zenthor.channels.webhook.account_store import AccountError, remove_account

    try:
        remove_account(account_id)
    except AccountError as error:
        _fail(error)
    click.echo(f"account {account_id} removed")
