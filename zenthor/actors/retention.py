"""Wiring of retention into the sweep (imported by ``zenthor.actors``).

Every sweep run deletes finished rows older than ``RETENTION_DAYS`` (and messages older than
``MESSAGE_RETENTION_DAYS``, when set), at most :data:`~zenthor.queue.retention.SWEEP_MAX_BATCHES`
batches per table; the next run goes on. The statements live in :mod:`zenthor.queue.retention`.
"""

from __future__ import annotations

from zenthor.actors.sweep import register_step
from zenthor.queue.retention import RetentionPolicy, finish_run, prune


def retention_step() -> dict[str, int]:
    """The sweep step: prune a bounded amount, emit ``queue.retention.pruned``; returns
    ``pruned_jobs``, ``pruned_outbox``, ... for the sweep's log."""
    policy = RetentionPolicy.from_settings()
    counts = prune(policy)
    finish_run(counts, policy, trigger="sweep")
    return {f"pruned_{table}": count for table, count in counts.as_dict().items()}


# zenthor.actors imports this module last: retention runs after the steps users wait on.
register_step("retention", retention_step)
