"""``zenthor replay FILE.jsonl``: re-submit recorded inbound events; duplicates are skipped."""

from __future__ import annotations

import click

from zenthor.cli.common import bootstrap


@click.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def replay_command(path: str) -> None:
    """Accept every inbound in PATH (one JSON object per line) and print the counts."""
    bootstrap("replay", log_level="WARNING")  # the summary below is the output, not a line per message
    import zenthor.actors  # noqa: F401 - declares the actors, so accept can publish dispatch
    from zenthor.ingress.replay import replay_lines

    with click.open_file(path, encoding="utf-8") as lines:
        report = replay_lines(lines)
    click.echo(
        f"accepted {report.accepted}, duplicates skipped {report.duplicate}, answers {report.answer}, "
        f"commands {report.command}, ignored {report.ignored}, invalid {report.invalid}"
    )
    for error in report.errors:
        click.echo(f"  {error}", err=True)
    if report.invalid:
        raise SystemExit(1)
