"""The catalogue of typed operational events, and the one function that emits them.

Every reliability transition is an :class:`Event`: a fixed name and a fixed set of fields, so
dashboards and alerts can rely on them. :func:`emit` refuses a field the event does not declare
(a programming error caught by the tests), logs one JSON line with ``event`` set to the name, and
counts the event in the process's metrics. Message content never appears in an event.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from typing import Any

from zenthor.observability.logging import SAID_FIELDS
from zenthor.observability.metrics import EVENTS_TOTAL

_logger = logging.getLogger("zenthor.events")


@dataclass(frozen=True)
class Event:
    """One kind of operational event: its name, its fields, its log level, and ``says``, the
    sentence a log line's ``message`` carries (``{field}`` placeholders name declared fields)."""

    name: str
    fields: frozenset[str]
    level: int = logging.INFO
    description: str = ""
    says: str = ""

    @property
    def said_fields(self) -> frozenset[str]:
        """The fields ``says`` spells out (the console does not repeat them)."""
        return frozenset(field for _, field, _, _ in string.Formatter().parse(self.says) if field)

    def sentence(self, fields: dict[str, Any]) -> str:
        """``says`` filled in with ``fields`` (a field not given reads ``?``)."""
        return self.says.format_map(_Unknown(fields)) if self.says else self.description or self.name


class _Unknown(dict):
    def __missing__(self, key: str) -> str:
        return "?"


CATALOGUE: dict[str, Event] = {}


def event(name: str, *fields: str, level: int = logging.INFO, description: str = "", says: str = "") -> Event:
    """Declare an event in the catalogue (names are unique; ``says`` names only its fields)."""
    if name in CATALOGUE:
        raise ValueError(f"event {name!r} declared twice")
    declared = Event(name, frozenset(fields), level, description, says)
    if not declared.said_fields <= declared.fields:
        raise ValueError(
            f"event {name!r} says undeclared field(s) {sorted(declared.said_fields - declared.fields)}"
        )
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
        extra = {"event": kind.name, SAID_FIELDS: kind.said_fields, **fields}
        _logger.log(level, kind.sentence(fields), extra=extra)


