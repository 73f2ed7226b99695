"""``zenthor whatsapp``: run an account's runtime, pair it, see its state, move its session."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from zenthor.cli.common import bootstrap
from zenthor.cli.whatsapp_auth import migrate_auth_command
from zenthor.settings import Settings, SettingsError, worker_id


@click.group("whatsapp")
def whatsapp() -> None:
    """The WhatsApp channel (one owner per account; more runtimes wait as standby)."""


whatsapp.add_command(migrate_auth_command)


def _runtime_config(settings: Settings, account_id: str):
    from zenthor.channels.whatsapp.delivery import DeliveryConfig
    from zenthor.channels.whatsapp.factory import client_version
    from zenthor.channels.whatsapp.inbound import InboundConfig
    from zenthor.channels.whatsapp.runtime import RuntimeConfig

    return RuntimeConfig(
        account_id=account_id,
        owner_id=worker_id(),
        auth_mode=settings.WHATSAPP_AUTH_MODE,
        lease_ttl_ms=settings.WHATSAPP_LEASE_TTL_MS,
        heartbeat_ms=settings.WHATSAPP_HEARTBEAT_MS,
        standby_retry_ms=settings.WHATSAPP_STANDBY_RETRY_MS,
        replaced_holdoff_ms=settings.WHATSAPP_REPLACED_HOLDOFF_MS,
        stop_timeout_s=settings.WHATSAPP_STOP_TIMEOUT_S,
        shutdown_grace_s=settings.WHATSAPP_SHUTDOWN_GRACE_S,
        reconnect_base_ms=settings.WHATSAPP_RECONNECT_BASE_MS,
        reconnect_max_ms=settings.WHATSAPP_RECONNECT_MAX_MS,
        outbound_max_attempts=settings.OUTBOUND_MAX_ATTEMPTS,
        presence_poll_s=settings.WHATSAPP_PRESENCE_POLL_MS / 1000.0,
        client_version=client_version(settings),
        delivery=DeliveryConfig(
            poll_s=settings.WHATSAPP_OUTBOX_POLL_MS / 1000.0,
            lock_ms=settings.OUTBOUND_LOCK_MS,
            per_chat_per_min=settings.WHATSAPP_RATE_PER_CHAT_PER_MIN,
            per_account_per_min=settings.WHATSAPP_RATE_PER_ACCOUNT_PER_MIN,
        ),
        inbound=InboundConfig(
            account_id=account_id,
            groups=settings.WHATSAPP_GROUPS,
            unsupported_reply=settings.WHATSAPP_UNSUPPORTED_REPLY or None,
            spool_path=Path(settings.WHATSAPP_AUTH_DIR) / f"{account_id}.spool.jsonl",
        ),
    )


def _factory_or_exit(settings: Settings, account_id: str):
    from zenthor.channels.whatsapp.auth_store import validate_account_id
    from zenthor.channels.whatsapp.factory import transport_factory

    try:
        validate_account_id(account_id)
        return transport_factory(settings, account_id)
    except (SettingsError, ValueError) as error:
        sys.stderr.write(f"zenthor: {error}\n")
        raise SystemExit(2) from None


@whatsapp.command("run")
@click.option("--account", "account_id", default=None, help="Account id (default: WHATSAPP_ACCOUNT_ID).")
def run_command(account_id: str | None) -> None:
    """Own the account (or wait as its standby) until SIGTERM."""
    settings = bootstrap(
        "whatsapp", require_database=False, long_running=True
    )  # waits for Postgres as standby
    account_id = account_id or settings.WHATSAPP_ACCOUNT_ID
    factory = _factory_or_exit(settings, account_id)
    import zenthor.actors  # noqa: F401 - declares the actors, so accept() can publish dispatch
    from zenthor.actors.publish import publish_dispatch
    from zenthor.channels.whatsapp.factory import session_check
    from zenthor.channels.whatsapp.fake_transport import parse_inbound_line
    from zenthor.channels.whatsapp.metrics import serve_runtime_metrics
    from zenthor.channels.whatsapp.runtime import WhatsAppRuntime

    runtime = WhatsAppRuntime(
        _runtime_config(settings, account_id),
        factory,
        publish=publish_dispatch,
        spool_parser=parse_inbound_line,
        has_session=session_check(settings, account_id),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runtime.shutdown())
    if settings.WHATSAPP_METRICS_PORT:
        serve_runtime_metrics(runtime, settings.WHATSAPP_METRICS_PORT, settings.WHATSAPP_METRICS_HOST)
    status = runtime.run()
    if status != 0:
        # A connection that would not close may keep neonize's own threads alive forever:
        # leave now, and let the supervisor start a fresh process.
        logging.shutdown()
        os._exit(status)
    raise SystemExit(status)


@whatsapp.command("pair")
@click.option("--account", "account_id", default=None, help="Account id (default: WHATSAPP_ACCOUNT_ID).")
@click.option("--phone", default=None, help="Pair with a code for this phone number instead of a QR code.")
def pair_command(account_id: str | None, phone: str | None) -> None:
    """Link this account to a WhatsApp number (stop its runtimes first)."""
    settings = bootstrap("whatsapp")
    account_id = account_id or settings.WHATSAPP_ACCOUNT_ID
    factory = _factory_or_exit(settings, account_id)
    from zenthor.channels.whatsapp.pairing import pair_account

    def show_qr(data: str) -> None:
        import segno

        click.echo("Scan this with WhatsApp (Settings ▸ Linked devices ▸ Link a device):")
        segno.make(data, error="l").terminal(compact=True)

    result = pair_account(
        account_id,
        worker_id(),
        lambda: factory(None),
        auth_mode=settings.WHATSAPP_AUTH_MODE,
        lease_ttl_ms=settings.WHATSAPP_LEASE_TTL_MS,
        timeout_s=settings.WHATSAPP_PAIR_TIMEOUT_S,
        show_qr=show_qr,
        show_code=lambda code: click.echo(f"On the phone: Linked devices ▸ Link with phone number ▸ {code}"),
        phone=phone,
    )
    if result.outcome != "paired":
        raise click.ClickException(f"pairing {result.outcome}: {result.detail or ''}".strip())
    click.echo(f"paired account {account_id} as {result.jid}")


@whatsapp.command("status")
@click.option("--account", "account_id", default=None, help="Only this account.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def status_command(account_id: str | None, as_json: bool) -> None:
    """Per account: owner, lease expiry, state, auth mode, JID, last inbound and outbound."""
    bootstrap("whatsapp")
    from zenthor.queue.channel_leases import accounts_snapshot
    from zenthor.queue.stats import whatsapp_outbox_counts

    accounts = accounts_snapshot("whatsapp", account_id)
    for account in accounts:
        account["outbox"] = whatsapp_outbox_counts(account["account_id"])
    if as_json:
        click.echo(json.dumps({"accounts": accounts}, default=str, sort_keys=True))
        return
    if not accounts:
        click.echo("no WhatsApp account has run yet (start one: zenthor whatsapp run --account ID)")
        return
    for a in accounts:
        owner = f"{a['owner_id']} (lease {a['expires_in_s']}s left)" if a["lease_held"] else "nobody"
        click.echo(f"account {a['account_id']}: {a['state']}  owner: {owner}  term {a['lease_term']}")
        click.echo(
            f"  auth: {a['auth_mode']}  jid: {a['device_jid'] or '-'}  client: {a['client_version'] or '-'}"
        )
        click.echo(
            f"  last inbound: {_age(a['last_inbound_age_s'])}  last outbound: {_age(a['last_outbound_age_s'])}"
        )
        outbox = "  ".join(f"{k}={v}" for k, v in a["outbox"].items()) or "empty"
        click.echo(
            f"  outbox: {outbox}  resent after unknown outcome: {a['resends_total']}  "
            f"rate-limited: {a['rate_limited_total']}"
        )
        if a["banned_until"] and a["state"] == "banned":
            click.echo(f"  banned until {a['banned_until']} (code {a['ban_code']})")
        if a["last_error"]:
            click.echo(f"  last error: {a['last_error']}")


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f}s ago"
