"""Every lease statement on ``channel_account``: one owner per channel account (invariant I7).

A runtime takes the account's row as a lease (owner id, fresh ``lease_token``, ``expires_at`` on
the database clock) *before* it opens the account's connection, heartbeats it, and releases it on a
clean stop. A lease is taken only when the row has no live lease (``expires_at`` passed or none);
a heartbeat is accepted only while the lease is live and names the token, so a process paused past
its lease finds it gone even when nobody has taken it yet. Every write about the account's
connection names the token too: a stale owner changes nothing.

An account can also refuse every owner for a while: a temporary ban (``banned_until``), a hold-off
after another connection replaced ours (``hold_until``), or a state that needs an operator
(``logged_out``; ``outdated`` for the client version that saw it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from zenthor.db import database, execute

# States that need an operator (pairing again, upgrading) before any runtime connects.
OPERATOR_STATES = ("logged_out", "outdated")

_ENSURE_ROW = """
INSERT INTO channel_account (channel, account_id, auth_mode, state)
VALUES (%(channel)s, %(account)s, %(auth_mode)s, 'standby')
ON CONFLICT ON CONSTRAINT channel_account_channel_account_key DO NOTHING
"""

_LOCK_ROW = """
SELECT owner_id, lease_token IS NOT NULL AND expires_at > now() AS live,
       greatest(0, extract(epoch FROM expires_at - now()) * 1000)::bigint AS expires_in_ms,
       state, client_version, device_jid,
       banned_until > now() AS banned, hold_until > now() AS held,
       lease_token IS NOT NULL AS had_token
  FROM channel_account WHERE channel = %(channel)s AND account_id = %(account)s
   FOR UPDATE
"""

_TAKE = """
UPDATE channel_account
   SET owner_id = %(owner)s, lease_token = %(token)s::uuid,
       expires_at = now() + %(ttl_ms)s * interval '1 millisecond', heartbeat_at = now(),
       lease_term = lease_term + 1, auth_mode = %(auth_mode)s,
       client_version = CASE WHEN %(pairing)s THEN client_version ELSE %(version)s END,
       state = CASE WHEN %(pairing)s THEN state ELSE 'connecting' END,
       hold_until = CASE WHEN %(pairing)s THEN hold_until END, updated_at = now()
 WHERE channel = %(channel)s AND account_id = %(account)s
RETURNING lease_term, device_jid
"""

_HEARTBEAT = """
UPDATE channel_account
   SET expires_at = now() + %(ttl_ms)s * interval '1 millisecond', heartbeat_at = now(),
       rate_limited_total = rate_limited_total + %(rate_limited)s,
       last_inbound_at = coalesce(%(last_inbound)s, last_inbound_at),
       last_outbound_at = coalesce(%(last_outbound)s, last_outbound_at)
 WHERE channel = %(channel)s AND account_id = %(account)s
   AND lease_token = %(token)s::uuid AND expires_at > now()
RETURNING expires_at
"""

# owner_id stays: the next owner's acquisition names who handed over (a lease is held only with
# a token).
_RELEASE = """
UPDATE channel_account
   SET lease_token = NULL, expires_at = NULL, updated_at = now(),
       state = CASE WHEN state IN ('logged_out', 'outdated', 'banned', 'replaced') THEN state
                    ELSE 'standby' END,
       hold_until = CASE WHEN %(hold_ms)s > 0
                         THEN now() + %(hold_ms)s * interval '1 millisecond' ELSE hold_until END
 WHERE channel = %(channel)s AND account_id = %(account)s AND lease_token = %(token)s::uuid
RETURNING lease_term
"""

_SET_STATE = """
UPDATE channel_account
   SET state = %(state)s, last_error = %(error)s, updated_at = now(),
       connected_at = CASE WHEN %(state)s = 'connected' THEN now() ELSE connected_at END,
       ban_code = CASE WHEN %(state)s = 'banned' THEN %(ban_code)s ELSE ban_code END,
       banned_until = CASE WHEN %(state)s = 'banned' THEN %(banned_until)s ELSE banned_until END,
       device_jid = coalesce(%(device_jid)s, device_jid)
 WHERE channel = %(channel)s AND account_id = %(account)s AND lease_token = %(token)s::uuid
RETURNING state
"""

_SNAPSHOT = """
SELECT channel, account_id, owner_id, lease_token IS NOT NULL AND expires_at > now() AS live,
       expires_at, extract(epoch FROM expires_at - now()) AS expires_in_s, heartbeat_at, lease_term,
       auth_mode, state, device_jid, client_version, last_error, ban_code, banned_until, hold_until,
       connected_at, last_inbound_at, extract(epoch FROM now() - last_inbound_at),
       last_outbound_at, extract(epoch FROM now() - last_outbound_at), resends_total,
       rate_limited_total, updated_at
  FROM channel_account {where} ORDER BY channel, account_id