# --- queue: agent_job leases --------------------------------------------------------------
JOB_ENQUEUED = event(
    "queue.job.enqueued",
    "job_id",
    "conversation_id",
    "kind",
    says="job {job_id} ({kind}) queued for conversation {conversation_id}",
)
JOB_DEBOUNCED = event(
    "queue.job.debounced",
    "job_id",
    "conversation_id",
    "delay_ms",
    level=logging.DEBUG,
    description="a new message pushed its conversation's burst back: the jobs wait delay_ms of quiet "
    "(QUEUE_DEBOUNCE_MS, bounded by QUEUE_DEBOUNCE_MAX_MS)",
    says="job {job_id} waits {delay_ms} ms of quiet in conversation {conversation_id}",
)
JOB_CLAIMED = event(
    "queue.job.claimed",
    "job_id",
    "conversation_id",
    "attempt",
    "lease_token",
    "takeover",
    "chained",
    "merged",
    "mode",
    description="chained: handed over by the completion of the conversation's previous job, "
    "in its commit's round trip, to the worker that completed it; mode: the conversation's queue "
    "mode (collect or followup); merged: how many jobs queued behind it its turn answers too",
    says="job {job_id} claimed (attempt {attempt}, takeover {takeover})",
)
JOB_CLAIM_REFUSED = event(
    "queue.job.claim_refused",
    "job_id",
    "reason",
    level=logging.DEBUG,
    description="a dispatch message named a job this worker may not take now",
    says="job {job_id} not taken here: {reason}",
)
JOB_HEARTBEAT = event(
    "queue.job.heartbeat", "job_ids", "count", level=logging.DEBUG, says="extended {count} job lease(s)"
)
JOB_COMPLETED = event(
    "queue.job.completed",
    "job_id",
    "conversation_id",
    "status",
    "duration_ms",
    "answered",
    description="answered: how many user messages the turn answered (more than 1 when collect "
    "merged the turns queued behind it)",
    says="job {job_id} finished {status} in {duration_ms} ms",
)
JOB_RETRY_SCHEDULED = event(
    "queue.job.retry_scheduled",
    "job_id",
    "conversation_id",
    "attempts",
    "delay_ms",
    "error_reason",
    level=logging.WARNING,
    says="job {job_id} failed ({error_reason}); attempt {attempts} retries in {delay_ms} ms",
)
JOB_FAILED = event(
    "queue.job.failed",
    "job_id",
    "conversation_id",
    "attempts",
    "error_reason",
    "error_message",
    level=logging.ERROR,
    says="job {job_id} failed for good after {attempts} attempt(s): {error_reason}",
)
JOB_REQUEUED = event(
    "queue.job.requeued",
    "job_id",
    "conversation_id",
    "attempts",
    "reason",
    level=logging.WARNING,
    says="job {job_id} taken back ({reason}) after {attempts} attempt(s)",
)
JOB_RELEASED = event(
    "queue.job.released", "job_id", "conversation_id", "reason", says="job {job_id} lease released ({reason})"
)
JOB_REPUBLISHED = event(
    "queue.job.republished",
    "job_id",
    "conversation_id",
    "reason",
    says="job {job_id} nudged again ({reason})",
)
JOB_CLOSED = event(
    "queue.job.closed",
    "job_id",
    "conversation_id",
    "reason",
    description="a job awaiting approval was closed without running again (the question was superseded)",
    says="job {job_id} closed without running again ({reason})",
)
JOB_RETRIED = event(
    "queue.job.retried",
    "old_job_id",
    "job_id",
    "conversation_id",
    "open_ahead",
    description="an operator retried a failed job as a new job at the back of its conversation's line",
    says="job {old_job_id} retried as job {job_id}, behind {open_ahead} open job(s)",
)
JOB_NOT_FOUND = event(
    "queue.job.not_found",
    "job_id",
    level=logging.WARNING,
    says="a dispatch message named job {job_id}, which does not exist",
)
LEASE_CONTENDED = event(
    "queue.lease.contended",
    "job_id",
    "conversation_id",
    "holder",
    level=logging.DEBUG,
    says="job {job_id} waits: conversation {conversation_id} is busy with {holder}",
)
LEASE_LOST = event(
    "queue.lease.lost",
    "job_id",
    "lease_token",
    "operation",
    level=logging.WARNING,
    says="lost the lease of job {job_id} during {operation}",
)
PUBLISH_FAILED = event(
    "queue.publish.failed",
    "actor",
    "job_id",
    "error",
    level=logging.WARNING,
    says="could not nudge {actor} for job {job_id} (owed: re-sent when the broker is back): {error}",
)
OWED_NUDGES_REPUBLISHED = event(
    "queue.publish.owed_republished",
    "jobs",
    "deliveries",
    "waited_ms",
    "still_owed",
    level=logging.INFO,  # a recovery: queue.publish.failed was the warning
    description="nudges whose publish had failed, re-sent by this process once the broker took one again",
    says="re-sent {jobs} dispatch and {deliveries} delivery nudge(s) owed since the broker went away "
    "{waited_ms} ms ago ({still_owed} still owed)",
)
DISPATCH_BAD_MESSAGE = event(
    "queue.dispatch.bad_message",
    "message_id",
    "error",
    level=logging.ERROR,
    says="dispatch message {message_id} is malformed: {error}",
)
MESSAGE_UNDECODABLE = event(
    "queue.message.undecodable",
    "size",
    "error",
    level=logging.ERROR,
    description="a broker message that is not a Dramatiq message; Dramatiq dead-letters it",
    says="a {size}-byte broker message is not a Dramatiq message: {error}",
)
TURN_ERROR = event(
    "agent.turn.error",
    "job_id",
    "conversation_id",
    "error_reason",
    "error",
    "retryable",
    level=logging.WARNING,
    says="turn of job {job_id} failed ({error_reason}, retryable {retryable}): {error}",
)
DATABASE_UNAVAILABLE = event(
    "queue.database.unavailable",
    "operation",
    "job_id",
    "error",
    level=logging.ERROR,
    says="Postgres unavailable during {operation}: {error}",
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
    says="sweep ({trigger}): {requeued} requeued, {failed} failed, {republished} re-published in {duration_ms} ms",
)
SWEEP_RECHECK_SCHEDULED = event(
    "queue.sweep.recheck_scheduled",
    "delay_ms",
    level=logging.DEBUG,
    says="next sweep re-check in {delay_ms} ms",
)
RETENTION_PRUNED = event(
    "queue.retention.pruned",
    "jobs",
    "outbox",
    "approvals",
    "reminders",
    "messages",
    "days",
    "dry_run",
    description="finished rows past RETENTION_DAYS deleted by the sweep or `zenthor ops prune` "
    "(dry_run: only counted); logged at DEBUG when none went",
    says="retention ({days} days, dry run {dry_run}): {jobs} jobs, {outbox} outbox rows, {approvals} approvals, "
    "{reminders} reminders, {messages} messages",
)

