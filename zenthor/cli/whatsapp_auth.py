"""``zenthor whatsapp migrate-auth``: move an account's local WhatsApp session into Postgres."""

from __future__ import annotations

from pathlib import Path

import click

from zenthor.cli.common import bootstrap


@click.command("migrate-auth")
@click.option(
    "--account",
    "account_id",
    default=None,
    metavar="ID",
    help="The WhatsApp account (default: WHATSAPP_ACCOUNT_ID).",
)
@click.option(
    "--from",
    "source",
    default=None,
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The local SQLite session (default: <WHATSAPP_AUTH_DIR>/<account>.sqlite3).",
)
@click.option("--force", is_flag=True, help="Replace a device the Postgres store already holds.")
def migrate_auth_command(account_id: str | None, source: Path | None, force: bool) -> None:
    """Copy a local session into the account's Postgres store, in one transaction.

    The local file is only read. Stop the account's runtime first: whatsmeow writes to the session
    while it is connected.
    """
    settings = bootstrap("whatsapp")
    from zenthor.channels.whatsapp.auth_store import AuthStoreError, migrate_auth, store_location

    account_id = account_id or getattr(settings, "WHATSAPP_ACCOUNT_ID", "default")
    auth_dir = getattr(settings, "WHATSAPP_AUTH_DIR", "var/whatsapp")
    try:
        target = store_location(
            account_id, mode="postgres", auth_dir=auth_dir, database_url=settings.DATABASE_URL
        )
        if source is None:
            local = store_location(
                account_id, mode="local", auth_dir=auth_dir, database_url=settings.DATABASE_URL
            )
            source = local.path
        assert source is not None
        report = migrate_auth(account_id, source, target, force=force)
    except (ValueError, AuthStoreError) as error:
        raise click.ClickException(" ".join(str(error).split())) from None

    click.echo(f"migrated the WhatsApp session of account {report.account_id}")
    click.echo(f"  from {report.source} (left unchanged)")
    click.echo(f"  to   {report.target}")
    click.echo(f"  whatsmeow schema version {report.version[0]} (compat {report.version[1]})")
    click.echo(f"  device(s) read back by whatsmeow: {', '.join(report.devices)}")
    if report.replaced_devices:
        click.echo(f"  replaced device(s): {', '.join(report.replaced_devices)}")
    if report.cleared:
        cleared = ", ".join(f"{table} {rows}" for table, rows in report.cleared.items())
        click.echo(f"  rows deleted from the target first: {cleared}")
    click.echo("  rows copied:")
    width = max(len(table) for table in report.tables)
    for table, rows in report.tables.items():
        click.echo(f"    {table:<{width}} {rows:>7}")
    click.echo(f"  total {report.total_rows} rows in {len(report.tables)} tables")
    if report.skipped_tables:
        click.echo(f"  not copied (in one store only): {', '.join(report.skipped_tables)}")
    if getattr(settings, "WHATSAPP_AUTH_MODE", "local") != "postgres":
        click.echo("next: set WHATSAPP_AUTH_MODE=postgres so the runtime uses this store")
