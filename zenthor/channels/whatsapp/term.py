"""One term of ownership of an account, and the heartbeat that keeps it.

A :class:`Term` answers one question for every send: may this process send for the account right
now? Only while the term is not ended *and* the local deadline has not passed. The local deadline
is the monotonic time at which the last successful heartbeat was *sent*, plus the lease TTL, less
a margin: the database set ``expires_at`` to its ``now()`` + TTL at some moment after that, so
the local deadline never outlives the database's. A process paused past its lease (SIGSTOP, a long
GC, a frozen VM) finds on waking that its deadline passed and refuses before touching anything.

:class:`LeaseKeeper` is the term's heartbeat thread (one per term, shaped like dramatiq's
TimeLimit middleware thread): one UPDATE every ``WHATSAPP_HEARTBEAT_MS``, fenced by the token; a
refused heartbeat or a passed deadline ends the term.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from zenthor.channels.whatsapp.db_hiccup import database_hiccup
from zenthor.db import database
from zenthor.queue.channel_leases import AccountLease, heartbeat_account

_MARGIN_S = 0.5  # clock-rate drift between this host and the database over one TTL


class Term:
    """This process's ownership of one account, from acquisition until it ends."""

    def __init__(self, lease: AccountLease, ttl_ms: int, *, started_at: float | None = None) -> None:
        self.lease = lease
        self.ttl_s = ttl_ms / 1000.0
        self._deadline = (started_at if started_at is not None else time.monotonic()) + self.ttl_s - _MARGIN_S
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self.end_reason: str | None = None

    @property
    def token(self) -> str:
        return self.lease.token

    def extend(self, sent_at_monotonic: float) -> None:
        """A heartbeat sent at ``sent_at_monotonic`` succeeded."""
        with self._lock:
            self._deadline = max(self._deadline, sent_at_monotonic + self.ttl_s - _MARGIN_S)

    def expired(self) -> bool:
        """True once the local deadline has passed."""
        with self._lock:
            return time.monotonic() >= self._deadline

    def may_send(self) -> bool:
        """True while this process owns the account: the check before every send."""
        return not self._ended.is_set() and not self.expired()

    def end(self, reason: str) -> bool:
        """End the term (sends refused from now on); True for the call that ended it."""
        with self._lock:
            if self._ended.is_set():
                return False
            self.end_reason = reason
            self._ended.set()
            return True

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the term ends (or ``timeout``); True when it has."""
        return self._ended.wait(timeout)


class TermCounters:
    """What the runtime flushes to the account row with each heartbeat (no extra statements)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate_limited = 0
        self.rate_limited_total = 0
        self.last_inbound: float | None = None  # wall-clock epoch seconds
        self.last_outbound: float | None = None

    def count_rate_limited(self) -> None:
        with self._lock:
            self._rate_limited += 1
            self.rate_limited_total += 1

    def take(self) -> tuple[int, float | None, float | None]:
        """The unflushed count (reset) and the last inbound/outbound times."""
        with self._lock:
            pending, self._rate_limited = self._rate_limited, 0
            return pending, self.last_inbound, self.last_outbound

    def give_back(self, rate_limited: int) -> None:
        """A heartbeat failed: flush these next time."""
        with self._lock:
            self._rate_limited += rate_limited


class LeaseKeeper(threading.Thread):
    """Heartbeats the term's lease; ends the term when the lease is refused or runs out."""

    def __init__(
        self,
        term: Term,
        *,
        heartbeat_ms: int,
        on_lost: Callable[[str], None],
        counters: TermCounters,
    ) -> None:
        super().__init__(name=f"wa-lease-{term.lease.account_id}", daemon=True)
        self.term = term
        self.interval_s = heartbeat_ms / 1000.0
        self.on_lost = on_lost
        self.counters = counters

    def run(self) -> None:
        try:
            while not self.term.wait_ended(self.interval_s):
                if self.term.expired():
                    self.on_lost("expired")  # paused past the lease, or the database was unreachable
                    return
                sent_at = time.monotonic()
                rate_limited, last_inbound, last_outbound = self.counters.take()
                try:
                    kept = heartbeat_account(
                        self.term.lease,
                        ttl_ms=int(self.term.ttl_s * 1000),
                        rate_limited=rate_limited,
                        last_inbound=_as_time(last_inbound),
                        last_outbound=_as_time(last_outbound),
                    )
                except Exception as error:  # noqa: BLE001 - the database may come back before expiry
                    self.counters.give_back(rate_limited)
                    database_hiccup("whatsapp_heartbeat", error)
                    continue
                if not kept:
                    self.on_lost("heartbeat_refused")
                    return
                self.term.extend(sent_at)
        finally:
            if not database.is_closed():
                database.close()


def _as_time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None