# --- ingress and delivery -----------------------------------------------------------------
INBOUND_ACCEPTED = event(
    "inbound.accepted",
    "channel",
    "account_id",
    "conversation_id",
    "message_id",
    "job_id",
    "provider_message_id",
    "reason",
    says="accepted {channel} message {provider_message_id} as job {job_id}",
)
INBOUND_DEDUPE_SKIPPED = event(
    "inbound.dedupe_skipped",
    "channel",
    "account_id",
    "provider_message_id",
    says="{channel} message {provider_message_id} already accepted: skipped",
)
INBOUND_IGNORED = event(
    "inbound.ignored",
    "channel",
    "account_id",
    "sender_id",
    "reason",
    says="ignored a {channel} message from {sender_id}: {reason}",
)
INBOUND_DEAD_LETTERED = event(
    "inbound.dead_lettered",
    "channel",
    "account_id",
    "reason",
    level=logging.WARNING,
    description="the ingest actor refused a payload (a bad field, or neither id nor sent time) "
    "and moved it to ingest.XQ without a retry",
    says="dead-lettered a {channel} message for account {account_id}: {reason}",
)
OUTBOUND_SENT = event(
    "outbound.sent",
    "outbound_id",
    "conversation_id",
    "channel",
    "account_id",
    "attempts",
    says="reply {outbound_id} sent on {channel} (attempt {attempts})",
)
OUTBOUND_RETRY = event(
    "outbound.retry_scheduled",
    "outbound_id",
    "attempts",
    "delay_ms",
    "error",
    level=logging.WARNING,
    says="reply {outbound_id} not delivered (attempt {attempts}); retry in {delay_ms} ms: {error}",
)
OUTBOUND_FAILED = event(
    "outbound.failed",
    "outbound_id",
    "attempts",
    "error",
    level=logging.ERROR,
    says="reply {outbound_id} failed for good after {attempts} attempt(s): {error}",
)

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
    says="now owns {channel} account {account_id} (term {term}, takeover {takeover})",
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
    says="{channel} account {account_id} not taken: {reason} (holder {holder})",
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
    says="lost {channel} account {account_id} (term {term}): {reason}",
)
CHANNEL_LEASE_RELEASED = event(
    "channel.lease.released",
    "channel",
    "account_id",
    "owner_id",
    "term",
    "reason",
    says="released {channel} account {account_id} (term {term}): {reason}",
)
CHANNEL_STANDBY = event(
    "channel.standby",
    "channel",
    "account_id",
    "owner_id",
    "reason",
    description="this process waits as standby (another owns the account, or it waits for an operator)",
    says="standby for {channel} account {account_id}: {reason}",
)

