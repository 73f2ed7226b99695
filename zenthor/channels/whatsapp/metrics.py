"""A WhatsApp runtime's own metrics (``WHATSAPP_METRICS_PORT``): its state, whether it may send,
and its event counters, served with prometheus_client's own HTTP server. Every account's gauges
from Postgres are on the gateway's ``/metrics`` (:mod:`zenthor.observability.channel_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from zenthor.observability.channel_metrics import STATES


class RuntimeCollector(Collector):
    """This runtime process's own view of its account."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        account = self.runtime.config.account_id
        state = GaugeMetricFamily(
            "zenthor_whatsapp_runtime_state", "1 for this process's state", labels=["account", "state"]
        )
        for candidate in STATES:
            state.add_metric([account, candidate], 1.0 if self.runtime.state == candidate else 0.0)
        yield state
        term = self.runtime.term
        owning = GaugeMetricFamily(
            "zenthor_whatsapp_runtime_owns", "1 while this process may send for the account", labels=["account"]
        )
        owning.add_metric([account], 1.0 if term is not None and term.may_send() else 0.0)
        yield owning


def serve_runtime_metrics(runtime: Any, port: int, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics (events, its state) on ``host:port`` in a daemon thread."""
    REGISTRY.register(RuntimeCollector(runtime))
    start_http_server(port, addr=host)
