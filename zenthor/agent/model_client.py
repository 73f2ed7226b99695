"""The model client: any OpenAI-compatible Chat Completions endpoint, with tool calling.

The openai SDK does the HTTP with explicit timeouts and ``max_retries=0``: retries are ours, so
they can honour ``Retry-After``, add jitter, check the job's lease between attempts, and move to
``AI_FALLBACK_MODEL`` when the primary keeps failing. A call that still fails raises a classified
:class:`~zenthor.agent.errors.ModelError`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from zenthor.agent.errors import OPERATOR_KINDS, ModelError, classify
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.observability.metrics import MODEL_CALL_SECONDS

Checkpoint = Callable[[str], None]


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for; ``arguments`` is the raw JSON text it sent."""

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ModelReply:
    """The model's answer: text, tool calls, or both."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    model: str = ""
    finish_reason: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Where the model is and how hard to try."""

    base_url: str
    api_key: str | None
    model: str
    fallback_model: str | None = None
    timeout_s: float = 60.0
    attempts: int = 3
    retry_base_ms: int = 500
    retry_max_ms: int = 20_000

    @classmethod
    def from_settings(cls, settings: Any) -> ModelConfig:
        return cls(
            base_url=settings.AI_BASE_URL,
            api_key=settings.AI_API_KEY,
            model=settings.AI_MODEL,
            fallback_model=settings.AI_FALLBACK_MODEL or None,
            timeout_s=settings.AI_TIMEOUT_S,
            attempts=settings.AI_RETRY_ATTEMPTS,
            retry_base_ms=settings.AI_RETRY_BASE_MS,
            retry_max_ms=settings.AI_RETRY_MAX_MS,
        )


_clients: dict[tuple[str, str, float], openai.OpenAI] = {}
_clients_mu = threading.Lock()


def _client(config: ModelConfig) -> openai.OpenAI:
    """One SDK client (and connection pool) per endpoint, shared by the worker's threads."""
    key = (config.base_url, config.api_key or "", config.timeout_s)
    with _clients_mu:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                base_url=config.base_url,
                # Local servers (Ollama, llama.cpp) accept any key; the SDK insists on one.
                api_key=config.api_key or "not-needed",
                timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0)),
                max_retries=0,
            )
            _clients[key] = client
        return client


