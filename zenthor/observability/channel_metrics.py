"""Per-account gauges of channel accounts (WhatsApp), read from Postgres at scrape time.

Right however many runtimes run, on whatever host: the gateway's ``/metrics`` registers
:class:`AccountsCollector` with a function that returns the rows (passed in, so this module
imports nothing above it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATES = (
    "standby",
    "connecting",
    "connected",
    "disconnected",
    "replaced",
    "logged_out",
    "banned",
    "outdated",
)


class AccountsCollector(Collector):
    """Per-account gauges from ``channel_account`` (state, lease held, activity ages, counters)."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        accounts = self.snapshot()
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


def _age(seconds: float | None) -> float:
    return -1.0 if seconds is None else float(seconds)
