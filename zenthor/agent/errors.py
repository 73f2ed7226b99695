"""Model errors, classified so the turn knows whether to retry, fall back, or give up at once.

Kinds: ``auth``, ``billing``, ``rate_limit``, ``timeout``, ``server``, ``format``,
``context_overflow``, ``unknown``. Rate limits, timeouts, server and format errors are worth
another try (same model after a backoff, then the fallback model, then the job's next attempt);
auth and billing never are: the operator must fix the key or the account.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import openai

RETRYABLE_KINDS = frozenset({"rate_limit", "timeout", "server", "format"})
OPERATOR_KINDS = frozenset({"auth", "billing"})  # someone must act; an alert fires


@dataclass
class ModelError(Exception):
    """A classified failure of one model call."""

    kind: str
    message: str
    status_code: int | None = None
    retry_after_s: float | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        """True when another call (after a backoff, or on another model) may succeed."""
        return self.kind in RETRYABLE_KINDS

    def __str__(self) -> str:
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{code}: {self.message}"


_BILLING_MARKERS = ("insufficient_quota", "billing", "payment", "quota exceeded", "credit")
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)


def parse_retry_after(headers: object) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None
    millis = get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_text(error: openai.APIStatusError) -> str:
    body = error.body
    parts = [str(error.message or "")]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            parts += [str(inner.get(key) or "") for key in ("code", "type", "message")]
    return " ".join(parts).lower()


def classify(error: BaseException, model: str | None = None) -> ModelError:
    """Turn an openai SDK exception (or anything else) into a :class:`ModelError`."""
    if isinstance(error, ModelError):
        return error
    if isinstance(error, openai.APITimeoutError):
        return ModelError("timeout", "the model did not answer in time", model=model)
    if isinstance(error, openai.APIConnectionError):
        return ModelError("server", f"cannot reach the model endpoint: {error}", model=model)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        text = _error_text(error)
        retry_after = parse_retry_after(getattr(error.response, "headers", None))
        summary = text[:200]
        if status in (401, 403):
            return ModelError("auth", summary or "the model rejected our credentials", status, model=model)
        if status == 402 or any(marker in text for marker in _BILLING_MARKERS):
            return ModelError("billing", summary or "the model account cannot pay", status, model=model)
        if status == 429:
            return ModelError("rate_limit", summary or "rate limited", status, retry_after, model)
        if status == 408:
            return ModelError("timeout", summary or "request timeout", status, retry_after, model)
        if status >= 500:
            return ModelError("server", summary or "server error", status, retry_after, model)
        if status in (400, 413, 422) and any(marker in text for marker in _CONTEXT_MARKERS):
            return ModelError("context_overflow", summary, status, model=model)
        return ModelError("unknown", summary or f"HTTP {status}", status, model=model)
    if isinstance(error, openai.APIResponseValidationError | ValueError | KeyError | TypeError):
        return ModelError("format", f"malformed model response: {type(error).__name__}", model=model)
    return ModelError("unknown", f"{type(error).__name__}: {error}"[:200], model=model)


class TurnError(Exception):
    """A turn that could not finish; ``retryable`` says whether another attempt may help."""

    def __init__(self, reason: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
