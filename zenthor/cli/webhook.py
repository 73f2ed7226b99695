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


@click.group("webhook")
def webhook() -> None:
    """Webhook accounts: add, rotate a secret, list, remove."""


@webhook.command("add-account")
@click.argument("account_id", callback=_account_id)
@click.option("--callback-url", default=None, help="Where this account's replies are POSTed.")
@click.option(
    "--contact-policy",
    type=click.Choice(["open", "allowlist", "disabled"]),
    default="open",
    show_default=True,
    help="Who is answered on this account.",
)
@click.option("--allow-from", default="", help="Allowed sender ids, comma-separated (allowlist).")
def add_account_command(
    account_id: str, callback_url: str | None, contact_policy: str, allow_from: str
) -> None:
    """Create ACCOUNT_ID and print its secret (shown once: give it to the sender now)."""
    settings = bootstrap("cli")
    from zenthor.channels.webhook.account_store import AccountError, add_account
    from zenthor.channels.webhook.secret_box import SecretKeyError

    try:
        secret = add_account(
            account_id,
            callback_url=callback_url,
            contact_policy=contact_policy,
            allow_from=allow_from,
            settings=settings,
        )
    except (AccountError, SecretKeyError) as error:
        _fail(error)
    click.echo(secret)
    click.echo(f"account {account_id} added; the secret above is shown once", err=True)


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
