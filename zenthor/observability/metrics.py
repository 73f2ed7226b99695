"""Prometheus metrics counted by this process.

Queue depth and lease state come from Postgres at scrape time (see
:func:`zenthor.queue.stats.queue_depth`), so they are right however many workers run.

``EVENTS_TOTAL`` is in the default registry: every process emits events, and the gateway and a
WhatsApp runtime serve it. The rest only a worker ever moves (claims, turns, model calls,
deliveries, lost leases), so they live in :data:`WORKER_REGISTRY`, which nothing serves directly:
the gateway's ``/metrics`` would only ever show them at zero. In a worker process group with
``WORKER_METRICS_PORT`` set, every value is written to the group's multiprocess directory, and
the group's metrics server sums them across its processes (:mod:`zenthor.observability.worker_metrics`).
"""

from __future__ import annotations

from zenthor.observability.worker_metrics import prepare_worker_metrics

# Before prometheus_client is imported: it picks in-memory or multiprocess values at import.
prepare_worker_metrics()

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402

EVENTS_TOTAL = Counter("zenthor_events_total", "Typed operational events emitted", ["event"])

WORKER_REGISTRY = CollectorRegistry(auto_describe=True)

CLAIM_SECONDS = Histogram(
    "zenthor_claim_seconds",
    "Time to claim an agent_job lease (refused claims included)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=WORKER_REGISTRY,
)
TURN_SECONDS = Histogram(
    "zenthor_turn_seconds",
    "Duration of an agent turn, claim to completion",
    buckets=(0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=WORKER_REGISTRY,
)
TURN_MESSAGES = Histogram(
    "zenthor_turn_messages",
    "User messages one completed turn answered: 1, or more when collect merged the turns queued "
    "behind it (issue 14)",
    buckets=(1, 2, 3, 5, 10, 20, 50),
    registry=WORKER_REGISTRY,
)
DEBOUNCE_HOLD_SECONDS = Histogram(
    "zenthor_debounce_hold_seconds",
    "How long a first attempt of a turn could not be claimed after its message was accepted: the "
    "debounce's hold (a job released at shutdown or re-published after a lost nudge counts its "
    "wait too); not observed when the job was available at once",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 30, 60),
    registry=WORKER_REGISTRY,
)
# livesum: the sum over the group's live processes; a process that stopped is marked dead by
# Dramatiq's middleware and drops out, where "sum" would keep its last value forever.
TURNS_IN_PROGRESS = Gauge(
    "zenthor_turns_in_progress",
    "Turns running now (leases held by this worker group)",
    multiprocess_mode="livesum",
    registry=WORKER_REGISTRY,
)
LEASE_LOSSES = Counter(
    "zenthor_lease_losses_total",
    "Leases found lost by their holder: another worker or the sweep took the row",
    ["lease"],
    registry=WORKER_REGISTRY,
)
# Both series exist from the start, so rate() and alerts see 0 before the first loss.
for _lease in ("agent_job", "outbound"):
    LEASE_LOSSES.labels(lease=_lease)
MODEL_CALL_SECONDS = Histogram(
    "zenthor_model_call_seconds",
    "One HTTP call to the model (each retry is a call); outcome: ok or the error kind",
    ["model", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
    registry=WORKER_REGISTRY,
)
DELIVERIES_TOTAL = Counter(
    "zenthor_deliveries_total",
    "Outbox rows a worker claimed and tried to deliver, by channel and outcome "
    "(sent, retry_scheduled, failed, lease_lost)",
    ["channel", "outcome"],
    registry=WORKER_REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "zenthor_delivery_seconds",
    "Time a channel's sender took to send one outbox row (failures included)",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=WORKER_REGISTRY,
)
