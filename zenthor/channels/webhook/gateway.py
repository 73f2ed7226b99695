"""``zenthor gateway``: the webhook ingress, ``/healthz`` and ``/metrics`` (Starlette on uvicorn).

``POST /v1/webhook/{account_id}/messages``: checks size (413 above 64 KiB), the account (404
unknown), the Standard Webhooks signature (401 naming the failed check), JSON (400) and fields
(422) before anything is written, then calls :func:`~zenthor.ingress.accept` in a worker thread:
202 accepted, 200 duplicate. accept is one transaction, so nothing is half-written on any error;
a database outage answers 503 so the caller retries. ``GET /openapi.json`` describes the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zenthor.channels.webhook import signing
from zenthor.channels.webhook.accounts import WebhookAccount, find_account
from zenthor.channels.webhook.openapi import MAX_BODY_BYTES, openapi_document
from zenthor.channels.webhook.secret_box import SecretKeyError
from zenthor.channels.webhook.sender_limit import SenderOverLimit, sender_limit
from zenthor.channels.webhook.validation import BodyError, FieldError, parse_body, to_inbound
from zenthor.db import database
from zenthor.ingress import DUPLICATE, IGNORED, AcceptResult, InboundMessage, accept
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.observability.channel_metrics import AccountsCollector
from zenthor.queue.channel_leases import accounts_snapshot
from zenthor.queue.health import health_checks
from zenthor.queue.stats import queue_depth
from zenthor.settings import Settings, get_settings

MAX_ACCOUNT_ID_LENGTH = 128

_logger = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


def create_app(
    settings: Settings | None = None,
    *,
    publish: Callable[[int], object],
    broker: Any,
) -> Starlette:
    """The gateway application: ``publish`` nudges dispatch for an accepted job, ``broker`` is
    asked for the dispatch queue's consumers by /healthz (the command passes the real ones)."""
    settings = settings or get_settings()
    admit = sender_limit(settings.WEBHOOK_SENDER_RATE_PER_MIN, settings.WEBHOOK_SENDER_BURST)
    queue_registry = CollectorRegistry(auto_describe=False)
    queue_registry.register(_QueueCollector())
    queue_registry.register(AccountsCollector(lambda: accounts_snapshot("whatsapp")))

    async def receive_message(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            body = await _read_limited(request, MAX_BODY_BYTES)
        except _TooLarge:
            return _reject(account_id, 413, f"body is larger than {MAX_BODY_BYTES} bytes")
        if not account_id.strip() or len(account_id) > MAX_ACCOUNT_ID_LENGTH:
            return _reject(account_id, 422, "account_id: must be 1 to 128 characters", field="account_id")
        if "\x00" in account_id:  # Postgres text cannot hold NUL: refused before any lookup
            return _reject(account_id, 422, "account_id: must not contain NUL characters", field="account_id")
        try:
            account = await run_in_threadpool(_find_account_in_thread, account_id, settings)
        except (OperationalError, InterfaceError, MaxConnectionsExceeded) as error:
            _logger.error("database unavailable: %s", str(error)[:200], extra={"event": "gateway.db_error"})
            return _reject(account_id, 503, "database unavailable; retry later")
        except SecretKeyError as error:
            # A misconfigured gateway (the start-up check passed, the key changed since): the
            # sender should retry later; the operator reads the cause in the log.
            _logger.error("%s", error, extra={"event": "gateway.secret_key_error"})
            return _reject(account_id, 503, "this account's secrets cannot be read; retry later")
        if account is None:
            return _reject(
                account_id,
                404,
                "unknown account: no webhook account has this id (`zenthor webhook add-account`)",
                check="unknown_account",
            )
        try:
            _check_signature(account, body, request.headers, settings)
        except signing.SignatureError as error:
            return _reject(account_id, 401, str(error), check=error.check, header=error.header)
        try:
            message = to_inbound(account_id, parse_body(body))
        except BodyError as error:
            return _reject(account_id, 400, str(error))
        except FieldError as error:
            return _reject(account_id, 422, str(error), field=error.field)
        try:
            result = await run_in_threadpool(_accept_in_thread, message, publish, account, admit)
        except SenderOverLimit as error:
            return _reject(
                account_id,
                429,
                str(error),
                field="sender_id",
                check="sender_rate_limit",
                extra_headers={"Retry-After": str(error.retry_after_s)},
            )
        except (OperationalError, InterfaceError, MaxConnectionsExceeded) as error:
            _logger.error("database unavailable: %s", str(error)[:200], extra={"event": "gateway.db_error"})
            return _reject(account_id, 503, "database unavailable; retry later")
        if result.status == DUPLICATE:
            return JSONResponse({"status": "duplicate"}, status_code=200)
        if result.status == IGNORED:
            return JSONResponse({"status": "ignored"}, status_code=202)
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def healthz(request: Request) -> Response:
        ok, checks = await run_in_threadpool(
            lambda: health_checks(
                broker,
                sweep_max_age_s=settings.HEALTH_SWEEP_MAX_AGE_S,
                pending_max_age_s=settings.HEALTH_PENDING_MAX_AGE_S,
            )
        )
        accounts = await run_in_threadpool(channel_account_health)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks, "channel_accounts": accounts},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        # The default registry holds this process's zenthor_events_total (and the process
        # collectors); worker-only metrics are in metrics.WORKER_REGISTRY, served by the workers.
        def render() -> bytes:
            with database.connection_context():
                return generate_latest(REGISTRY) + generate_latest(queue_registry)

        try:
            payload = await run_in_threadpool(render)
        except (OperationalError, InterfaceError):
            payload = generate_latest(REGISTRY)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    return Starlette(
        routes=[
            Route("/v1/webhook/{account_id}/messages", receive_message, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        # Every answer is JSON, also the router's own 404 and 405 and an unexpected error.
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _server_error(request: Request, error: Exception) -> Response:
    _logger.error(
        "unexpected error: %s", type(error).__name__, exc_info=error, extra={"event": "gateway.error"}
    )
    return JSONResponse({"error": "internal error; see the gateway log"}, status_code=500)


def _find_account_in_thread(account_id: str, settings: Settings) -> WebhookAccount | None:
    with database.connection_context():
        return find_account(account_id, settings)


def _check_signature(
    account: WebhookAccount, body: bytes, headers: Mapping[str, str], settings: Settings
) -> None:
    """Raise :class:`~zenthor.channels.webhook.signing.SignatureError` unless the request is signed
    with one of the account's secrets: Standard Webhooks whenever any of its headers is present,
    else the legacy header when ``WEBHOOK_ACCEPT_LEGACY_SIGNATURE`` allows it."""
    legacy = headers.get(signing.LEGACY_SIGNATURE_HEADER)
    if legacy is None or signing.has_standard_headers(headers):
        signing.verify(body, headers, account.secrets, tolerance_s=settings.WEBHOOK_TOLERANCE_S)
        return
    if not settings.WEBHOOK_ACCEPT_LEGACY_SIGNATURE:
        raise signing.SignatureError(
            signing.LEGACY_REFUSED,
            f"{signing.LEGACY_SIGNATURE_HEADER} is no longer accepted: sign with Standard Webhooks "
            f"({', '.join(signing.STANDARD_HEADERS)})",
            header=signing.LEGACY_SIGNATURE_HEADER,
        )
    if not signing.legacy_verify(body, legacy, account.secrets):
        raise signing.SignatureError(
            signing.NO_MATCHING_SIGNATURE,
            f"no matching signature: {signing.LEGACY_SIGNATURE_HEADER} does not match this account's "
            "secret over the body",
            header=signing.LEGACY_SIGNATURE_HEADER,
        )
    _warn_legacy(account.account_id)


_LEGACY_WARN_EVERY_S = 3600.0
_legacy_warned: dict[str, float] = {}
_legacy_lock = threading.Lock()


def _warn_legacy(account_id: str) -> None:
    # Once per account and hour (per gateway process): a migration is visible, not a flood.
    now = time.monotonic()
    with _legacy_lock:
        last = _legacy_warned.get(account_id)
        if last is not None and now - last < _LEGACY_WARN_EVERY_S:
            return
        _legacy_warned[account_id] = now
    emit(ev.GATEWAY_LEGACY_SIGNATURE, account_id=account_id[:128])


def _accept_in_thread(
    message: InboundMessage,
    publish: Callable[[int], object],
    account: WebhookAccount,
    admit: Callable[[InboundMessage], None] | None,
) -> AcceptResult:
    # The thread hands its connection back to the pool after each request.
    with database.connection_context():
        return accept(message, publish=publish, policy=account.policy, admit=admit)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def _reject(
    account_id: str,
    status: int,
    error: str,
    *,
    field: str | None = None,
    check: str | None = None,
    header: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> JSONResponse:
    emit(ev.GATEWAY_REQUEST_REJECTED, account_id=account_id[:128], status=status, reason=error[:200])
    content: dict[str, Any] = {"error": error}
    for name, value in (("field", field), ("check", check), ("header", header)):
        if value is not None:
            content[name] = value
    return JSONResponse(content, status_code=status, headers=extra_headers)


def channel_account_health() -> dict[str, str]:
    """Each WhatsApp account's state for /healthz: ``ok`` when a runtime owns it and is connected,
    else what is wrong. Reported beside the checks, not in them: the gateway itself is healthy
    while an account waits for an operator, and a probe must not restart it for that."""
    try:
        with database.connection_context():
            accounts = accounts_snapshot()
    except Exception as error:  # noqa: BLE001 - postgres is reported by the checks
        return {"error": f"{type(error).__name__}"}
    report = {}
    for account in accounts:
        name = f"{account['channel']}:{account['account_id']}"
        if account["lease_held"] and account["state"] == "connected":
            report[name] = "ok"
        elif account["state"] in ("logged_out", "outdated", "banned") and not account["lease_held"]:
            report[name] = f"{account['state']}: {account['last_error'] or 'needs an operator'}"
        elif account["hold_until"] is not None and account["hold_until"] > datetime.now(UTC):
            report[name] = f"held off until {account['hold_until'].isoformat()}: {account['last_error']}"
        elif not account["lease_held"]:
            report[name] = (
                f"no owner (state {account['state']}): is `zenthor whatsapp run` running? "
                f"{account['last_error'] or ''}"
            ).strip()
        else:
            report[name] = f"{account['state']} (owner {account['owner_id']})"
    return report


class _QueueCollector:
    """Queue gauges read from Postgres at scrape time (right however many workers run).

    Open rows only (:func:`~zenthor.queue.stats.queue_depth` counts through the partial indexes):
    finished jobs and sent rows are not gauged, since counting them reads the whole tables at
    every scrape; their rates are the workers' ``zenthor_events_total`` and
    ``zenthor_deliveries_total``.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = queue_depth()
        jobs = GaugeMetricFamily("zenthor_jobs", "open agent_job rows by status", labels=["status"])
        for status, count in depth["jobs"].items():
            jobs.add_metric([status], count)
        yield jobs
        outbox = GaugeMetricFamily(
            "zenthor_outbox", "unsent outbound_message rows by status", labels=["status"]
        )
        for status, count in depth["outbox"].items():
            outbox.add_metric([status], count)
        yield outbox
        yield GaugeMetricFamily(
            "zenthor_expired_leases", "processing jobs whose lease expired", value=depth["expired_leases"]
        )
        age = depth["oldest_pending_age_s"]
        yield GaugeMetricFamily(
            "zenthor_oldest_pending_age_seconds", "age of the oldest pending job (0: none)", value=age or 0.0
        )
        sweep_age = depth["last_sweep_age_s"]
        yield GaugeMetricFamily(
            "zenthor_last_sweep_age_seconds",
            "seconds since the last sweep finished (-1: never)",
            value=-1 if sweep_age is None else sweep_age,
        )
