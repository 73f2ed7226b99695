"""The catalogue of typed operational events, and the one function that emits them.

Every reliability transition is an :class:`Event`: a fixed name and a fixed set of fields, so
dashboards and alerts can rely on them. :func:`emit` refuses a field the event does not declare
(a programming error caught by the tests), logs one JSON line with ``event`` set to the name, and
counts the event in the process's metrics. Message content never appears in an event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from zenthor.observability.metrics import EVENTS_TOTAL

_logger = logging.getLogger("zenthor.events")


@dataclass(frozen=True)
class Event:
    """One kind of operational event: its name, its fields and its log level."""

    name: str
    fields: frozenset[str]
    level: int = logging.INFO
    description: str = ""


CATALOGUE: dict[str, Event] = {}


def event(name: str, *fields: str, level: int = logging.INFO, description: str = "") -> Event:
    """Declare an event in the catalogue (names are unique)."""
    if name in CATALOGUE:
        raise ValueError(f"event {name!r} declared twice")
    declared = Event(name, frozenset(fields), level, description)
    CATALOGUE[name] = declared
    return declared


def emit(kind: Event, /, *, _level: int | None = None, **fields: Any) -> None:
    """Log ``kind`` with ``fields`` as one structured line and count it (``_level`` overrides the
    event's level for one emission, e.g. a sweep that found nothing to do logs at DEBUG)."""
    unknown = set(fields) - kind.fields
    if unknown:
        raise ValueError(f"event {kind.name} has no field(s) {sorted(unknown)}")
    EVENTS_TOTAL.labels(event=kind.name).inc()
    level = kind.level if _level is None else _level
    if _logger.isEnabledFor(level):
        _logger.log(level, kind.name, extra={"event": kind.name, **fields})


# --- queue: agent_job leases --------------------------------------------------------------
JOB_ENQUEUED = event("queue.job.enqueued", "job_id", "conversation_id", "kind")
JOB_CLAIMED = event("queue.job.claimed", "job_id", "conversation_id", "attempt", "lease_token", "takeover")
JOB_CLAIM_REFUSED = event(
    "queue.job.claim_refused",
    "job_id",
    "reason",
    level=logging.DEBUG,
    description="a dispatch message named a job this worker may not take now",
)
JOB_HEARTBEAT = event("queue.job.heartbeat", "job_ids", "count", level=logging.DEBUG)
JOB_COMPLETED = event("queue.job.completed", "job_id", "conversation_id", "status", "duration_ms")
JOB_RETRY_SCHEDULED = event(
    "queue.job.retry_scheduled",
    "job_id",
    "conversation_id",
    "attempts",
    "delay_ms",
    "error_reason",
    level=logging.WARNING,
)
JOB_FAILED = event(
    "queue.job.failed",
    "job_id",
    "conversation_id",
    "attempts",
    "error_reason",
    "error_message",
    level=logging.ERROR,
)
JOB_REQUEUED = event(
    "queue.job.requeued", "job_id", "conversation_id", "attempts", "reason", level=logging.WARNING
)
JOB_RELEASED = event("queue.job.released", "job_id", "conversation_id", "reason")
JOB_REPUBLISHED = event("queue.job.republished", "job_id", "conversation_id", "reason")
JOB_NOT_FOUND = event("queue.job.not_found", "job_id", level=logging.WARNING)
LEASE_CONTENDED = event("queue.lease.contended", "job_id", "conversation_id", "holder", level=logging.DEBUG)
LEASE_LOST = event("queue.lease.lost", "job_id", "lease_token", "operation", level=logging.WARNING)
PUBLISH_FAILED = event("queue.publish.failed", "actor", "job_id", "error", level=logging.WARNING)
DISPATCH_BAD_MESSAGE = event("queue.dispatch.bad_message", "message_id", "error", level=logging.ERROR)
MESSAGE_UNDECODABLE = event(
    "queue.message.undecodable",
    "size",
    "error",
    level=logging.ERROR,
    description="a broker message that is not a Dramatiq message; Dramatiq dead-letters it",
)
TURN_ERROR = event(
    "agent.turn.error",
    "job_id",
    "conversation_id",
    "error_reason",
    "error",
    "retryable",
    level=logging.WARNING,
)
DATABASE_UNAVAILABLE = event(
    "queue.database.unavailable", "operation", "job_id", "error", level=logging.ERROR
)
SWEEP_COMPLETED = event(
    "queue.sweep.completed",
    "trigger",
    "requeued",
    "failed",
    "republished",
    "expired_approvals",
    "pruned_dedupe",
    "steps",
    "duration_ms",
)
SWEEP_RECHECK_SCHEDULED = event("queue.sweep.recheck_scheduled", "delay_ms", level=logging.DEBUG)

# --- ingress and delivery -----------------------------------------------------------------
INBOUND_ACCEPTED = event(
    "inbound.accepted",
    "channel",
    "account_id",
    "conversation_id",
    "message_id",
    "job_id",
    "provider_message_id",
)
INBOUND_DEDUPE_SKIPPED = event("inbound.dedupe_skipped", "channel", "account_id", "provider_message_id")
INBOUND_IGNORED = event("inbound.ignored", "channel", "account_id", "sender_id", "reason")
INBOUND_REJECTED = event("inbound.rejected", "channel", "account_id", "reason", level=logging.WARNING)
OUTBOUND_SENT = event("outbound.sent", "outbound_id", "conversation_id", "channel", "account_id", "attempts")
OUTBOUND_RETRY = event(
    "outbound.retry_scheduled", "outbound_id", "attempts", "delay_ms", "error", level=logging.WARNING
)
OUTBOUND_FAILED = event("outbound.failed", "outbound_id", "attempts", "error", level=logging.ERROR)

# --- channels -----------------------------------------------------------------------------
CHANNEL_LEASE_ACQUIRED = event(
    "channel.lease.acquired",
    "channel",
    "account_id",
    "owner_id",
    "term",
    "previous_owner",
    "takeover",
    description="this process owns the account now (takeover: the previous owner's lease had expired)",
)
CHANNEL_LEASE_CONTENDED = event(
    "channel.lease.contended",
    "channel",
    "account_id",
    "owner_id",
    "reason",
    "holder",
    "expires_in_ms",
    level=logging.DEBUG,
    description="a standby tried to take the account and was refused (held by holder, banned, "
    "held off, or waiting for an operator)",
)
CHANNEL_LEASE_LOST = event(
    "channel.lease.lost",
    "channel",
    "account_id",
    "owner_id",
    "term",
    "reason",
    level=logging.WARNING,
    description="this process stopped owning the account (heartbeat refused or the lease ran out)",
)
CHANNEL_LEASE_RELEASED = event(
    "channel.lease.released", "channel", "account_id", "owner_id", "term", "reason"
)
CHANNEL_STANDBY = event(
    "channel.standby",
    "channel",
    "account_id",
    "owner_id",
    "reason",
    description="this process waits as standby (another owns the account, or it waits for an operator)",
)

# --- WhatsApp -------------------------------------------------------------------------------
WA_CONNECTION = event(
    "whatsapp.connection.state",
    "account_id",
    "state",
    "term",
    "detail",
    description="the account's connection changed state (connecting, connected, disconnected, ...)",
)
WA_CONNECT_RETRY = event(
    "whatsapp.connection.retry", "account_id", "attempt", "delay_ms", "error", level=logging.WARNING
)
WA_LOGGED_OUT = event(
    "whatsapp.connection.logged_out",
    "account_id",
    "reason",
    "on_connect",
    level=logging.ERROR,
    description="WhatsApp removed this device: the session is gone; pair again (zenthor whatsapp pair)",
)
WA_STREAM_REPLACED = event(
    "whatsapp.connection.stream_replaced",
    "account_id",
    "term",
    level=logging.ERROR,
    description="another connection of this device took over (440); this term ends, no reconnect",
)
WA_TEMPORARY_BAN = event(
    "whatsapp.connection.temporary_ban",
    "account_id",
    "code",
    "banned_until",
    level=logging.ERROR,
    description="WhatsApp banned the account for a while; no runtime connects before banned_until",
)
WA_CLIENT_OUTDATED = event(
    "whatsapp.connection.client_outdated",
    "account_id",
    "client_version",
    level=logging.ERROR,
    description="WhatsApp refuses this client version (405): upgrade neonize",
)
WA_CONNECTION_ODDITY = event(
    "whatsapp.connection.event",
    "account_id",
    "kind",
    "code",
    "detail",
    level=logging.WARNING,
    description="a transient connection event (stream error, keepalive timeout, connect failure)",
)
WA_STOP_SLOW = event(
    "whatsapp.connection.stop_slow",
    "account_id",
    "waited_s",
    level=logging.WARNING,
    description="closing the old connection is taking long (neonize's stop() can block a minute)",
)
WA_INBOUND_SKIPPED = event(
    "whatsapp.inbound.skipped",
    "account_id",
    "provider_message_id",
    "reason",
    level=logging.DEBUG,
    description="own message, status broadcast, or a group message not for the assistant",
)
WA_INBOUND_UNSUPPORTED = event(
    "whatsapp.inbound.unsupported",
    "account_id",
    "provider_message_id",
    "kind",
    "replied",
    description="a message without text (media, sticker, reaction)",
)
WA_INBOUND_MALFORMED = event(
    "whatsapp.inbound.malformed",
    "account_id",
    "what",
    "error",
    level=logging.WARNING,
    description="an event the transport could not read; nothing else is affected",
)
WA_INBOUND_SPOOLED = event(
    "whatsapp.inbound.spooled",
    "account_id",
    "provider_message_id",
    "path",
    "error",
    level=logging.ERROR,
    description="accept() failed (database down?): the message was written to the spool and is "
    "accepted when the runtime next starts a term",
)
WA_INBOUND_SPOOL_REPLAYED = event("whatsapp.inbound.spool_replayed", "account_id", "count", "duplicates")
WA_IDENTITY_LEARNED = event(
    "whatsapp.identity.learned",
    "account_id",
    "source",
    level=logging.DEBUG,
    description="a new LID ↔ phone pair (source: sender_alt or the session's LID map)",
)
WA_OUTBOUND_SENT = event(
    "whatsapp.outbound.sent",
    "account_id",
    "outbound_id",
    "conversation_id",
    "whatsapp_id",
    "attempts",
    "resend",
)
WA_OUTBOUND_FAILED = event(
    "whatsapp.outbound.send_failed",
    "account_id",
    "outbound_id",
    "error",
    "retryable",
    level=logging.WARNING,
)
WA_OUTBOUND_OUTCOME_UNKNOWN = event(
    "whatsapp.outbound.outcome_unknown",
    "account_id",
    "outbound_ids",
    "count",
    "previous_owner",
    level=logging.WARNING,
    description="rows a previous owner left 'sending' (it died mid-send): sent once more (at least once)",
)
WA_OUTBOUND_REFUSED = event(
    "whatsapp.outbound.refused",
    "account_id",
    "outbound_id",
    "reason",
    level=logging.WARNING,
    description="a send was refused because this process no longer owns the account",
)
WA_OUTBOUND_RATE_LIMITED = event(
    "whatsapp.outbound.rate_limited",
    "account_id",
    "scope",
    "waiting",
    level=logging.INFO,
    description="replies wait for the send rate limit (per chat or per account); none is dropped",
)
WA_PRESENCE_FAILED = event(
    "whatsapp.presence.failed", "account_id", "operation", "error", level=logging.DEBUG
)
WA_PAIRING = event(
    "whatsapp.pairing.state",
    "account_id",
    "state",
    "jid",
    "detail",
    description="pairing progress: started, qr, code, succeeded, timed_out, failed",
)

# --- process lifecycle --------------------------------------------------------------------
WORKER_STARTED = event("worker.started", "queues", "pid")
WORKER_STOPPING = event("worker.stopping", "held_leases", "pid")
CONFIG_WARNING = event("config.warning", "setting", "detail", level=logging.WARNING)

# --- ingress, outbox delivery, gateway (issue 3) --------------------------------------------
INBOUND_ANSWERED = event(
    "inbound.answered",
    "channel",
    "account_id",
    "conversation_id",
    "message_id",
    "job_id",
    "reason",
    description="an inbound was taken as the answer to a pending question, not a new turn",
)
INBOUND_DEDUPE_PRUNED = event("inbound.dedupe_pruned", "count", "ttl_s")
OUTBOUND_CLAIM_REFUSED = event("outbound.claim_refused", "outbound_id", "reason", level=logging.DEBUG)
OUTBOUND_REQUEUED = event("outbound.requeued", "outbound_id", "attempts", "reason", level=logging.WARNING)
OUTBOUND_REPUBLISHED = event("outbound.republished", "outbound_id", "reason")
OUTBOUND_NO_SENDER = event("outbound.no_sender", "outbound_id", "channel", level=logging.ERROR)
GATEWAY_REQUEST_REJECTED = event(
    "gateway.request.rejected", "account_id", "status", "reason", level=logging.INFO
)

# --- agent turn: model, context, tools, approvals (issue 5) -------------------------------
MODEL_CALL_FAILED = event(
    "agent.model.call_failed",
    "job_id",
    "model",
    "error_kind",
    "status_code",
    "attempt",
    "retry_in_ms",
    level=logging.WARNING,
    description="one model call failed; retry_in_ms is None when this model is given up",
)
MODEL_FALLBACK = event(
    "agent.model.fallback", "job_id", "from_model", "to_model", "error_kind", level=logging.WARNING
)
MODEL_ACCESS_DENIED = event(
    "agent.model.access_denied",
    "job_id",
    "model",
    "error_kind",
    "status_code",
    level=logging.ERROR,
    description="auth or billing error: the operator must fix the API key or the account (alert)",
)
CONTEXT_COMPACTED = event(
    "agent.context.compacted",
    "job_id",
    "conversation_id",
    "mode",
    "dropped_messages",
    "kept_messages",
    "estimated_tokens",
    "window",
    description="older messages left the model context: mode summarized or dropped",
)
AGENT_TOOL_CALLED = event("agent.tool.called", "job_id", "tool", "ok", "duration_ms", "error")
TOOL_CALL_REFUSED = event(
    "agent.tool.call_refused",
    "job_id",
    "tool",
    "reason",
    level=logging.WARNING,
    description="the model asked for an unknown tool or gave invalid arguments; told the model",
)
TURN_STEP_LIMIT = event("agent.turn.step_limit", "job_id", "steps", level=logging.WARNING)
APPROVAL_REQUESTED = event(
    "agent.approval.requested", "job_id", "conversation_id", "approval_id", "tool", "expires_in_s"
)
APPROVAL_RESOLVED = event("agent.approval.resolved", "job_id", "conversation_id", "approval_id", "decision")
ECHO_RESPONDER = event(
    "agent.echo.replied",
    "job_id",
    "conversation_id",
    level=logging.DEBUG,
    description="no model configured: the echo responder answered",
)

# --- plugins (issue 4) --------------------------------------------------------------------
PLUGINS_LOADED = event(
    "plugins.load.completed",
    "load_cycle",
    "activated",
    "conflict",
    "invalid",
    "disabled",
    "tools",
    "duration_ms",
)
PLUGIN_NOT_ACTIVATED = event(
    "plugins.plugin.not_activated",
    "plugin_id",
    "source",
    "status",
    "reason",
    level=logging.WARNING,
    description="an enabled plugin that did not activate (conflict or invalid), with the first diagnostic",
)
PLUGINS_CONFIG_PROBLEM = event("plugins.config.problem", "path", "detail", "severity", level=logging.WARNING)
PLUGINS_PERSIST_FAILED = event("plugins.status.persist_failed", "error", level=logging.ERROR)
TOOL_CALLED = event(
    "plugins.tool.called",
    "tool",
    "plugin_id",
    "ok",
    "failure",
    "duration_ms",
    "conversation_id",
    "job_id",
    description="failure is a kind (unknown_tool, not_allowed, invalid_arguments, error, exception, timeout), never content",
)
REMINDER_DELIVERED = event(
    "plugins.reminder.delivered", "reminder_id", "conversation_id", "outbound_id", "late_ms"
)

# --- ingress, outbox delivery (issue 3, continued) --------------------------------------------
OUTBOUND_PUBLISH_FAILED = event(
    "outbound.publish_failed", "outbound_id", "queue", "error", level=logging.WARNING
)
OUTBOUND_LEASE_LOST = event("outbound.lease_lost", "outbound_id", "operation", level=logging.WARNING)
