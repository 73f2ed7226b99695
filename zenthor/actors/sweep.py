"""The sweep: take back expired leases, re-publish what the broker lost, run housekeeping steps.

periodiq sends ``sweep`` every minute (``periodiq zenthor.actors``); each run then asks for one
delayed ``sweep_recheck`` ``SWEEP_RECHECK_MS`` later, a single chain kept unique by
``sweep_state.next_check_at``, so a dead worker's job is taken again within lease TTL + the
re-check interval. Every step is idempotent: two schedulers firing at once are harmless.

Other parts of the system add housekeeping with :func:`register_step` (pruning dedupe keys,
expiring approvals, due reminders, stuck outbox rows); each step returns counts for the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dramatiq
from periodiq import cron

from zenthor.actors.publish import publish_deliveries, publish_dispatch
from zenthor.agent.replies import WrittenReplies, write_failure_reply
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import StaleJob, next_pending_job, republish_candidates, requeue_stale, sweep_state
from zenthor.settings import get_settings

_logger = logging.getLogger(__name__)

SweepStep = Callable[[], dict[str, int]]
_steps: dict[str, SweepStep] = {}
# The counts SWEEP_COMPLETED carries as fields of their own; every other count goes in ``steps``.
_FIXED_COUNTS = frozenset({"requeued", "failed", "republished", "expired_approvals", "pruned_dedupe"})


def register_step(name: str, step: SweepStep) -> None:
    """Run ``step`` on every sweep after the lease work; it returns counts to log."""
    _steps[name] = step


@dramatiq.actor(queue_name="sweep", max_retries=0, periodic=cron("* * * * *"))
def sweep() -> None:
    """The periodic sweep (every minute, started by periodiq)."""
    run_sweep("periodic")


@dramatiq.actor(queue_name="sweep", max_retries=0)
def sweep_recheck(trigger: str = "recheck") -> None:
    """A sub-minute re-check between periodiq ticks (also sent when a worker boots)."""
    run_sweep(trigger if trigger in ("recheck", "boot", "manual") else "recheck")


def run_sweep(trigger: str) -> dict[str, int]:
    """One sweep pass; returns its counts. Safe to run concurrently with itself."""
    started = time.monotonic()
    sweep_state.record_start(trigger)
    counts = {"requeued": 0, "failed": 0, "republished": 0}
    counts.update(sweep_leases())
    for name, step in list(_steps.items()):
        try:
            for key, value in step().items():
                counts[key] = counts.get(key, 0) + value
        except Exception:  # noqa: BLE001 - one failing step must not stop lease recovery
            _logger.exception("sweep step %s failed", name, extra={"event": "queue.sweep.step_failed"})
    sweep_state.record_finish(counts)
    emit(
        ev.SWEEP_COMPLETED,
        # A sweep that found nothing runs every few seconds: only one that did something is news.
        _level=logging.INFO if any(counts.values()) else logging.DEBUG,
        trigger=trigger,
        requeued=counts["requeued"],
        failed=counts["failed"],
        republished=counts["republished"],
        expired_approvals=counts.get("expired_approvals", 0),
        pruned_dedupe=counts.get("pruned_dedupe", 0),
        # Counts of the other registered steps (reminders_delivered, ...), so none is lost.
        steps={key: value for key, value in counts.items() if key not in _FIXED_COUNTS},
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    schedule_recheck()
    return counts


def sweep_leases() -> dict[str, int]:
    """Requeue expired leases (failing the last attempts with a reply) and re-publish lost nudges."""
    replies: list[WrittenReplies] = []

    def on_failed(job: StaleJob) -> None:
        replies.append(write_failure_reply(job.conversation_id, job.job_id, in_reply_to=job.message_id))

    stale = requeue_stale(on_failed=on_failed)
    for written in replies:
        publish_deliveries(written.outbound_ids, written.channel)
    nudged: set[int] = set()
    for job in stale:
        # The requeued job, or the next one behind a job that just failed for good.
        next_job = next_pending_job(job.conversation_id)
        if next_job is not None and next_job not in nudged:
            nudged.add(next_job)
            publish_dispatch(next_job)
    republished = 0
    for job_id, conversation_id in republish_candidates():
        if job_id in nudged:
            continue
        if publish_dispatch(job_id):
            republished += 1
            emit(ev.JOB_REPUBLISHED, job_id=job_id, conversation_id=conversation_id, reason="unclaimed")
    return {
        "requeued": sum(1 for job in stale if job.status == "pending"),
        "failed": sum(1 for job in stale if job.status == "failed"),
        "republished": republished,
    }


def sweep_if_overdue() -> None:
    """Run the sweep here if its re-check chain is overdue (called from the heartbeat thread)."""
    if sweep_state.claim_overdue(get_settings().SWEEP_RECHECK_MS):
        run_sweep("watchdog")


def schedule_recheck() -> None:
    """Ask for the next sub-minute re-check, unless one is already on its way."""
    delay_ms = get_settings().SWEEP_RECHECK_MS
    if sweep_state.claim_next_check(delay_ms):
        try:
            sweep_recheck.send_with_options(args=("recheck",), delay=delay_ms)
            emit(ev.SWEEP_RECHECK_SCHEDULED, delay_ms=delay_ms)
        except Exception as error:  # noqa: BLE001 - the next periodiq tick restarts the chain
            emit(ev.PUBLISH_FAILED, actor="sweep_recheck", job_id=None, error=str(error)[:200])
