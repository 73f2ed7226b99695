"""One typed settings object, read from the environment and an optional ``.env`` file.

A missing or malformed setting stops the process at start with one line naming the variable
(:func:`get_settings` raises :class:`SettingsError`; entry points turn it into ``SystemExit``).
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import sys
from functools import lru_cache
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    """Every knob of the runtime; names match the environment variables in README.md."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- infrastructure -------------------------------------------------------------------
    DATABASE_URL: str = "postgresql://postgres@127.0.0.1:5432/zenthor"
    DATABASE_POOL_SIZE: int = Field(default=8, ge=1)
    RABBITMQ_URL: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    # AMQP connection heartbeat (seconds), added to RABBITMQ_URL when the URL does not set one.
    RABBITMQ_HEARTBEAT_S: int = Field(default=30, ge=0)
    # Names the lease holder; unset means <hostname>-<pid>, computed in each process (see worker_id()).
    WORKER_ID: str | None = None

    # --- the job queue (issue: queue) ------------------------------------------------------
    AGENT_JOB_LOCK_MS: int = Field(default=60_000, ge=500)
    AGENT_JOB_HEARTBEAT_MS: int = Field(default=15_000, ge=100)
    AGENT_JOB_MAX_ATTEMPTS: int = Field(default=3, ge=1)
    # Retry backoff after a failed attempt: base * 2**(attempt-1), capped, with jitter.
    AGENT_JOB_RETRY_BASE_MS: int = Field(default=2_000, ge=0)
    AGENT_JOB_RETRY_MAX_MS: int = Field(default=300_000, ge=0)
    # A row without lease fields (written by an older version) is treated as stale after this.
    AGENT_JOB_LEGACY_WINDOW_MS: int = Field(default=600_000, ge=0)
    # A pending job nobody claimed for this long gets its dispatch message re-published.
    DISPATCH_REPUBLISH_GRACE_MS: int = Field(default=30_000, ge=0)
    # A worker that completes a job goes on with its conversation's next one, claimed in the
    # completion's commit (no broker hop), while the chain is below this many jobs and this many
    # ms since its dispatch message started; then it publishes the next job's nudge. 1: no chain.
    AGENT_JOB_CHAIN_MAX_JOBS: int = Field(default=16, ge=1)
    AGENT_JOB_CHAIN_MAX_MS: int = Field(default=1_000, ge=0)
    # Debounce (issue 14): a conversation's new turn waits this long a quiet before it may start,
    # each newer message pushing the wait back, but never more than the max after the burst's
    # first message. 0: off.
    QUEUE_DEBOUNCE_MS: int = Field(default=0, ge=0, le=600_000)
    QUEUE_DEBOUNCE_MAX_MS: int = Field(default=15_000, ge=0, le=3_600_000)
    # Queue mode (issue 14): ``collect`` answers the turns queued behind the one a worker claims
    # (at most QUEUE_COLLECT_MAX more) in the same turn, with one reply; ``followup`` gives every
    # message a turn of its own. Per channel when set (unset: QUEUE_MODE); a conversation's own
    # choice (``/queue``) goes before both.
    QUEUE_MODE: Literal["collect", "followup"] = "collect"
    QUEUE_MODE_WHATSAPP: Literal["collect", "followup"] | None = None
    QUEUE_MODE_WEBHOOK: Literal["collect", "followup"] | None = None
    QUEUE_MODE_TERMINAL: Literal["collect", "followup"] | None = None
    QUEUE_COLLECT_MAX: int = Field(default=20, ge=1, le=1_000)
    # The dispatch actor's Dramatiq time limit; stays below RabbitMQ's consumer_timeout (1 h).
    DISPATCH_TIME_LIMIT_MS: int = Field(default=900_000, ge=1_000)
    # Sub-minute sweep re-checks between periodiq's one-minute ticks (crash recovery latency).
    SWEEP_RECHECK_MS: int = Field(default=10_000, ge=200)
    # The turn implementation the dispatch actor runs ("module:function").
    AGENT_TURN: str = "zenthor.agent.turn:run_turn"

    # --- ingress and delivery -------------------------------------------------------------
    INBOUND_DEDUPE_TTL_S: int = Field(default=7 * 24 * 3600, ge=60)
    OUTBOUND_MAX_ATTEMPTS: int = Field(default=8, ge=1)
    OUTBOUND_LOCK_MS: int = Field(default=30_000, ge=500)
    # Delivery retry backoff: base * 2**(attempt-1), capped, with jitter (issue: ingress).
    OUTBOUND_RETRY_BASE_MS: int = Field(default=1_000, ge=0)
    OUTBOUND_RETRY_MAX_MS: int = Field(default=300_000, ge=0)
    # A pending outbox row nobody picked up for this long gets its delivery re-published.
    OUTBOUND_REPUBLISH_GRACE_MS: int = Field(default=30_000, ge=0)
    # Timeout of one webhook callback POST.
    WEBHOOK_TIMEOUT_S: float = Field(default=10.0, gt=0)
    # /healthz answers 503 when the last sweep finished longer ago than this.
    HEALTH_SWEEP_MAX_AGE_S: int = Field(default=180, ge=1)
    # /healthz and ops status fail when a job has been ready and unclaimed for longer than this.
    HEALTH_PENDING_MAX_AGE_S: int = Field(default=120, ge=1)

    # --- the model ------------------------------------------------------------------------
    AI_BASE_URL: str | None = None
    AI_API_KEY: str | None = None
    AI_MODEL: str | None = None
    AI_FALLBACK_MODEL: str | None = None
    AI_CONTEXT_WINDOW: int = Field(default=32_000, ge=256)
    AI_TIMEOUT_S: float = Field(default=60.0, gt=0)
    AI_SYSTEM_PROMPT: str | None = None
    APPROVAL_TTL_S: int = Field(default=600, ge=1)
    # Calls per model before the fallback (rate limit, timeout, 5xx), and their backoff.
    AI_RETRY_ATTEMPTS: int = Field(default=3, ge=1)
    AI_RETRY_BASE_MS: int = Field(default=500, ge=0)
    AI_RETRY_MAX_MS: int = Field(default=20_000, ge=0)
    AI_MAX_STEPS: int = Field(default=10, ge=1, le=50)
    AI_TOOL_TIMEOUT_S: float = Field(default=20.0, gt=0)
    # The most rows one turn reads from its conversation's tail when no context window bounds it
    # (with a window, the bound is what could fit it and its summary, and the larger one wins).
    AI_HISTORY_MAX_MESSAGES: int = Field(default=1_000, ge=20)
    # The language of an approval question when the user's message does not tell (en or pt).
    APPROVAL_DEFAULT_LANGUAGE: Literal["en", "pt"] = "en"

    # --- retention (issue 11, item 10) ----------------------------------------------------
    # Finished jobs, sent or failed outbox rows, resolved approvals and delivered or cancelled
    # reminders are deleted this many days after they finished, by a sweep step in batches.
    RETENTION_DAYS: int = Field(default=30, ge=1)
    # Messages are the conversation's memory: kept unless this is set (days; never an open job's).
    MESSAGE_RETENTION_DAYS: int | None = Field(default=None, ge=1)
    # Rows deleted per statement (one short transaction each).
    RETENTION_BATCH: int = Field(default=1_000, ge=10, le=50_000)

    # --- plugins --------------------------------------------------------------------------
    PLUGINS_CONFIG: str = "config/plugins.toml"
    PLUGINS_PATH: str = ""

    # --- channels -------------------------------------------------------------------------
    # Where this process runs: the WhatsApp fake transport refuses to start in production.
    ZENTHOR_ENV: Literal["production", "dev", "test"] = "production"
    WHATSAPP_AUTH_MODE: Literal["local", "postgres"] = "local"
    # local mode: one SQLite session file per account in this directory.
    WHATSAPP_AUTH_DIR: str = "var/whatsapp"
    WHATSAPP_ACCOUNT_ID: str = "default"
    # The account ownership lease (DB clock) and its heartbeat; a standby retries every STANDBY_RETRY.
    WHATSAPP_LEASE_TTL_MS: int = Field(default=45_000, ge=1_000)
    WHATSAPP_HEARTBEAT_MS: int = Field(default=15_000, ge=100)
    WHATSAPP_STANDBY_RETRY_MS: int = Field(default=3_000, ge=50)
    # After StreamReplaced (another connection took this device) wait this long before trying again.
    WHATSAPP_REPLACED_HOLDOFF_MS: int = Field(default=60_000, ge=0)
    # How long a stopping connection may take before the process gives up on it and exits.
    WHATSAPP_STOP_TIMEOUT_S: float = Field(default=90.0, gt=0)
    # On SIGTERM the lease is released only once the connection is closed, within this grace.
    WHATSAPP_SHUTDOWN_GRACE_S: float = Field(default=3.0, gt=0)
    # First-dial retries: capped exponential backoff with jitter (whatsmeow never retries it).
    WHATSAPP_RECONNECT_BASE_MS: int = Field(default=2_000, ge=10)
    WHATSAPP_RECONNECT_MAX_MS: int = Field(default=300_000, ge=10)
    WHATSAPP_TRANSPORT: Literal["neonize", "fake"] = "neonize"
    WHATSAPP_FAKE_DIR: str | None = None
    WHATSAPP_CONTACT_POLICY: Literal["open", "allowlist", "disabled"] = "allowlist"
    WHATSAPP_ALLOW_FROM: str = ""
    # Groups: ignored, or answered only when a message mentions the assistant.
    WHATSAPP_GROUPS: Literal["ignore", "mentions"] = "ignore"
    # Send rate (WhatsApp bans accounts that send too fast); queued replies wait, in order.
    WHATSAPP_RATE_PER_CHAT_PER_MIN: int = Field(default=20, ge=1)
    WHATSAPP_RATE_PER_ACCOUNT_PER_MIN: int = Field(default=60, ge=1)
    # The owner's outbox loop and its read-mark/typing loop poll Postgres this often.
    WHATSAPP_OUTBOX_POLL_MS: int = Field(default=250, ge=10)
    WHATSAPP_PRESENCE_POLL_MS: int = Field(default=1_000, ge=50)
    WHATSAPP_PAIR_TIMEOUT_S: int = Field(default=180, ge=5)
    # Serve this runtime's own Prometheus metrics on this port (0: off).
    WHATSAPP_METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    WHATSAPP_METRICS_HOST: str = "127.0.0.1"
    WHATSAPP_UNSUPPORTED_REPLY: str = "Sorry, I can only read text messages for now."
    # The one-account shortcut: this secret and callback URL serve WEBHOOK_DEFAULT_ACCOUNT only
    # (other accounts: `zenthor webhook add-account`). whsec_<base64>, or any string (its bytes).
    WEBHOOK_SECRET: str | None = None
    WEBHOOK_CALLBACK_URL: str | None = None
    WEBHOOK_DEFAULT_ACCOUNT: str = Field(default="default", min_length=1, max_length=128)
    # Encrypts the webhook accounts' secrets at rest (required once an account exists).
    ZENTHOR_SECRET_KEY: str | None = Field(default=None, min_length=16)
    # While changing that key: the old one, read only (`zenthor webhook reencrypt` moves every
    # secret to ZENTHOR_SECRET_KEY; then unset this).
    ZENTHOR_SECRET_KEY_PREVIOUS: str | None = Field(default=None, min_length=16)
    # Standard Webhooks: a request (and a callback) signed longer ago, or further ahead, is refused.
    WEBHOOK_TOLERANCE_S: int = Field(default=300, ge=1, le=86_400)
    # Accept the deprecated X-Zenthor-Signature (body-only, replayable) during a migration.
    WEBHOOK_ACCEPT_LEGACY_SIGNATURE: bool = False
    # A cost limit per (account, sender): a burst, refilled at a rate a minute (either 0: off).
    WEBHOOK_SENDER_RATE_PER_MIN: int = Field(default=30, ge=0)
    WEBHOOK_SENDER_BURST: int = Field(default=10, ge=0)
    WEBHOOK_CONTACT_POLICY: Literal["open", "allowlist", "disabled"] = "open"
    WEBHOOK_ALLOW_FROM: str = ""
    GATEWAY_HOST: str = "127.0.0.1"
    GATEWAY_PORT: int = Field(default=8080, ge=1, le=65535)
    # uvicorn processes of `zenthor gateway` when --workers is not given.
    GATEWAY_WORKERS: int = Field(default=1, ge=1, le=64)

    # --- observability --------------------------------------------------------------------
    LOG_FORMAT: Literal["json", "console"] = "json"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # The `service` field of log lines; unset, each command names itself (worker, gateway, ...).
    SERVICE_NAME: str | None = None

    # --- worker metrics (issue 10) --------------------------------------------------------
    # A `dramatiq zenthor.actors` process group serves its Prometheus metrics, summed over its
    # processes, on this port (0: off). Off by default: two groups on one host need two ports.
    WORKER_METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    WORKER_METRICS_HOST: str = "127.0.0.1"
    # Parent of each group's prometheus_client multiprocess directory ("": <temp dir>/zenthor-worker-metrics).
    WORKER_METRICS_DIR: str = ""

    @field_validator("DATABASE_URL")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("postgres", "postgresql") or not parsed.path.strip("/"):
            raise ValueError("must look like postgresql://user@host:5432/dbname")
        return value

    @field_validator("RABBITMQ_URL")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        for part in value.split(";"):
            if urlparse(part).scheme not in ("amqp", "amqps"):
                raise ValueError("must look like amqp://user:pass@host:5672/vhost")
        return value

    @field_validator("ZENTHOR_SECRET_KEY", "ZENTHOR_SECRET_KEY_PREVIOUS", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("WEBHOOK_SECRET")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        if value and value.startswith("whsec_"):
            encoded = value.removeprefix("whsec_")
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not key:
                raise ValueError(
                    "must be whsec_ followed by base64 (as `zenthor webhook rotate-secret` prints)"
                )
        return value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _heartbeat_below_lease(self) -> Settings:
        if self.AGENT_JOB_HEARTBEAT_MS * 2 > self.AGENT_JOB_LOCK_MS:
            raise ValueError(
                "AGENT_JOB_HEARTBEAT_MS must be at most half of AGENT_JOB_LOCK_MS "
                f"(got {self.AGENT_JOB_HEARTBEAT_MS} and {self.AGENT_JOB_LOCK_MS})"
            )
        if self.WEBHOOK_TIMEOUT_S * 1000 >= self.OUTBOUND_LOCK_MS:
            raise ValueError(
                "WEBHOOK_TIMEOUT_S must be shorter than OUTBOUND_LOCK_MS, or a slow callback could "
                f"outlive its delivery lease and be sent twice (got {self.WEBHOOK_TIMEOUT_S}s and "
                f"{self.OUTBOUND_LOCK_MS} ms)"
            )
        if self.WHATSAPP_HEARTBEAT_MS * 2 > self.WHATSAPP_LEASE_TTL_MS:
            raise ValueError("WHATSAPP_HEARTBEAT_MS must be at most half of WHATSAPP_LEASE_TTL_MS")
        if self.QUEUE_DEBOUNCE_MS and self.QUEUE_DEBOUNCE_MAX_MS < self.QUEUE_DEBOUNCE_MS:
            raise ValueError(
                "QUEUE_DEBOUNCE_MAX_MS must be at least QUEUE_DEBOUNCE_MS, or no message would ever "
                f"wait its quiet (got {self.QUEUE_DEBOUNCE_MAX_MS} and {self.QUEUE_DEBOUNCE_MS})"
            )
        # The webhook channel is on when either is set; then every reply needs both. Refusing here
        # stops the gateway taking messages it could never answer, and a worker retrying each reply
        # for minutes and holding the conversation's later replies behind it.
        webhook = {"WEBHOOK_SECRET": self.WEBHOOK_SECRET, "WEBHOOK_CALLBACK_URL": self.WEBHOOK_CALLBACK_URL}
        missing = [name for name, value in webhook.items() if not value]
        if len(missing) == 1:
            given = next(name for name in webhook if name not in missing)
            raise ValueError(
                f"{missing[0]} is required when {given} is set: the webhook channel needs both "
                "(the secret signs requests and replies, replies are POSTed to the callback URL)"
            )
        return self

    @property
    def channel_queue_modes(self) -> dict[str, str]:
        """The queue modes set per channel (``QUEUE_MODE_<CHANNEL>``), by channel name."""
        modes = {
            "whatsapp": self.QUEUE_MODE_WHATSAPP,
            "webhook": self.QUEUE_MODE_WEBHOOK,
            "terminal": self.QUEUE_MODE_TERMINAL,
        }
        return {channel: mode for channel, mode in modes.items() if mode is not None}

    def queue_mode_for(self, channel: str, chosen: str | None = None) -> str:
        """The queue mode a conversation of ``channel`` runs in: its own ``chosen`` mode, else the
        channel's, else ``QUEUE_MODE``."""
        return chosen or self.channel_queue_modes.get(channel) or self.QUEUE_MODE

    @property
    def ai_configured(self) -> bool:
        """True when a model endpoint and model name are set."""
        return bool(self.AI_BASE_URL and self.AI_MODEL)

    def require(self, *names: str) -> None:
        """Raise :class:`SettingsError` naming the first of ``names`` that is unset."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise SettingsError(f"missing setting {name}: set it in the environment or .env")


def worker_id() -> str:
    """This process's lease-holder name: ``WORKER_ID`` if set, else ``<hostname>-<pid>``.

    Computed per call so forked worker processes never share their parent's id.
    """
    pid = os.getpid()
    cached = _worker_ids.get(pid)
    if cached is None:
        cached = get_settings().WORKER_ID or f"{socket.gethostname()}-{pid}"
        _worker_ids[pid] = cached
    return cached


_worker_ids: dict[int, str] = {}


_SECRET_SETTINGS = frozenset(
    {"WEBHOOK_SECRET", "ZENTHOR_SECRET_KEY", "ZENTHOR_SECRET_KEY_PREVIOUS", "AI_API_KEY"}
)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if name in _SECRET_SETTINGS:
        return f"invalid setting {name}: {message}"  # never echo a secret
    if "input" in first and name != "settings" and first.get("type") != "missing":
        return f"invalid setting {name}: {message} (got {first['input']!r})"
    if first.get("type") == "missing":
        return f"missing setting {name}"
    if name == "settings":
        return f"invalid settings: {message}"  # a rule across settings: the message names them
    return f"invalid setting {name}: {message}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; raises :class:`SettingsError` naming a bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def settings_or_exit() -> Settings:
    """Settings for an entry point: on a bad setting print one line and exit with status 2."""
    try:
        return get_settings()
    except SettingsError as error:
        sys.stderr.write(f"zenthor: {error}\n")
        raise SystemExit(2) from None


def reset_settings_cache() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
    _worker_ids.clear()
