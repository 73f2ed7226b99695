"""``zenthor ops``: what an operator runs during an incident (see ops/runbook.md)."""

from __future__ import annotations

import json

import click

from zenthor.cli.common import bootstrap


@click.group("ops")
def ops() -> None:
    """Inspect and repair the job queue."""


@ops.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def status(as_json: bool) -> None:
    """Jobs per status, oldest pending age, expired leases, lease holders, last sweep, and the
    health verdict of /healthz: exits 1 when unhealthy (for a cron or a probe)."""
    settings = bootstrap("ops")
    from zenthor.broker import broker
    from zenthor.queue.channel_leases import accounts_snapshot
    from zenthor.queue.health import health_checks
    from zenthor.queue.stats import queue_snapshot

    healthy, checks = health_checks(
        broker,
        sweep_max_age_s=settings.HEALTH_SWEEP_MAX_AGE_S,
        pending_max_age_s=settings.HEALTH_PENDING_MAX_AGE_S,
    )
    snapshot = queue_snapshot()
    snapshot["health"] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    snapshot["channel_accounts"] = [
        {k: a[k] for k in ("channel", "account_id", "state", "owner_id", "lease_held", "expires_in_s")}
        for a in accounts_snapshot()
    ]
    if as_json:
        click.echo(json.dumps(snapshot, default=str, sort_keys=True))
        raise SystemExit(0 if healthy else 1)
    click.echo("health:      " + ("ok" if healthy else "UNHEALTHY"))
    for name, verdict in checks.items():
        if verdict != "ok":
            click.echo(f"  {name}: {verdict}")
    jobs = snapshot["jobs"]
    click.echo("jobs:        " + "  ".join(f"{k}={v}" for k, v in jobs.items()))
    age = snapshot["oldest_pending_age_s"]
    click.echo(f"oldest pending: {'-' if age is None else f'{age:.1f}s'}")
    click.echo(f"expired leases: {snapshot['expired_leases']}   (the sweep requeues them)")
    click.echo(f"processing conversations: {snapshot['processing_conversations']}")
    if snapshot["conversations_with_two_processing"]:
        click.echo(
            f"!! conversations with two processing jobs: {snapshot['conversations_with_two_processing']}"
        )
    for holder in snapshot["lease_holders"]:
        click.echo(f"  holder {holder['processor_id']}: {holder['processing']} processing")
    click.echo("outbox:      " + ("  ".join(f"{k}={v}" for k, v in snapshot["outbox"].items()) or "empty"))
    for account in snapshot["channel_accounts"]:
        owner = account["owner_id"] if account["lease_held"] else "nobody"
        click.echo(f"{account['channel']} {account['account_id']}: {account['state']}, owner {owner}")
    sweep = snapshot["last_sweep"]
    if sweep is None or sweep["finished_at"] is None:
        click.echo("last sweep:  never (is `zenthor scheduler` running?)")
    else:
        click.echo(
            f"last sweep:  {sweep['finished_at']} ({sweep['age_s']}s ago, {sweep['trigger']}) {sweep['result']}"
        )
    if not healthy:
        raise SystemExit(1)


@ops.command("requeue-stale")
def requeue_stale_command() -> None:
    """Take back expired leases now and re-publish their jobs (what the sweep does)."""
    bootstrap("ops")
    import zenthor.actors  # noqa: F401 - declares the actors on the broker
    from zenthor.actors.sweep import sweep_leases

    counts = sweep_leases()
    click.echo(
        f"requeued {counts['requeued']}, failed {counts['failed']} (last attempt), "
        f"re-published {counts['republished']}"
    )


@ops.command("retry-job")
@click.argument("job_id", type=int)
def retry_job(job_id: int) -> None:
    """Give a failed job fresh attempts and dispatch it again."""
    bootstrap("ops")
    import zenthor.actors  # noqa: F401 - declares the actors on the broker
    from zenthor.actors.publish import publish_dispatch
    from zenthor.queue import retry_failed

    if not retry_failed(job_id):
        from zenthor.db import execute

        rows = execute("SELECT status FROM agent_job WHERE id = %s", (job_id,))
        if not rows:
            raise click.ClickException(f"job {job_id} does not exist")
        raise click.ClickException(f"job {job_id} is {rows[0][0]}, not failed (see `zenthor ops status`)")
    published = publish_dispatch(job_id)
    click.echo(f"job {job_id} is pending again" + ("" if published else " (publish failed: the sweep will)"))
