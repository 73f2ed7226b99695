"""``zenthor migrate``: apply the numbered schema migrations."""

from __future__ import annotations

import click

from zenthor.cli.common import bootstrap


@click.command("migrate")
@click.option("--status", "show_status", is_flag=True, help="List migrations and whether they ran.")
def migrate_command(show_status: bool) -> None:
    """Apply pending schema migrations (safe to run from several places at once)."""
    bootstrap("migrate")
    from zenthor.db import database
    from zenthor.migrations import migrate, runner

    if show_status:
        with database.connection_context():
            for migration in runner().status():
                state = "applied " + migration.applied.isoformat() if migration.applied else "pending"
                click.echo(f"{migration.name:40s} {state}")
        return
    applied = migrate()
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("schema is up to date")
