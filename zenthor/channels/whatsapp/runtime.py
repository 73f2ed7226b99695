"""``zenthor whatsapp run``: own one account at a time, or wait as its standby (invariant I7, docs/architecture.md).

::

    standby ─ try the lease every WHATSAPP_STANDBY_RETRY_MS ─▶ term (this process owns it)
    term:   heartbeat ▸ re-send rows an earlier owner left unrecorded ▸ connect (retry the first
            dial with capped, jittered backoff) ▸ inbound handler, outbox sender, read marks
    end:    lease lost · stream replaced · logged out · banned · client outdated · SIGTERM
            ─▶ sends refused at once ▸ state recorded (while the token is ours) ▸ the connection
               closed off the main path ▸ release (SIGTERM: only once the socket is closed) ▸
               standby again, or exit

The lease is taken *before* the connection opens and every send checks it, so two hosts never
share a session and a host that lost the lease sends nothing even with its socket still open
(whatsmeow reconnects by itself and neonize has no switch to stop it). Inbound messages that still
arrive on a fenced connection are accepted: ingress is idempotent and WhatsApp already has our
receipt for them, so dropping them would lose them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zenthor.channels.whatsapp import CHANNEL
from zenthor.channels.whatsapp.db_hiccup import database_hiccup
from zenthor.channels.whatsapp.delivery import DeliveryConfig, OutboxSender
from zenthor.channels.whatsapp.identity import IdentityBook
from zenthor.channels.whatsapp.inbound import InboundConfig, InboundHandler
from zenthor.channels.whatsapp.presence import PresenceLoop, ReadMarks
from zenthor.channels.whatsapp.term import LeaseKeeper, Term, TermCounters
from zenthor.channels.whatsapp.transport import (
    ConnectFailed,
    ConnectionEvent,
    IncomingMessage,
    Transport,
    TransportHandlers,
)
from zenthor.db import database
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue.channel_leases import (
    AccountLease,
    AccountRefused,
    acquire_account,
    note_waiting,
    release_account,
    set_account_state,
)
from zenthor.queue.channel_outbox import reclaim_unknown_outcome

TransportFactory = Callable[[Term], Transport]
SpoolParser = Callable[[bytes], IncomingMessage]

# Why a term ended, and what the account row says afterwards.
_OPERATOR_ENDS = {"logged_out": "logged_out", "outdated": "outdated", "not_paired": "logged_out"}


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the runtime reads from the settings (built by the CLI)."""

    account_id: str
    owner_id: str
    auth_mode: str
    lease_ttl_ms: int
    heartbeat_ms: int
    standby_retry_ms: int
    replaced_holdoff_ms: int
    stop_timeout_s: float
    shutdown_grace_s: float
    reconnect_base_ms: int
    reconnect_max_ms: int
    outbound_max_attempts: int
    presence_poll_s: float
    client_version: str | None
    delivery: DeliveryConfig
    inbound: InboundConfig


@dataclass
class _Ending:
    """Details of the event that ended a term (filled on the transport's thread)."""

    code: int | None = None
    until: datetime | None = None
    detail: str | None = None


