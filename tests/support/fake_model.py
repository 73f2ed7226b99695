"""A fake OpenAI-compatible Chat Completions server on 127.0.0.1 (real HTTP), scriptable.

``FakeModel`` answers ``POST /v1/chat/completions``. Each request takes the next scripted
:class:`Reply` from the queue (``script(...)``); when the queue is empty the ``default`` callable
answers (by default: ``"ok: <last user text>"``). Every request body is recorded in ``requests``.

Replies can set the HTTP status, headers (``Retry-After``), a delay before answering, tool calls,
a raw (malformed) body, or an empty ``choices`` list.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer."""

    content: str | None = "ok"
    tool_calls: list[dict] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: str | None = None  # sent verbatim instead of a completion (malformed output)
    error: dict | None = None  # an OpenAI-style error object for non-200 statuses
    empty_choices: bool = False
    model: str | None = None  # answer only requests for this model; None = any


def tool_call(name: str, arguments: Any, call_id: str = "call_1") -> dict:
    """A tool call as the API returns it (``arguments`` a dict, or a raw string)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def completion(reply: Reply, model: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    choices = (
        []
        if reply.empty_choices
        else [{"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}]
    )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeModel:
    """The server; use as a context manager or call ``start()``/``stop()``."""

    def __init__(self, default: Callable[[dict], Reply] | None = None, delay_s: float = 0.0) -> None:
        self.default = default or (lambda body: Reply(content=f"ok: {last_user_text(body)}"))
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.times: list[float] = []  # time.monotonic() of each request's arrival
        self._script: list[Reply] = []
        self._mu = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order before the default."""
        with self._mu:
            self._script.extend(replies)

    def models_called(self) -> list[str]:
        return [body.get("model") for body in self.requests]

    def start(self) -> FakeModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, body: dict) -> Reply:
        with self._mu:
            self.requests.append(body)
            self.times.append(time.monotonic())
            for index, reply in enumerate(self._script):
                if reply.model is None or reply.model == body.get("model"):
                    return self._script.pop(index)
        return self.default(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: with Nagle on, the body waits for the
            # client's delayed ACK of the headers (40 ms on Linux) and every call looks 40 ms slow.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": "not found"}}), {})
                    return
                reply = fake._next(body)
                delay = reply.delay_s or fake.delay_s
                if delay:
                    time.sleep(delay)
                if reply.raw_body is not None:
                    payload = reply.raw_body
                elif reply.status != 200:
                    payload = json.dumps(
                        {"error": reply.error or {"message": f"fake error {reply.status}", "type": "fake"}}
                    )
                else:
                    payload = json.dumps(completion(reply, body.get("model", "fake")))
                self._send(reply.status, payload, reply.headers)

            def _send(self, status: int, payload: str, headers: dict[str, str]) -> None:
                data = payload.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        return Handler
