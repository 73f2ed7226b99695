"""Dramatiq's own Prometheus middleware, serving this worker group's metrics where we say.

Import this module only after :func:`zenthor.observability.worker_metrics.prepare_worker_metrics`
returned a config: ``dramatiq.middleware.prometheus`` reads its directory, host and port from the
environment when it is imported (``zenthor.broker`` does so).

Dramatiq's middleware counts messages, errors, retries, dead letters and durations per queue and
actor in each worker process (``dramatiq_*``), and marks a process dead at its shutdown so its
live gauges drop out. Only its exposition server is replaced: Dramatiq's is started in a fork
process that imports nothing of ours, so it would read the master's environment (Dramatiq's
default directory and port 9191) rather than this group's; ours, started the same way,
prepares the same directory first and serves it with prometheus_client's own server.
"""

from __future__ import annotations

from collections.abc import Callable

from dramatiq.middleware import prometheus as dramatiq_prometheus

from zenthor.observability.worker_metrics import WorkerMetricsConfig, serve_worker_metrics


class WorkerMetrics(dramatiq_prometheus.Prometheus):
    """``dramatiq.middleware.prometheus.Prometheus`` with our exposition fork."""

    def __init__(self, config: WorkerMetricsConfig) -> None:
        if dramatiq_prometheus.DB_PATH != str(config.directory):
            raise RuntimeError(
                f"dramatiq.middleware.prometheus was imported before the worker metrics directory "
                f"was set (it uses {dramatiq_prometheus.DB_PATH}, not {config.directory})"
            )
        super().__init__()
        self.config = config

    @property
    def forks(self) -> list[Callable[[], int]]:
        """The group's one metrics server, run by Dramatiq in a fork of the master process."""
        return [serve_worker_metrics]
