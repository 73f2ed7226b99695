"""``zenthor ops``: what an operator runs during an incident (see ops/runbook.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from zenthor.cli.common import bootstrap

if TYPE_CHECKING:
    from zenthor.queue.retention import PruneCounts, RetentionPolicy


@click.group("ops")
def ops() -> None:
    """Inspect and repair the job queue."""


@ops.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def status(as_json: bool) -> None:
    """Jobs per status, oldest pending age, expired leases, lease holders, last sweep, the queue
    modes in force, and the health verdict of /healthz: exits 1 when unhealthy (for a cron or a
    probe)."""
    settings = bootstrap("ops")
    from zenthor.broker import broker
    from zenthor.queue.channel_leases import accounts_snapshot
    from zenthor.queue.health import health_checks
    from zenthor.queue.stats import queue_modes, queue_snapshot

    healthy, checks = health_checks(
        broker,
        sweep_max_age_s=settings.HEALTH_SWEEP_MAX_AGE_S,
        pending_max_age_s=settings.HEALTH_PENDING_MAX_AGE_S,
    )
    snapshot = queue_snapshot()
    snapshot["health"] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    snapshot["queue_modes"] = queue_modes(settings)
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
    _echo_queue_modes(snapshot["queue_modes"])
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
    retention = snapshot["last_retention"]
    if retention is None:
        click.echo(f"retention:   nothing deleted yet (RETENTION_DAYS={settings.RETENTION_DAYS})")
    else:
        counts = retention["counts"]
        tables = ("jobs", "outbox", "approvals", "reminders", "messages")
        deleted = "  ".join(f"{table}={counts.get(table, 0)}" for table in tables)
        click.echo(
            f"retention:   last deleted {retention['finished_at']} ({retention['age_s']}s ago, "
            f"{retention['trigger']}, older than {counts.get('days')} days) {deleted}"
        )
    if not healthy:
        raise SystemExit(1)


def _echo_queue_modes(modes: dict) -> None:
    """The queue modes in force (issue 14) and the conversations that chose their own."""
    from zenthor.ingress.commands import format_ms

    channels = "  ".join(f"{channel}={mode}" for channel, mode in modes["channel_modes"].items())
    click.echo(
        f"queue mode:  {modes['mode']} (QUEUE_MODE)  per channel: {channels or 'none'}  "
        f"collect max {modes['collect_max']}"
    )
    debounce = format_ms(modes["debounce_ms"]) if modes["debounce_ms"] else "off"
    click.echo(
        f"debounce:    {debounce} (QUEUE_DEBOUNCE_MS), a burst waits at most "
        f"{format_ms(modes['debounce_max_ms'])} (QUEUE_DEBOUNCE_MAX_MS)"
    )
    chosen = modes["conversations"]
    own_modes = "  ".join(f"{mode}={n}" for mode, n in chosen["queue_mode"].items()) or "none"
    own_waits = "  ".join(
        f"{format_ms(int(ms)) if ms != '0' else 'off'}={n}" for ms, n in chosen["debounce_ms"].items()
    )
    own_waits = own_waits or "none"
    click.echo(f"conversations' own: /queue {own_modes}   /debounce {own_waits}")


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


@ops.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch",
    type=click.IntRange(10, 50_000),
    default=None,
    help="Rows deleted per statement (default RETENTION_BATCH).",
)
def prune_command(dry_run: bool, batch: int | None) -> None:
    """Delete finished rows older than RETENTION_DAYS now (messages only with MESSAGE_RETENTION_DAYS),
    batch after batch until none is left: what the sweep does a few batches at a time."""
    bootstrap("ops")
    from zenthor.queue.retention import RetentionPolicy, count_prunable, finish_run, prune

    policy = RetentionPolicy.from_settings(batch=batch)
    if dry_run:
        counts = count_prunable(policy)
        finish_run(counts, policy, trigger="ops prune", dry_run=True)
        click.echo("would delete " + _pruned(counts, policy))
        return
    counts = prune(policy, max_batches=None, budget_s=None)
    finish_run(counts, policy, trigger="ops prune")
    click.echo("deleted " + _pruned(counts, policy))


def _pruned(counts: PruneCounts, policy: RetentionPolicy) -> str:
    """What prune counted, as "70,501 jobs, 70,140 outbox rows, ...; messages kept (...)"."""
    rows = (
        f"{counts.jobs:,} jobs, {counts.outbox:,} outbox rows, {counts.approvals:,} approvals, "
        f"{counts.reminders:,} reminders finished more than {policy.days} days ago"
    )
    if policy.message_days is None:
        return rows + "; messages kept (MESSAGE_RETENTION_DAYS not set)"
    return rows + f"; {counts.messages:,} messages older than {policy.message_days} days"


@ops.command("retry-job")
@click.argument("job_id", type=int)
@click.option("--yes", is_flag=True, help="Retry even though newer turns of the chat were answered since.")
def retry_job(job_id: int, yes: bool) -> None:
    """Retry a failed job as a new job at the back of its conversation's line, and dispatch it.

    Says first what it will do; when newer turns of the conversation were answered since, the
    answer would come after them, so it asks for --yes.
    """
    bootstrap("ops")
    import zenthor.actors  # noqa: F401 - declares the actors on the broker
    from zenthor.actors.publish import publish_dispatch
    from zenthor.queue.jobs import RetryRefused, retry_failed, retry_preview, retry_refusal

    preview = retry_preview(job_id)
    refused = retry_refusal(job_id, preview)
    if refused is not None:
        raise click.ClickException(str(refused))
    error = ": ".join(part for part in (preview.error_reason, (preview.error_message or "")[:200]) if part)
    ahead = (
        f"behind {preview.open_ahead} open job{'s' if preview.open_ahead != 1 else ''}"
        if preview.open_ahead
        else "with nothing ahead of it"
    )
    click.echo(
        f"job {job_id} (conversation {preview.conversation_id}) failed: {error or 'no reason recorded'}; "
        f"it will be retried as a new job at the back of the line, {ahead}."
    )
    if preview.answered_since:
        turns = f"{preview.answered_since} newer turn{'s were' if preview.answered_since != 1 else ' was'}"
        click.echo(f"{turns} answered since, so this answer will come after them.")
        if not yes:
            raise click.ClickException("nothing was changed: re-run with --yes to retry it anyway")
    outcome = retry_failed(job_id)
    if isinstance(outcome, RetryRefused):
        raise click.ClickException(str(outcome))
    published = publish_dispatch(outcome.job_id)
    click.echo(
        f"job {job_id} retried as job {outcome.job_id} (pending)"
        + ("" if published else " (publish failed: the sweep will)")
    )
