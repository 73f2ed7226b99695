"""Rows written without lease fields (by an older version) stay valid and are handled."""

from __future__ import annotations

from tests.support.factories import make_conversation
from zenthor.db import execute
from zenthor.models import AgentJob
from zenthor.queue import Lease, claim, requeue_stale


def insert_legacy(conversation_id: int, status: str, age: str) -> int:
    """An INSERT naming only the columns an older version knew about."""
    rows = execute(
        "INSERT INTO agent_job (conversation_id, status, created_at) "
        "VALUES (%s, %s, now() - %s::interval) RETURNING id",
        (conversation_id, status, age),
    )
    return rows[0][0]


def test_a_legacy_pending_row_is_claimed_like_any_other():
    job_id = insert_legacy(make_conversation(), "pending", "1 minute")
    row = AgentJob.get_by_id(job_id)
    assert (row.attempts, row.max_attempts, row.lease_token, row.locked_until) == (0, 3, None, None)
    assert isinstance(claim(job_id, "w"), Lease)


def test_a_legacy_processing_row_is_stale_only_after_the_legacy_window(settings_env):
    settings_env(AGENT_JOB_LEGACY_WINDOW_MS=60_000)
    old = insert_legacy(make_conversation("old"), "processing", "5 minutes")
    recent = insert_legacy(make_conversation("recent"), "processing", "10 seconds")
    assert claim(recent, "w").reason == "held"  # inside the window: someone may still own it
    stale = requeue_stale()
    assert [s.job_id for s in stale] == [old]
    assert AgentJob.get_by_id(old).status == "pending"
    assert AgentJob.get_by_id(recent).status == "processing"
    lease = claim(old, "w")
    assert isinstance(lease, Lease) and lease.attempt == 2
