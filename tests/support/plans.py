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
