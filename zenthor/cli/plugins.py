"""``zenthor plugins``: which plugins run, and why the others don't."""

from __future__ import annotations

import json
from typing import Any

import click

from zenthor.cli.common import bootstrap


@click.group("plugins")
def plugins() -> None:
    """Inspect the plugins and their diagnostics."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@click.option("--fresh", is_flag=True, help="Run a new load cycle first instead of showing the last one.")
def list_command(as_json: bool, fresh: bool) -> None:
    """Id, version, source, status and diagnostics of every plugin (the last load cycle)."""
    bootstrap("plugins")
    from zenthor.plugins.diagnostics import read_statuses
    from zenthor.plugins.registry import load_plugins

    problems: list[dict[str, Any]] = []
    rows = [] if fresh else read_statuses()
    if not rows:
        report = load_plugins()
        problems = [p.as_dict() for p in report.problems]
        rows = read_statuses() if report.load_cycle is not None else [r.as_dict() for r in report.records]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "problems": problems}, default=str, sort_keys=True))
        return
    cycle = rows[0].get("load_cycle") if rows else None
    click.echo(f"load cycle {cycle if cycle is not None else '-'}")
    click.echo(f"{'id':28s} {'version':10s} {'source':11s} status")
    for row in rows:
        click.echo(f"{row['id']:28s} {row['version'] or '-':10s} {row['source']:11s} {row['status']}")
        for diagnostic in row["diagnostics"]:
            if diagnostic.get("severity") == "info" and row["status"] == "activated":
                continue
            click.echo(f"    {_line(diagnostic)}")
    for problem in problems:
        click.echo(f"! {_line(problem)}")


@plugins.command("doctor")
def doctor_command() -> None:
    """Run a load cycle; exit 1 when an enabled plugin is not activated or the config is broken."""
    bootstrap("plugins")
    from zenthor.plugins.registry import load_plugins

    report = load_plugins()
    failing = report.not_activated()
    errors = [p for p in report.problems if p.severity == "error"]
    for problem in report.problems:
        click.echo(f"{problem.severity}: {problem}")
    for record in failing:
        click.echo(f"{record.plugin_id} ({record.source}, {record.location}) is {record.status}:")
        for diagnostic in record.diagnostics:
            click.echo(f"    {diagnostic}")
    activated = sum(1 for r in report.records if r.status == "activated")
    click.echo(
        f"{activated} plugin(s) activated, {len(report.tools)} tool(s); "
        f"{len(failing)} enabled plugin(s) not activated; load cycle {report.load_cycle}"
    )
    if failing or errors:
        raise SystemExit(1)


def _line(diagnostic: dict[str, Any]) -> str:
    text = f"{diagnostic.get('severity', 'error')}: {diagnostic['path']}: {diagnostic['message']}"
    return f"{text} (expected {diagnostic['expected']})" if diagnostic.get("expected") else text
