"""Assertions on query plans that more than one test reads."""

from __future__ import annotations


def assert_claim_probes_partial_indexes(plan: str) -> None:
    """The claim's two "ahead in line" probes use their partial indexes, and nothing is scanned
    whole: the older pending job through ``agent_job_pending_fifo``, a processing one through a
    processing-only index."""
    scans = {
        line.split(" on agent_job ")[-1].split()[0]: line
        for line in plan.splitlines()
        if " on agent_job " in line
    }
    assert "agent_job_pending_fifo" in scans["older"], plan
    processing_only = ("agent_job_one_processing_per_conversation", "agent_job_processing_locked_until")
    assert any(index in scans["busy"] for index in processing_only), plan
    assert "Seq Scan" not in plan, plan


def claim_params(job_id: int, *, mode: str = "collect") -> dict[str, object]:
    """Every parameter of ``job_statements.CLAIM``, for ``EXPLAIN``: a fresh token, and the queue
    mode (by default ``collect``, so the plan includes the batch's scans too)."""
    import uuid

    return {
        "job_id": job_id,
        "worker": "w",
        "token": str(uuid.uuid4()),
        "lock_ms": 1000,
        "legacy_ms": 1000,
        "modes": "{}",
        "mode": mode,
        "collect_max": 20,
    }


def assert_batch_uses_the_fifo_index(plan: str) -> None:
    """The collect batch's scan of the jobs behind the head (``behind``) goes through
    ``agent_job_pending_fifo`` too."""
    lines = [
        line for line in plan.splitlines() if " on agent_job p " in line or line.endswith(" on agent_job p")
    ]
    assert lines and all("agent_job_pending_fifo" in line for line in lines), plan
