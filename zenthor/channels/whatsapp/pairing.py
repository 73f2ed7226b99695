"""Pair a WhatsApp account: a QR code in the terminal, or a pair code for a phone number.

Pairing takes the account lease like a runtime does (no runtime may hold the account's session
open while a new device is linked to it), but also works on an account that is ``logged_out``:
that is what it is for. Our own timeout (``WHATSAPP_PAIR_TIMEOUT_S``): neonize only prints.
On success the account's JID is recorded and its state reset, so standbys connect again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from zenthor.channels.whatsapp import CHANNEL
from zenthor.channels.whatsapp.term import LeaseKeeper, Term, TermCounters
from zenthor.channels.whatsapp.transport import ConnectionEvent, Transport, TransportError, TransportHandlers
from zenthor.db import database
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue.channel_leases import (
    AccountRefused,
    acquire_account,
    release_account,
    reset_operator_state,
)


@dataclass(frozen=True)
class PairResult:
    """How pairing ended: ``paired`` (with ``jid``), ``timed_out``, ``failed`` or ``busy``."""

    outcome: str
    jid: str | None = None
    detail: str | None = None


class PairingSession:
    """One pairing attempt: collects the transport's QR and pairing events."""

    def __init__(self, account_id: str, show_qr: Callable[[str], None]) -> None:
        self.account_id = account_id
        self.show_qr = show_qr
        self.done = threading.Event()
        self.result: PairResult | None = None

    def on_connection(self, event: ConnectionEvent) -> None:
        if event.kind == "qr" and event.reason:
            emit(ev.WA_PAIRING, account_id=self.account_id, state="qr", jid=None, detail=None)
            self.show_qr(event.reason)
        elif event.kind == "pair_success":
            self.finish(PairResult("paired", jid=event.jid))
        elif event.kind == "pair_error":
            self.finish(PairResult("failed", detail=event.reason))
        elif event.kind in ("logged_out", "temporary_ban", "client_outdated"):
            self.finish(PairResult("failed", detail=f"{event.kind} {event.reason or ''}".strip()))

    def finish(self, result: PairResult) -> None:
        if self.result is None:
            self.result = result
        self.done.set()


def pair_account(
    account_id: str,
    owner_id: str,
    make_transport: Callable[[], Transport],
    *,
    auth_mode: str,
    lease_ttl_ms: int,
    timeout_s: float,
    show_qr: Callable[[str], None],
    show_code: Callable[[str], None],
    phone: str | None = None,
) -> PairResult:
    """Pair the account under its lease; returns how it ended (never raises for a refusal)."""
    with database.connection_context():
        lease = acquire_account(
            CHANNEL, account_id, owner_id, ttl_ms=lease_ttl_ms, auth_mode=auth_mode, for_pairing=True
        )
    if isinstance(lease, AccountRefused):
        return PairResult("busy", detail=f"the account is owned by {lease.holder}: stop its runtime first")
    emit(ev.WA_PAIRING, account_id=account_id, state="started", jid=None, detail="phone" if phone else "qr")
    session = PairingSession(account_id, show_qr)
    # Pairing can outlast the lease TTL: keep the lease while the operator scans.
    term = Term(lease, lease_ttl_ms)
    keeper = LeaseKeeper(
        term,
        heartbeat_ms=max(lease_ttl_ms // 3, 100),
        on_lost=lambda why: session.finish(PairResult("failed", detail=f"lost the account lease ({why})")),
        counters=TermCounters(),
    )
    keeper.start()
    transport = make_transport()
    try:
        transport.connect(TransportHandlers(on_message=lambda _m: None, on_connection=session.on_connection))
        if phone:
            code = transport.pair_phone(phone)
            emit(ev.WA_PAIRING, account_id=account_id, state="code", jid=None, detail=None)
            show_code(code)
        else:
            transport.start_pairing()
        deadline = time.monotonic() + timeout_s
        while not session.done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
        result = session.result or PairResult("timed_out", detail=f"no pairing within {timeout_s:.0f}s")
    except TransportError as error:
        result = PairResult("failed", detail=str(error))
    finally:
        term.end("paired")
        # Release only once the pairing connection is closed (bounded): a runtime that takes the
        # account at once must not meet a second live socket of the same device (440).
        closer = threading.Thread(target=transport.stop, name="wa-pair-stop", daemon=True)
        closer.start()
        closer.join(timeout=15)
    with database.connection_context():
        if result.outcome == "paired":
            reset_operator_state(CHANNEL, account_id, state="standby", device_jid=result.jid)
        release_account(lease)
    state = {"paired": "succeeded"}.get(result.outcome, result.outcome)
    emit(ev.WA_PAIRING, account_id=account_id, state=state, jid=result.jid, detail=result.detail)
    return result
