"""Prometheus gauges of WhatsApp accounts.

Two views: :class:`AccountsCollector` reads every account's row at scrape time (the gateway's
``/metrics``: right however many runtimes run, on whatever host), and a runtime started with
``WHATSAPP_METRICS_PORT`` serves its own process's view (its state, whether it holds the lease,
and its event counters) with prometheus_client's own HTTP server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from zenthor.queue.channel_leases import accounts_snapshot

STATES = (
    "standby", "connecting", "connected", "disconnected", "replaced", "logged_out", "banned", "outdated",
)


class AccountsCollector(Collector):
    """Per-account gauges from ``channel_account`` (state, lease held, activity ages, counters)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        accounts = accounts_snapshot("whatsapp")
        state = GaugeMetricFamily(
            "zenthor_whatsapp_account_state", "1 for the account's current state", labels=["account", "state"]
        )
        held = GaugeMetricFamily(
            "zenthor_whatsapp_lease_held", "1 when a runtime holds the account's lease", labels=["account"]
        )
        inbound = GaugeMetricFamily(
            "zenthor_whatsapp_last_inbound_age_seconds",
            "seconds since the last inbound message (-1: never)",
            labels=["account"],
        )
        outbound = GaugeMetricFamily(
            "zenthor_whatsapp_last_outbound_age_seconds",
            "seconds since the last reply was sent (-1: never)",
            labels=["account"],
        )
        limited = GaugeMetricFamily(
            "zenthor_whatsapp_rate_limited_total",
            "times replies had to wait for the send rate limit",
            labels=["account"],
        )
        resends = GaugeMetricFamily(
            "zenthor_whatsapp_resends_total",
            "replies sent again after an owner died between sending and recording",
            labels=["account"],
        )
        for account in accounts:
            name = account["account_id"]
            for candidate in STATES:
                state.add_metric([name, candidate], 1.0 if account["state"] == candidate else 0.0)
            held.add_metric([name], 1.0 if account["lease_held"] else 0.0)
            inbound.add_metric([name], _age(account["last_inbound_age_s"]))
            outbound.add_metric([name], _age(account["last_outbound_age_s"]))
            limited.add_metric([name], float(account["rate_limited_total"]))
            resends.add_metric([name], float(account["resends_total"]))
        yield from (state, held, inbound, outbound, limited, resends)


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


def _age(seconds: float | None) -> float:
    return -1.0 if seconds is None else float(seconds)


def serve_runtime_metrics(runtime: Any, port: int, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics (events, its state) on ``host:port`` in a daemon thread."""
    REGISTRY.register(RuntimeCollector(runtime))
    start_http_server(port, addr=host)
