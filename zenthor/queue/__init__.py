"""Every lease statement (claim, heartbeat, complete, fail, release, sweep) and nothing else.

This package is the only code that writes the lease columns of ``agent_job`` (and, with the
outbox, of ``outbound_message``). It calls nothing above ``zenthor.db`` and the models.
"""

from zenthor.queue.jobs import (
    ClaimRefused,
    Enqueued,
    FailOutcome,
    Lease,
    LeaseLost,
    StaleJob,
    announce_claim,
    claim,
    close_awaiting,
    complete,
    completion_committed,
    enqueue,
    enqueue_job,
    fail,
    heartbeat,
    next_pending_job,
    release,
    release_after_lost_session,
    republish_candidates,
    requeue_stale,
    resume_job,
    retry_failed,
)

__all__ = [
    "ClaimRefused",
    "Enqueued",
    "FailOutcome",
    "Lease",
    "LeaseLost",
    "StaleJob",
    "announce_claim",
    "claim",
    "close_awaiting",
    "complete",
    "completion_committed",
    "enqueue",
    "enqueue_job",
    "fail",
    "heartbeat",
    "next_pending_job",
    "release",
    "release_after_lost_session",
    "republish_candidates",
    "requeue_stale",
    "resume_job",
    "retry_failed",
]