"""

_SNAPSHOT_FIELDS = (
    "channel", "account_id", "owner_id", "lease_held", "expires_at", "expires_in_s", "heartbeat_at",
    "lease_term", "auth_mode", "state", "device_jid", "client_version", "last_error", "ban_code",
    "banned_until", "hold_until", "connected_at", "last_inbound_at", "last_inbound_age_s",
    "last_outbound_at", "last_outbound_age_s", "resends_total", "rate_limited_total", "updated_at",
)


@dataclass(frozen=True)
class AccountLease:
    """This process's term as the account's owner: the token every write about it names."""

    channel: str
    account_id: str
    owner_id: str
    token: str
    term: int
    device_jid: str | None
    previous_owner: str | None
    takeover: bool  # the previous owner's lease had run out (it did not release)


@dataclass(frozen=True)
class AccountRefused:
    """Why the lease was not taken: ``held`` (by ``holder``), ``banned``, ``held_off``
    (another connection replaced ours recently) or an operator state (``logged_out``, ``outdated``)."""

    reason: str
    holder: str | None = None
    expires_in_ms: int | None = None


def acquire_account(
    channel: str,
    account_id: str,
    owner_id: str,
    *,
    ttl_ms: int,
    auth_mode: str,
    client_version: str | None = None,
    for_pairing: bool = False,
) -> AccountLease | AccountRefused:
    """Take the account's lease if nobody holds a live one (one short transaction).

    A runtime is refused while the account needs an operator, is banned or is held off;
    ``for_pairing`` (the operator pairing it again) is refused only by a live owner.
    """
    params: dict[str, Any] = {
        "channel": channel,
        "account": account_id,
        "owner": owner_id,
        "token": str(uuid.uuid4()),
        "ttl_ms": ttl_ms,
        "auth_mode": auth_mode,
        "version": client_version,
        "pairing": for_pairing,  # pairing leaves the state as it was unless it succeeds
    }
    with database.atomic():
        execute(_ENSURE_ROW, params)
        holder, live, expires_in_ms, state, version, _jid, banned, held, had_token = execute(_LOCK_ROW, params)[0]
        if live:
            return AccountRefused("held", holder=holder, expires_in_ms=int(expires_in_ms or 0))
        if not for_pairing:
            if state == "logged_out" or (state == "outdated" and version == client_version):
                return AccountRefused(state)
            if banned:
                return AccountRefused("banned")
            if held:
                return AccountRefused("held_off")
        term, device_jid = execute(_TAKE, params)[0]
    return AccountLease(
        channel, account_id, owner_id, params["token"], term, device_jid,
        previous_owner=holder, takeover=bool(had_token),
    )


def heartbeat_account(
    lease: AccountLease,
    *,
    ttl_ms: int,
    rate_limited: int = 0,
    last_inbound: datetime | None = None,
    last_outbound: datetime | None = None,
) -> bool:
    """Extend the lease (and flush the runtime's counters); False when it is gone or ran out."""
    return bool(
        execute(
            _HEARTBEAT,
            {
                "channel": lease.channel,
                "account": lease.account_id,
                "token": lease.token,
                "ttl_ms": ttl_ms,
                "rate_limited": rate_limited,
                "last_inbound": last_inbound,
                "last_outbound": last_outbound,
            },
        )
    )


def release_account(lease: AccountLease, *, hold_ms: int = 0) -> bool:
    """Give the lease back now (a standby takes over at its next try); ``hold_ms`` keeps every
    runtime off the account for a while. False when it was no longer ours."""
    return bool(
        execute(
            _RELEASE,
            {"channel": lease.channel, "account": lease.account_id, "token": lease.token, "hold_ms": hold_ms},
        )
    )


def set_account_state(
    lease: AccountLease,
    state: str,
    *,
    error: str | None = None,
    device_jid: str | None = None,
    ban_code: int | None = None,
    banned_until: datetime | None = None,
) -> bool:
    """Record the connection's state on the row, fenced by the lease token."""
    return bool(
        execute(
            _SET_STATE,
            {
                "channel": lease.channel,
                "account": lease.account_id,
                "token": lease.token,
                "state": state,
                "error": error,
                "device_jid": device_jid,
                "ban_code": ban_code,
                "banned_until": banned_until,
            },
        )
    )


def reset_operator_state(channel: str, account_id: str, *, state: str, device_jid: str | None) -> None:
    """After an operator paired the account again: clear ``logged_out``/``outdated`` and the ban."""
    execute(
        "UPDATE channel_account SET state = %s, device_jid = coalesce(%s, device_jid), last_error = NULL, "
        "ban_code = NULL, banned_until = NULL, hold_until = NULL, updated_at = now() "
        "WHERE channel = %s AND account_id = %s",
        (state, device_jid, channel, account_id),
    )


def note_waiting(channel: str, account_id: str, *, auth_mode: str, why: str) -> None:
    """A runtime waits without taking the account (no paired session within its reach): make the
    account visible in status and health, with why, while nobody owns it."""
    execute(
        "INSERT INTO channel_account (channel, account_id, auth_mode, state, last_error) "
        "VALUES (%s, %s, %s, 'standby', %s) "
        "ON CONFLICT ON CONSTRAINT channel_account_channel_account_key DO UPDATE "
        "SET last_error = EXCLUDED.last_error, updated_at = now() "
        "WHERE channel_account.lease_token IS NULL OR channel_account.expires_at <= now()",
        (channel, account_id, auth_mode, why),
    )


def account_state(channel: str, account_id: str) -> str | None:
    """The account row's state, or None when no runtime ever ran for it."""
    rows = execute(
        "SELECT state FROM channel_account WHERE channel = %s AND account_id = %s", (channel, account_id)
    )
    return rows[0][0] if rows else None


def accounts_snapshot(channel: str | None = None, account_id: str | None = None) -> list[dict[str, Any]]:
    """Every channel account as a dict (``zenthor whatsapp status``, /healthz, /metrics)."""
    clauses, params = [], []
    if channel is not None:
        clauses.append("channel = %s")
        params.append(channel)
    if account_id is not None:
        clauses.append("account_id = %s")
        params.append(account_id)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = execute(_SNAPSHOT.format(where=where), params)
    snapshot = []
    for row in rows:
        item = dict(zip(_SNAPSHOT_FIELDS, row, strict=True))
        for key in ("expires_in_s", "last_inbound_age_s", "last_outbound_age_s"):
            if item[key] is not None:
                item[key] = round(float(item[key]), 1)
        snapshot.append(item)
    return snapshot