# --- WhatsApp -------------------------------------------------------------------------------
WA_CONNECTION = event(
    "whatsapp.connection.state",
    "account_id",
    "state",
    "term",
    "detail",
    description="the account's connection changed state (connecting, connected, disconnected, ...)",
    says="WhatsApp account {account_id} {state}",
)
WA_CONNECT_RETRY = event(
    "whatsapp.connection.retry",
    "account_id",
    "attempt",
    "delay_ms",
    "error",
    level=logging.WARNING,
    says="WhatsApp account {account_id} reconnects in {delay_ms} ms (attempt {attempt}): {error}",
)
WA_LOGGED_OUT = event(
    "whatsapp.connection.logged_out",
    "account_id",
    "reason",
    "on_connect",
    level=logging.ERROR,
    description="WhatsApp removed this device: the session is gone; pair again (zenthor whatsapp pair)",
    says="WhatsApp logged out account {account_id} ({reason}): pair it again",
)
WA_STREAM_REPLACED = event(
    "whatsapp.connection.stream_replaced",
    "account_id",
    "term",
    level=logging.ERROR,
    description="another connection of this device took over (440); this term ends, no reconnect",
    says="another connection took over WhatsApp account {account_id}; term {term} ends",
)
WA_TEMPORARY_BAN = event(
    "whatsapp.connection.temporary_ban",
    "account_id",
    "code",
    "banned_until",
    level=logging.ERROR,
    description="WhatsApp banned the account for a while; no runtime connects before banned_until",
    says="WhatsApp banned account {account_id} until {banned_until} (code {code})",
)
WA_CLIENT_OUTDATED = event(
    "whatsapp.connection.client_outdated",
    "account_id",
    "client_version",
    level=logging.ERROR,
    description="WhatsApp refuses this client version (405): upgrade neonize",
    says="WhatsApp refuses client version {client_version}: upgrade neonize",
)
WA_CONNECTION_ODDITY = event(
    "whatsapp.connection.event",
    "account_id",
    "kind",
    "code",
    "detail",
    level=logging.WARNING,
    description="a transient connection event (stream error, keepalive timeout, connect failure)",
    says="WhatsApp account {account_id}: {kind} {detail}",
)
WA_STOP_SLOW = event(
    "whatsapp.connection.stop_slow",
    "account_id",
    "waited_s",
    level=logging.WARNING,
    description="closing the old connection is taking long (neonize's stop() can block a minute)",
    says="closing the WhatsApp connection of {account_id} has taken {waited_s} s",
)
WA_INBOUND_SKIPPED = event(
    "whatsapp.inbound.skipped",
    "account_id",
    "provider_message_id",
    "reason",
    level=logging.DEBUG,
    description="own message, status broadcast, or a group message not for the assistant",
    says="skipped WhatsApp message {provider_message_id}: {reason}",
)
WA_INBOUND_UNSUPPORTED = event(
    "whatsapp.inbound.unsupported",
    "account_id",
    "provider_message_id",
    "kind",
    "replied",
    description="a message without text (media, sticker, reaction)",
    says="WhatsApp message {provider_message_id} is a {kind}, not text",
)
WA_INBOUND_MALFORMED = event(
    "whatsapp.inbound.malformed",
    "account_id",
    "what",
    "error",
    level=logging.WARNING,
    description="an event the transport could not read; nothing else is affected",
    says="could not read a WhatsApp {what}: {error}",
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
    says="WhatsApp message {provider_message_id} spooled to {path} (accept failed: {error})",
)
WA_INBOUND_SPOOL_REPLAYED = event(
    "whatsapp.inbound.spool_replayed",
    "account_id",
    "count",
    "duplicates",
    says="replayed {count} spooled WhatsApp message(s), {duplicates} already accepted",
)
WA_IDENTITY_LEARNED = event(
    "whatsapp.identity.learned",
    "account_id",
    "source",
    level=logging.DEBUG,
    description="a new LID ↔ phone pair (source: sender_alt or the session's LID map)",
    says="learned a LID/phone pair for account {account_id} from {source}",
)
WA_OUTBOUND_SENT = event(
    "whatsapp.outbound.sent",
    "account_id",
    "outbound_id",
    "conversation_id",
    "whatsapp_id",
    "attempts",
    "resend",
    says="WhatsApp reply {outbound_id} sent as {whatsapp_id}",
)
WA_OUTBOUND_FAILED = event(
    "whatsapp.outbound.send_failed",
    "account_id",
    "outbound_id",
    "error",
    "retryable",
    level=logging.WARNING,
    says="WhatsApp reply {outbound_id} not sent (retryable {retryable}): {error}",
)
WA_OUTBOUND_OUTCOME_UNKNOWN = event(
    "whatsapp.outbound.outcome_unknown",
    "account_id",
    "outbound_ids",
    "count",
    "previous_owner",
    level=logging.WARNING,
    description="rows a previous owner left 'sending' (it died mid-send): sent once more (at least once)",
    says="{count} WhatsApp reply(ies) left mid-send by {previous_owner}: sending once more",
)
WA_OUTBOUND_REFUSED = event(
    "whatsapp.outbound.refused",
    "account_id",
    "outbound_id",
    "reason",
    level=logging.WARNING,
    description="a send was refused because this process no longer owns the account",
    says="WhatsApp reply {outbound_id} not sent: {reason}",
)
WA_OUTBOUND_RATE_LIMITED = event(
    "whatsapp.outbound.rate_limited",
    "account_id",
    "scope",
    "waiting",
    level=logging.INFO,
    description="replies wait for the send rate limit (per chat or per account); none is dropped",
    says="WhatsApp replies wait for the {scope} rate limit ({waiting} waiting)",
)
WA_PRESENCE_FAILED = event(
    "whatsapp.presence.failed",
    "account_id",
    "operation",
    "error",
    level=logging.DEBUG,
    says="WhatsApp {operation} failed: {error}",
)
WA_PAIRING = event(
    "whatsapp.pairing.state",
    "account_id",
    "state",
    "jid",
    "detail",
    description="pairing progress: started, qr, code, succeeded, timed_out, failed",
    says="pairing WhatsApp account {account_id}: {state}",
)

