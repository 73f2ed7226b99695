"""Process-local Prometheus metrics.

Counters here count what this process did. Queue depth and lease state come from Postgres at
scrape time (see :func:`zenthor.queue.stats.queue_snapshot`), so they are right however many
workers run.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_TOTAL = Counter("zenthor_events_total", "Typed operational events emitted", ["event"])
CLAIM_SECONDS = Histogram(
    "zenthor_claim_seconds",
    "Time to claim an agent_job lease",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
TURN_SECONDS = Histogram(
    "zenthor_turn_seconds",
    "Duration of an agent turn, claim to completion",
    buckets=(0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
