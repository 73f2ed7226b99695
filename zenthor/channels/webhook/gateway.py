"""``zenthor gateway``: the webhook ingress, ``/healthz`` and ``/metrics`` (Starlette on uvicorn).

``POST /v1/webhook/{account_id}/messages``: checks size (413 above 64 KiB), the account (404
unknown), the Standard Webhooks signature (401 naming the failed check), JSON (400) and fields
(422) before anything is written, then calls :func:`~zenthor.ingress.accept` in a worker thread:
202 accepted, 200 duplicate. accept is one transaction, so nothing is half-written on any error;
a database outage answers 503 so the caller retries. ``GET /openapi.json`` describes the API.

The accept path is one short transaction and one publish (issue 13): accounts come from a
per-process cache that the accept transaction itself checks against the stored row (see
:mod:`~zenthor.channels.webhook.accounts`; an answer the cached copy alone would give, a 401, 400
or 422, is given only after a fresh read agrees), and database work runs on threads that keep
their connection (:mod:`~zenthor.channels.webhook.db_threads`), so a request checks nothing out
of the pool and reads nothing but what accept writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
from zenthor.channels.webhook.accounts import AccountCache, Cached, WebhookAccount, load_account
from zenthor.channels.webhook.db_threads import DbThreads, thread_count
from zenthor.channels.webhook.openapi import MAX_BODY_BYTES, openapi_document
from zenthor.channels.webhook.secret_box import SecretKeyError
from zenthor.channels.webhook.sender_limit import SenderOverLimit, sender_limit
from zenthor.channels.webhook.validation import BodyError, FieldError, parse_body, to_inbound
from zenthor.db import database
from zenthor.ingress import DUPLICATE, IGNORED, AcceptResult, InboundMessage, accept
from zenthor.ingress.pipeline import PreconditionFailed
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.observability.channel_metrics import AccountsCollector
from zenthor.queue.channel_leases import accounts_snapshot
from zenthor.queue.health import health_checks
from zenthor.queue.stats import queue_depth
from zenthor.settings import Settings, get_settings

MAX_ACCOUNT_ID_LENGTH = 128
# Reads of one account per request at most: the cached copy, then fresh reads while the account
# keeps changing under the request (an operator rotating again and again), then 503.
_ACCOUNT_READS = 3

_logger = logging.getLogger(__name__)

_DB_ERRORS = (OperationalError, InterfaceError, MaxConnectionsExceeded)


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Refusal:
    """An error answer not yet given (:func:`_reject` gives it and logs it once)."""

    status: int
    error: str
    field: str | None = None
    check: str | None = None
    header: str | None = None
    extra_headers: dict[str, str] | None = None


# The three success bodies, rendered once (what JSONResponse would render for each).
def _status_response(status: str, code: int) -> Response:
    return Response(b'{"status":"' + status.encode() + b'"}', status_code=code, media_type="application/json")


_UNAVAILABLE = _Refusal(503, "database unavailable; retry later")


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
    accounts = AccountCache()
    db_threads = DbThreads(thread_count(settings.DATABASE_POOL_SIZE), broker=broker)
    queue_registry = CollectorRegistry(auto_describe=False)
    queue_registry.register(_QueueCollector())
    queue_registry.register(AccountsCollector(lambda: accounts_snapshot("whatsapp")))

    async def receive_message(request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            body = await _read_limited(request, MAX_BODY_BYTES)
        except _TooLarge:
            return _reject(account_id, _Refusal(413, f"body is larger than {MAX_BODY_BYTES} bytes"))
        if not account_id.strip() or len(account_id) > MAX_ACCOUNT_ID_LENGTH:
            return _reject(
                account_id, _Refusal(422, "account_id: must be 1 to 128 characters", field="account_id")
            )
        if "\x00" in account_id:  # Postgres text cannot hold NUL: refused before any lookup
            return _reject(
                account_id, _Refusal(422, "account_id: must not contain NUL characters", field="account_id")
            )
        cached = accounts.get(account_id)
        from_cache = cached is not None
        for _ in range(_ACCOUNT_READS):
            if cached is None:
                try:
                    cached = await db_threads.run(load_account, account_id, settings)
                except _DB_ERRORS as error:
                    _log_db_error(error)
                    return _reject(account_id, _UNAVAILABLE)
                except SecretKeyError as error:
                    # A misconfigured gateway (the start-up check passed, the key changed since): the
                    # sender should retry later; the operator reads the cause in the log.
                    _logger.error("%s", error, extra={"event": "gateway.secret_key_error"})
                    return _reject(
                        account_id, _Refusal(503, "this account's secrets cannot be read; retry later")
                    )
                accounts.put(account_id, cached)
                from_cache = False
                if cached is None:
                    return _reject(
                        account_id,
                        _Refusal(
                            404,
                            "unknown account: no webhook account has this id (`zenthor webhook add-account`)",
                            check="unknown_account",
                        ),
                    )
            answer, checked = await answer_with(cached, body, request.headers)
            if answer is not None and (checked or not from_cache):
                return answer if isinstance(answer, Response) else _reject(account_id, answer)
            # The account changed since it was read (answer None), or the cached copy alone would
            # refuse the request: decide again on a fresh read.
            cached = None
        return _reject(
            account_id, _Refusal(503, "the account changed while this request was accepted; retry")
        )

    async def answer_with(
        cached: Cached, body: bytes, headers: Mapping[str, str]
    ) -> tuple[Response | _Refusal | None, bool]:
        """The answer to a request for ``cached``'s account, and whether the accept transaction
        confirmed the account (None: it did not, the account changed)."""
        account = cached.account
        try:
            _check_signature(account, body, headers, settings)
        except signing.SignatureError as error:
            return _Refusal(401, str(error), check=error.check, header=error.header), False
        try:
            message = to_inbound(account.account_id, parse_body(body))
        except BodyError as error:
            return _Refusal(400, str(error)), False
        except FieldError as error:
            return _Refusal(422, str(error), field=error.field), False
        try:
            result = await db_threads.run(_accept, message, publish, cached, admit)
        except PreconditionFailed:
            return None, False
        except SenderOverLimit as error:
            refusal = _Refusal(
                429,
                str(error),
                field="sender_id",
                check="sender_rate_limit",
                extra_headers={"Retry-After": str(error.retry_after_s)},
            )
            return refusal, True
        except _DB_ERRORS as error:
            _log_db_error(error)
            return _UNAVAILABLE, True
        if result.status == DUPLICATE:
            return _status_response("duplicate", 200), True
        if result.status == IGNORED:
            return _status_response("ignored", 202), True
        return _status_response("accepted", 202), True

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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        db_threads.close()  # their connections go back to the pool, their publishers close

    return Starlette(
        lifespan=lifespan,
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


def _log_db_error(error: Exception) -> None:
    _logger.error("database unavailable: %s", str(error)[:200], extra={"event": "gateway.db_error"})


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


def _accept(
    message: InboundMessage,
    publish: Callable[[int], object],
    cached: Cached,
    admit: Callable[[InboundMessage], None] | None,
) -> AcceptResult:
    # In a DbThreads thread, on the connection it keeps. The precondition makes the transaction
    # refuse (PreconditionFailed, nothing written) when the account is no longer the cached one.
    return accept(
        message,
        publish=publish,
        policy=cached.account.policy,
        admit=admit,
        precondition=cached.precondition(),
    )


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


def _reject(account_id: str, refusal: _Refusal) -> JSONResponse:
    emit(
        ev.GATEWAY_REQUEST_REJECTED,
        account_id=account_id[:128],
        status=refusal.status,
        reason=refusal.error[:200],
    )
    content: dict[str, Any] = {"error": refusal.error}
    for name, value in (("field", refusal.field), ("check", refusal.check), ("header", refusal.header)):
        if value is not None:
            content[name] = value
    return JSONResponse(content, status_code=refusal.status, headers=refusal.extra_headers)


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