# --- process lifecycle --------------------------------------------------------------------
WORKER_STARTED = event("worker.started", "queues", "pid", says="worker process {pid} started on {queues}")
WORKER_STOPPING = event(
    "worker.stopping",
    "held_leases",
    "pid",
    says="worker process {pid} stopping, releasing {held_leases} lease(s)",
)
CONFIG_WARNING = event(
    "config.warning", "setting", "detail", level=logging.WARNING, says="setting {setting}: {detail}"
)

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
    says="{channel} message {message_id} answered pending question of job {job_id}: {reason}",
)
INBOUND_COMMAND = event(
    "inbound.command",
    "channel",
    "account_id",
    "conversation_id",
    "message_id",
    "outbound_id",
    "command",
    "outcome",
    description="a /queue or /debounce chat command (issue 14): outcome set (the conversation's setting "
    "changed), shown or help (not understood); answered by the outbox row outbound_id, no turn",
    says="{channel} conversation {conversation_id}: /{command} {outcome}, reply {outbound_id}",
)
INBOUND_DEDUPE_PRUNED = event(
    "inbound.dedupe_pruned", "count", "ttl_s", says="pruned {count} dedupe key(s) older than {ttl_s} s"
)
OUTBOUND_CLAIM_REFUSED = event(
    "outbound.claim_refused",
    "outbound_id",
    "reason",
    level=logging.DEBUG,
    says="reply {outbound_id} not taken here: {reason}",
)
OUTBOUND_REQUEUED = event(
    "outbound.requeued",
    "outbound_id",
    "attempts",
    "reason",
    level=logging.WARNING,
    says="reply {outbound_id} taken back ({reason}) after {attempts} attempt(s)",
)
OUTBOUND_REPUBLISHED = event(
    "outbound.republished", "outbound_id", "reason", says="reply {outbound_id} nudged again ({reason})"
)
OUTBOUND_NO_SENDER = event(
    "outbound.no_sender",
    "outbound_id",
    "channel",
    level=logging.ERROR,
    says="no sender for channel {channel}: reply {outbound_id} cannot be delivered",
)
GATEWAY_REQUEST_REJECTED = event(
    "gateway.request.rejected",
    "account_id",
    "status",
    "reason",
    level=logging.INFO,
    says="gateway refused a request for account {account_id} with {status}: {reason}",
)
WEBHOOK_SECRET_KEY_ERROR = event(
    "webhook.secret_key_error",
    "outbound_id",
    "account_id",
    "setting",
    "error",
    level=logging.ERROR,
    description="a worker cannot decrypt a webhook account's secrets to sign a reply (the reply is "
    "retried): set the same ZENTHOR_SECRET_KEY on every worker and restart it",
    says="reply {outbound_id} of webhook account {account_id} not signed: {setting} cannot read "
    "its secrets (retried)",
)
GATEWAY_LEGACY_SIGNATURE = event(
    "gateway.legacy_signature",
    "account_id",
    level=logging.WARNING,
    description="a request was accepted on the deprecated X-Zenthor-Signature (once per account and hour)",
    says="account {account_id} still signs with the deprecated X-Zenthor-Signature: move it to "
    "Standard Webhooks, then unset WEBHOOK_ACCEPT_LEGACY_SIGNATURE",
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
    says="model {model} call failed ({error_kind}, status {status_code}); retry in {retry_in_ms} ms",
)
MODEL_FALLBACK = event(
    "agent.model.fallback",
    "job_id",
    "from_model",
    "to_model",
    "error_kind",
    level=logging.WARNING,
    says="model {from_model} gave up ({error_kind}): falling back to {to_model}",
)
MODEL_ACCESS_DENIED = event(
    "agent.model.access_denied",
    "job_id",
    "model",
    "error_kind",
    "status_code",
    level=logging.ERROR,
    description="auth or billing error: the operator must fix the API key or the account (alert)",
    says="model {model} refused our credentials ({error_kind}, status {status_code}): fix the API key or account",
)
CONTEXT_COMPACTED = event(
    "agent.context.compacted",
    "job_id",
    "conversation_id",
    "mode",
    "dropped_messages",
    "kept_messages",
    "estimated_tokens",
    "history_truncated",
    "window",
    description="older messages left the model context: mode summarized or dropped "
    "(history_truncated: the turn read only the history's tail)",
    says="context of conversation {conversation_id} compacted ({mode}): {dropped_messages} older message(s) left it",
)
AGENT_TOOL_CALLED = event(
    "agent.tool.called",
    "job_id",
    "tool",
    "ok",
    "duration_ms",
    "error",
    says="tool {tool} ran in {duration_ms} ms (ok {ok})",
)
TOOL_CALL_REFUSED = event(
    "agent.tool.call_refused",
    "job_id",
    "tool",
    "reason",
    level=logging.WARNING,
    description="the model asked for an unknown tool or gave invalid arguments; told the model",
    says="tool call {tool} refused: {reason}",
)
TURN_STEP_LIMIT = event(
    "agent.turn.step_limit",
    "job_id",
    "steps",
    level=logging.WARNING,
    says="turn of job {job_id} hit the step limit ({steps})",
)
APPROVAL_REQUESTED = event(
    "agent.approval.requested",
    "job_id",
    "conversation_id",
    "approval_id",
    "tool",
    "expires_in_s",
    says="tool {tool} waits for the user's YES (approval {approval_id})",
)
APPROVAL_RESOLVED = event(
    "agent.approval.resolved",
    "job_id",
    "conversation_id",
    "approval_id",
    "decision",
    "source",
    description="decision: approved, rejected, expired or superseded (the reply was not an answer); "
    "source: answer (the asker's message; an answer after expires_at is expired), sweep "
    "(APPROVAL_TTL_S passed) or new_question (the asker's newer turn asked again)",
    says="approval {approval_id} {decision} (by {source})",
)
ECHO_RESPONDER = event(
    "agent.echo.replied",
    "job_id",
    "conversation_id",
    level=logging.DEBUG,
    description="no model configured: the echo responder answered",
    says="no model configured: echoed job {job_id}",
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
    says="plugins loaded: {activated} active, {disabled} disabled, {invalid} invalid, {conflict} in conflict ({tools} tools)",
)
PLUGIN_NOT_ACTIVATED = event(
    "plugins.plugin.not_activated",
    "plugin_id",
    "source",
    "status",
    "reason",
    level=logging.WARNING,
    description="an enabled plugin that did not activate (conflict or invalid), with the first diagnostic",
    says="plugin {plugin_id} not activated ({status}): {reason}",
)
PLUGINS_CONFIG_PROBLEM = event(
    "plugins.config.problem",
    "path",
    "detail",
    "severity",
    level=logging.WARNING,
    says="plugin configuration {path}: {detail}",
)
PLUGINS_PERSIST_FAILED = event(
    "plugins.status.persist_failed",
    "error",
    level=logging.ERROR,
    says="could not store plugin status: {error}",
)
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
    says="plugin tool {plugin_id}.{tool} ran in {duration_ms} ms (ok {ok})",
)
REMINDER_DELIVERED = event(
    "plugins.reminder.delivered",
    "reminder_id",
    "conversation_id",
    "outbound_id",
    "late_ms",
    says="reminder {reminder_id} queued as reply {outbound_id}, {late_ms} ms late",
)

# --- ingress, outbox delivery (issue 3, continued) --------------------------------------------
OUTBOUND_PUBLISH_FAILED = event(
    "outbound.publish_failed",
    "outbound_id",
    "queue",
    "error",
    level=logging.WARNING,
    says="could not nudge delivery of reply {outbound_id} on {queue} (owed: re-sent when the broker is back): {error}",
)
OUTBOUND_LEASE_LOST = event(
    "outbound.lease_lost",
    "outbound_id",
    "operation",
    level=logging.WARNING,
    says="lost the lease of reply {outbound_id} during {operation}",
)
