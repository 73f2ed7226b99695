"""The RabbitMQ broker and its middleware, set before any actor is declared.

Publishing uses publisher confirms (``confirm_delivery=True``): ``send`` returns only once
RabbitMQ has the message, and raises when it refuses or is unreachable. The AMQP connection
heartbeat is set in the URL so a dead peer is noticed even while an actor runs for minutes.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import dramatiq
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from periodiq import PeriodiqMiddleware

from zenthor.encoding import GuardedJSONEncoder
from zenthor.middleware.db_connection import DbConnection
from zenthor.middleware.heartbeat import LeaseHeartbeat
from zenthor.middleware.idle_publisher import IdleAwareRabbitmqBroker
from zenthor.observability.worker_metrics import prepare_worker_metrics
from zenthor.settings import settings_or_exit


def with_heartbeat(url: str, heartbeat_s: int) -> str:
    """Add ``heartbeat=`` to each AMQP URL that does not set one already."""
    parts = []
    for part in url.split(";"):
        parsed = urlparse(part)
        query = dict(parse_qsl(parsed.query))
        query.setdefault("heartbeat", str(heartbeat_s))
        query.setdefault("blocked_connection_timeout", "30")
        parts.append(urlunparse(parsed._replace(query=urlencode(query))))
    return ";".join(parts)


def build_broker() -> tuple[IdleAwareRabbitmqBroker, LeaseHeartbeat]:
    """A RabbitMQ broker with Dramatiq's default middleware, ours, and periodiq's (and, in a worker
    process group with ``WORKER_METRICS_PORT`` set, Dramatiq's Prometheus middleware)."""
    settings = settings_or_exit()
    heartbeat = LeaseHeartbeat(interval_ms=settings.AGENT_JOB_HEARTBEAT_MS)
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=settings.DISPATCH_TIME_LIMIT_MS),
        # Before ShutdownNotifications: on warm shutdown the process stops taking leases and
        # releases what it holds before Dramatiq interrupts the running actors.
        heartbeat,
        ShutdownNotifications(),
        Callbacks(),
        CurrentMessage(),
        Pipelines(),
        Retries(max_retries=5, min_backoff=500, max_backoff=30_000),
        DbConnection(),
        PeriodiqMiddleware(skip_delay=30),
    ]
    metrics = prepare_worker_metrics()
    if metrics is not None:
        # Only in a `dramatiq zenthor.actors` process group with WORKER_METRICS_PORT set, and
        # imported only then: Dramatiq's module reads its directory from the environment (and
        # creates it) at import, and prepare_worker_metrics has just set it.
        from zenthor.middleware.worker_metrics import WorkerMetrics

        try:
            # First, so that its timing wraps every other middleware's work on the message.
            middleware.insert(0, WorkerMetrics(metrics))
        except RuntimeError as error:  # imported too early: run without metrics, say why
            logging.getLogger("zenthor.worker_metrics").error(
                "worker metrics are off: %s", error, extra={"event": "worker.metrics_unavailable"}
            )
    rabbit = IdleAwareRabbitmqBroker(
        url=with_heartbeat(settings.RABBITMQ_URL, settings.RABBITMQ_HEARTBEAT_S),
        confirm_delivery=True,
        middleware=middleware,
        # RabbitMQ closes a connection after two missed heartbeats; replace one idle for half that.
        max_idle_s=settings.RABBITMQ_HEARTBEAT_S / 2,
    )
    return rabbit, heartbeat


dramatiq.set_encoder(GuardedJSONEncoder())
broker, lease_heartbeat = build_broker()
dramatiq.set_broker(broker)