def _field(value: Any, name: str) -> Any:
    """``value.name`` of the SDK's typed response, or ``value[name]`` of its JSON: the SDK turns
    each JSON object where it expects one of its models into that model and leaves any other value
    as it is, on which ``getattr`` finds none of the fields read here."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def parse_completion(response: Any, model: str) -> ModelReply:
    """Read the response (the SDK's ``ChatCompletion``, or the JSON it is built from) into a
    :class:`ModelReply`; ``format`` error when unusable."""
    choices = _field(response, "choices")
    if not choices:
        raise ModelError("format", "the model returned no choices", model=model)
    message = _field(choices[0], "message")
    if message is None:
        raise ModelError("format", "the model returned a choice without a message", model=model)
    calls: list[ToolCall] = []
    for index, raw in enumerate(_field(message, "tool_calls") or []):
        function = _field(raw, "function")
        name = _field(function, "name") if function is not None else None
        if not name:
            raise ModelError("format", "the model returned a tool call without a name", model=model)
        calls.append(
            ToolCall(
                id=_field(raw, "id") or f"call_{index}",
                name=str(name),
                arguments=_field(function, "arguments") or "{}",
            )
        )
    content = _field(message, "content")
    if not calls and not (content or "").strip():
        raise ModelError("format", "the model returned an empty answer", model=model)
    return ModelReply(
        content=content,
        tool_calls=calls,
        model=_field(response, "model") or model,
        finish_reason=_field(choices[0], "finish_reason"),
    )


def response_data(response: httpx.Response) -> Any:
    """The body as the SDK reads it for a typed result: JSON when the content type says so (a
    malformed body raises), else JSON if it parses, else the text."""
    content_type, *_ = response.headers.get("content-type", "*").split(";")
    if content_type.endswith("json"):
        return response.json()
    try:
        return response.json()
    except Exception:  # noqa: BLE001 - as the SDK: a body that is not JSON is returned as text
        return response.text


class ModelClient:
    """Calls the configured model with retries, backoff, ``Retry-After`` and the fallback."""

    def __init__(self, config: ModelConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep

    def models(self) -> list[str]:
        """The primary model, then the fallback (if set and different)."""
        names = [self.config.model]
        if self.config.fallback_model and self.config.fallback_model != self.config.model:
            names.append(self.config.fallback_model)
        return names

    def complete(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        checkpoint: Checkpoint = lambda name: None,
        job_id: int | None = None,
    ) -> ModelReply:
        """One model answer for ``messages``; raises the last :class:`ModelError` when none came."""
        last: ModelError | None = None
        models = self.models()
        for index, model in enumerate(models):
            if index > 0 and last is not None:
                emit(
                    ev.MODEL_FALLBACK,
                    job_id=job_id,
                    from_model=models[index - 1],
                    to_model=model,
                    error_kind=last.kind,
                )
            try:
                return self._with_retries(model, messages, tools, checkpoint, job_id)
            except ModelError as error:
                last = error
                if error.kind in OPERATOR_KINDS:
                    emit(
                        ev.MODEL_ACCESS_DENIED,
                        job_id=job_id,
                        model=model,
                        error_kind=error.kind,
                        status_code=error.status_code,
                    )
                    raise
                if error.kind == "context_overflow":
                    raise  # the caller shrinks the context; another model will not help
        assert last is not None
        raise last

    def _with_retries(
        self,
        model: str,
        messages: list[dict],
        tools: list[dict] | None,
        checkpoint: Checkpoint,
        job_id: int | None,
    ) -> ModelReply:
        attempts = self.config.attempts
        for attempt in range(1, attempts + 1):
            checkpoint("model_call")
            started = time.monotonic()
            try:
                reply = self._call_once(model, messages, tools)
            except Exception as raw:  # noqa: BLE001 - every failure is classified below
                error = classify(raw, model)
            else:
                MODEL_CALL_SECONDS.labels(model=model, outcome="ok").observe(time.monotonic() - started)
                return reply
            MODEL_CALL_SECONDS.labels(model=model, outcome=error.kind).observe(time.monotonic() - started)
            delay_s = self._delay_s(error, attempt) if attempt < attempts and error.retryable else None
            emit(
                ev.MODEL_CALL_FAILED,
                job_id=job_id,
                model=model,
                error_kind=error.kind,
                status_code=error.status_code,
                attempt=attempt,
                retry_in_ms=None if delay_s is None else int(delay_s * 1000),
            )
            if delay_s is None:
                raise error
            self._wait(delay_s, checkpoint)
        raise AssertionError("unreachable")

    def _call_once(self, model: str, messages: list[dict], tools: list[dict] | None) -> ModelReply:
        options: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            options["tools"] = tools
        # The SDK's post() sends our body as it is: create() first walks every message through its
        # typed transform, which costs ~40 ms of CPU per 1,000 messages and leaves plain JSON
        # (our messages already are) unchanged. The SDK still raises its errors for a refused call;
        # the body comes back as JSON, not as its typed ChatCompletion, whose construction cost
        # ~0.18 ms of CPU per call (more under load) to give parse_completion the same fields.
        response = _client(self.config).post("/chat/completions", body=options, cast_to=httpx.Response)
        return parse_completion(response_data(response), model)

    def _delay_s(self, error: ModelError, attempt: int) -> float | None:
        """Backoff with jitter, or the server's ``Retry-After``; None when it asks for too long."""
        cap_s = self.config.retry_max_ms / 1000.0
        backoff = min(self.config.retry_base_ms / 1000.0 * (2 ** (attempt - 1)), cap_s)
        backoff *= random.uniform(0.8, 1.2)
        if error.retry_after_s is not None:
            if error.retry_after_s > cap_s:
                return None  # waiting that long would starve the turn: try the fallback instead
            return error.retry_after_s if error.retry_after_s > 0 else backoff
        return backoff

    def _wait(self, seconds: float, checkpoint: Checkpoint) -> None:
        """Sleep in short steps, stopping at once if the lease is lost meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(min(remaining, 0.2))
            checkpoint("model_backoff")