class WhatsAppRuntime:
    """The account's runtime: a loop of standby and terms until :meth:`shutdown`."""

    def __init__(
        self,
        config: RuntimeConfig,
        transport_factory: TransportFactory,
        *,
        publish: Callable[[int], object] | None = None,
        spool_parser: SpoolParser | None = None,
        has_session: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.has_session = has_session
        self.transport_factory = transport_factory
        self.publish = publish
        self.spool_parser = spool_parser
        self.state = "standby"
        self.term: Term | None = None
        self._stop = threading.Event()
        self._ending = _Ending()
        self._standby_reason: str | None = None
        self._inbound: InboundHandler | None = None
        self._counters = TermCounters()
        self._connection: ConnectionThread | None = None
        self._lease_started = time.monotonic()
        # After a local session turned out not to be the account's, wait before trying it again.
        self._unpaired_until = 0.0
        self.terms_served = 0

    # --- public ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop (SIGTERM): end the current term at once and leave the loop."""
        self._stop.set()
        term = self.term
        if term is not None:
            term.end("shutdown")

    def run(self) -> int:
        """Serve the account until :meth:`shutdown`; returns the process exit status."""
        while not self._stop.is_set():
            if self.has_session is not None and not self._session_here():
                if self._standby_reason != "no_session_here":
                    self._note_waiting("no paired session within reach of this host: run zenthor whatsapp pair")
                self._enter_standby(AccountRefused("no_session_here"))
                self._stop.wait(self.config.standby_retry_ms / 1000.0)
                continue
            if time.monotonic() < self._unpaired_until:
                self._enter_standby(AccountRefused("session_mismatch_here"))
                self._stop.wait(self.config.standby_retry_ms / 1000.0)
                continue
            lease = self._try_acquire()
            if lease is None:
                self._stop.wait(self.config.standby_retry_ms / 1000.0)
                continue
            if not self._serve(lease):
                return 75  # the old connection would not close: start over as a fresh process
        return 0

    # --- standby --------------------------------------------------------------------------
    def _note_waiting(self, why: str) -> None:
        try:
            with database.connection_context():
                note_waiting(CHANNEL, self.config.account_id, auth_mode=self.config.auth_mode, why=why)
        except Exception:  # noqa: BLE001 - informational; the standby loop goes on
            pass

    def _session_here(self) -> bool:
        # No paired session within reach (local auth: not on this host): taking the account would
        # only end as "not paired" after dialling WhatsApp for a QR code.
        try:
            return bool(self.has_session and self.has_session())
        except Exception:  # noqa: BLE001 - an unreadable store is no session
            return False

    def _try_acquire(self) -> AccountLease | None:
        started = time.monotonic()
        try:
            with database.connection_context():
                outcome = acquire_account(
                    CHANNEL,
                    self.config.account_id,
                    self.config.owner_id,
                    ttl_ms=self.config.lease_ttl_ms,
                    auth_mode=self.config.auth_mode,
                    client_version=self.config.client_version,
                )
        except Exception as error:  # noqa: BLE001 - the database is away: stay standby, retry
            database_hiccup("whatsapp_acquire", error)
            return None
        if isinstance(outcome, AccountRefused):
            self._enter_standby(outcome)
            return None
        self._lease_started = started
        return outcome

    def _enter_standby(self, refused: AccountRefused) -> None:
        self.state = "standby"
        emit(
            ev.CHANNEL_LEASE_CONTENDED,
            channel=CHANNEL,
            account_id=self.config.account_id,
            owner_id=self.config.owner_id,
            reason=refused.reason,
            holder=refused.holder,
            expires_in_ms=refused.expires_in_ms,
        )
        if refused.reason != self._standby_reason:  # one line per change, not one per retry
            self._standby_reason = refused.reason
            emit(
                ev.CHANNEL_STANDBY,
                channel=CHANNEL,
                account_id=self.config.account_id,
                owner_id=self.config.owner_id,
                reason=refused.reason,
            )

    # --- a term ---------------------------------------------------------------------------
    def _serve(self, lease: AccountLease) -> bool:
        """Own the account until the term ends; False when its connection would not close."""
        term = Term(lease, self.config.lease_ttl_ms, started_at=self._lease_started)
        self.term = term
        self._standby_reason = None
        self._ending = _Ending()
        self.terms_served += 1
        if self._stop.is_set():
            term.end("shutdown")
        emit(
            ev.CHANNEL_LEASE_ACQUIRED,
            channel=CHANNEL,
            account_id=lease.account_id,
            owner_id=lease.owner_id,
            term=lease.term,
            previous_owner=lease.previous_owner,
            takeover=lease.takeover,
        )
        counters = TermCounters()
        keeper = LeaseKeeper(
            term, heartbeat_ms=self.config.heartbeat_ms, on_lost=self._lost(term), counters=counters
        )
        keeper.start()
        self._counters = counters
        connection: ConnectionThread | None = None
        workers: list = []
        try:
            with database.connection_context():
                self._reclaim_unknown(term)
            # The handler exists before the dial: the first events can arrive during connect().
            identities = IdentityBook(lease.account_id, self._phone_for_lid)
            self._inbound = InboundHandler(
                self.config.inbound, identities, own_jids=self._own_jids, publish=self.publish
            )
            connection = self._connect(term)
            if connection is not None:
                transport = connection.transport
                marks = ReadMarks()
                workers = [
                    OutboxSender(term, transport, identities, self.config.delivery, counters, marks),
                    PresenceLoop(
                        term, transport, identities, poll_s=self.config.presence_poll_s, read_marks=marks
                    ),
                ]
                for worker in workers:
                    worker.start()
                if self.spool_parser is not None:
                    self._inbound.replay_spool(self.spool_parser)
            term.wait_ended()
        finally:
            term.end("shutdown" if self._stop.is_set() else "error")
            closed = self._finish(term, connection, workers)
            keeper.join(timeout=self.config.heartbeat_ms / 1000.0 + 5)
            self.term = None
        return closed

    def _own_jids(self) -> tuple[str, ...]:
        connection = self._connection
        return connection.transport.own_jids() if connection is not None else ()

    def _phone_for_lid(self, lid: str) -> str | None:
        connection = self._connection
        return connection.transport.phone_for_lid(lid) if connection is not None else None

    def _lost(self, term: Term) -> Callable[[str], None]:
        def on_lost(why: str) -> None:
            if term.end(f"lease_lost:{why}"):
                emit(
                    ev.CHANNEL_LEASE_LOST,
                    channel=CHANNEL,
                    account_id=term.lease.account_id,
                    owner_id=term.lease.owner_id,
                    term=term.lease.term,
                    reason=why,
                )

        return on_lost

    def _reclaim_unknown(self, term: Term) -> None:
        outcome = reclaim_unknown_outcome(term.lease, max_attempts=self.config.outbound_max_attempts)
        ids = outcome.resend_ids + outcome.failed_ids
        if ids:
            emit(
                ev.WA_OUTBOUND_OUTCOME_UNKNOWN,
                account_id=term.lease.account_id,
                outbound_ids=ids,
                count=len(ids),
                previous_owner=",".join(outcome.previous_owners) or None,
            )
            for outbound_id in outcome.failed_ids:
                emit(ev.OUTBOUND_FAILED, outbound_id=outbound_id, attempts=None, error="outcome unknown, no attempts left")

    def _connect(self, term: Term) -> ConnectionThread | None:
        """Open the connection, retrying a failed first dial; None when the term ended first."""
        attempt = 0
        while not term.ended:
            self._set_state(term, "connecting")
            handlers = TransportHandlers(
                on_message=self._on_message,
                on_connection=lambda event, term=term: self._on_connection(term, event),
                on_malformed=self._on_malformed,
            )
            connection = ConnectionThread(self.transport_factory(term), handlers)
            self._connection = connection
            connection.start()
            connection.dialled.wait()
            if connection.error is None:
                return connection
            if not connection.error.retryable:  # no session in the store: only pairing helps
                self._ending = _Ending(detail=str(connection.error)[:300])
                term.end("not_paired")
                return None
            attempt += 1
            delay_ms = self._backoff_ms(attempt)
            emit(
                ev.WA_CONNECT_RETRY,
                account_id=term.lease.account_id,
                attempt=attempt,
                delay_ms=delay_ms,
                error=str(connection.error)[:200],
            )
            self._set_state(term, "connecting", error=str(connection.error)[:500])
            term.wait_ended(delay_ms / 1000.0)
        return None

    def _backoff_ms(self, attempt: int) -> int:
        ceiling = min(self.config.reconnect_max_ms, self.config.reconnect_base_ms * 2 ** (attempt - 1))
        return int(ceiling * random.uniform(0.5, 1.0))  # "equal jitter": never a thundering herd

    # --- events (on the transport's thread) -----------------------------------------------
    def _on_message(self, incoming: IncomingMessage) -> None:
        handler = self._inbound
        if handler is None:
            return
        handler(incoming)
        self._counters.last_inbound = time.time()

    def _on_malformed(self, what: str, why: str) -> None:
        emit(ev.WA_INBOUND_MALFORMED, account_id=self.config.account_id, what=what, error=why[:300])

    def _on_connection(self, term: Term, event: ConnectionEvent) -> None:
        kind = event.kind
        if kind == "connected":
            connection = self._connection
            own = connection.transport.own_jids() if connection is not None else ()
            self._set_state(term, "connected", device_jid=event.jid or (own[0] if own else None))
        elif kind == "disconnected":
            self._set_state(term, "disconnected")  # whatsmeow reconnects by itself
        elif kind in ("stream_replaced", "logged_out", "client_outdated", "temporary_ban", "qr"):
            reason = {
                "client_outdated": "outdated",
                "temporary_ban": "banned",
                "qr": "not_paired",
            }.get(kind, kind)
            # A QR event's "reason" is the QR payload: never store or log it.
            detail = None if kind == "qr" else event.reason
            self._ending = _Ending(code=event.code, until=event.expires_at, detail=detail)
            if kind == "logged_out":
                emit(
                    ev.WA_LOGGED_OUT,
                    account_id=term.lease.account_id,
                    reason=event.reason,
                    on_connect=event.on_connect,
                )
            term.end(reason)
        elif kind == "connect_failure" and event.code is None:
            # neonize's event loop ended while nobody stopped it: this client is dead (whatsmeow
            # will not reconnect it). End the term; a fresh client is the way back.
            self._ending = _Ending(detail=event.reason)
            term.end("connection_dead")
        else:  # stream_error (515 "restart required" is one), keepalive, connect_failure: transient
            emit(
                ev.WA_CONNECTION_ODDITY,
                account_id=term.lease.account_id,
                kind=kind,
                code=event.code,
                detail=(event.reason or "")[:200] or None,
            )

    def _set_state(
        self, term: Term, state: str, *, error: str | None = None, device_jid: str | None = None
    ) -> None:
        self.state = state
        if not term.ended:  # after the end only _record_end writes, once
            self._write_state(term.lease, state, error=error, device_jid=device_jid)

    def _write_state(
        self, lease: AccountLease, state: str, *, error: str | None = None, device_jid: str | None = None
    ) -> None:
        try:
            with database.connection_context():
                set_account_state(lease, state, error=error, device_jid=device_jid)
        except Exception:  # noqa: BLE001 - the row's state is informational; the lease is what counts
            pass
        emit(ev.WA_CONNECTION, account_id=lease.account_id, state=state, term=lease.term, detail=error)

    # --- the end of a term ----------------------------------------------------------------
    def _finish(self, term: Term, connection: ConnectionThread | None, workers: list) -> bool:
        reason = term.end_reason or "error"
        for worker in workers:
            worker.stop()
        if connection is not None:
            connection.request_stop()
        for worker in workers:
            worker.join(timeout=10)
        with database.connection_context():
            self._record_end(term, reason)
        # self._inbound stays: a message still arriving on the closing connection was already
        # acknowledged to WhatsApp, and accepting it (idempotently) is the only way not to lose it.
        if connection is not None:
            grace = self.config.shutdown_grace_s if reason == "shutdown" else self.config.stop_timeout_s
            connection.join(timeout=grace)
            if connection.is_alive():
                emit(ev.WA_STOP_SLOW, account_id=term.lease.account_id, waited_s=grace)
                # Shutting down: exit without releasing (the lease expires; the socket can never
                # overlap a successor's). Otherwise a fresh process is the only safe next step.
                return reason == "shutdown"
        if reason in ("shutdown", "connection_dead"):
            self._release(term, reason)  # only now: the old socket can never overlap a successor's
        self.state = "standby"
        return True

    def _record_end(self, term: Term, reason: str) -> None:
        lease = term.lease
        ending = self._ending
        if reason.startswith("lease_lost"):
            return  # not ours any more: write nothing about the account
        if reason == "connection_dead":
            self._write_state(lease, "disconnected", error=f"the connection died: {ending.detail or '?'}")
        if reason == "not_paired" and self.config.auth_mode == "local":
            # Only this host lacks the session (local files): say so, and let others own it.
            self._write_state(lease, "standby", error=f"{lease.owner_id} has no paired session file")
            self._release(term, reason)
            self._unpaired_until = time.monotonic() + max(self.config.replaced_holdoff_ms, 1000) / 1000.0
        elif reason in _OPERATOR_ENDS:
            error = {
                "logged_out": f"logged out by WhatsApp ({ending.detail or 'no reason'}): pair again",
                "not_paired": f"no paired session ({ending.detail or 'the store has no device'}): "
                "run zenthor whatsapp pair",
                "outdated": f"client outdated ({self.config.client_version}): upgrade neonize",
            }[reason]
            if reason == "outdated":
                emit(ev.WA_CLIENT_OUTDATED, account_id=lease.account_id, client_version=self.config.client_version)
            self._write_state(lease, _OPERATOR_ENDS[reason], error=error)
            self._release(term, reason)
        elif reason == "banned":
            until = ending.until or datetime.now(UTC) + timedelta(hours=1)
            emit(ev.WA_TEMPORARY_BAN, account_id=lease.account_id, code=ending.code, banned_until=until.isoformat())
            set_account_state(lease, "banned", error="temporary ban", ban_code=ending.code, banned_until=until)
            self._release(term, reason)
        elif reason == "stream_replaced":
            emit(ev.WA_STREAM_REPLACED, account_id=lease.account_id, term=lease.term)
            self._write_state(lease, "replaced", error="another connection of this device took over (440)")
            self._release(term, reason, hold_ms=self.config.replaced_holdoff_ms)

    def _release(self, term: Term, reason: str, *, hold_ms: int = 0) -> None:
        try:
            with database.connection_context():
                released = release_account(term.lease, hold_ms=hold_ms)
        except Exception:  # noqa: BLE001 - then the lease simply expires
            released = False
        if released:
            emit(
                ev.CHANNEL_LEASE_RELEASED,
                channel=CHANNEL,
                account_id=term.lease.account_id,
                owner_id=term.lease.owner_id,
                term=term.lease.term,
                reason=reason,
            )


class ConnectionThread(threading.Thread):
    """Starts and stops one transport from one thread (neonize's ``stop()`` edits unlocked
    global state, and can block for a minute): the runtime's main loop never waits on either."""

    def __init__(self, transport: Transport, handlers: TransportHandlers) -> None:
        super().__init__(name=f"wa-conn-{transport.account_id}", daemon=True)
        self.transport = transport
        self.handlers = handlers
        self.dialled = threading.Event()
        self.error: ConnectFailed | None = None
        self._stop_requested = threading.Event()

    def run(self) -> None:
        try:
            self.transport.connect(self.handlers)
        except ConnectFailed as error:
            self.error = error
            self.dialled.set()
            return
        except Exception as error:  # noqa: BLE001 - an adapter bug counts as a failed dial
            self.error = ConnectFailed(f"{type(error).__name__}: {error}")
            self.dialled.set()
            return
        self.dialled.set()
        self._stop_requested.wait()
        try:
            self.transport.stop()
        except Exception:  # noqa: BLE001 - stopping a broken connection may raise; it is gone anyway
            pass

    def request_stop(self) -> None:
        """Close the connection (from this thread); :meth:`join` to wait for it."""
        self._stop_requested.set()
