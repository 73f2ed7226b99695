"""Helpers for the ingress tests: inbound factories, webhook signing, a fake callback server, a
gateway in a thread or a process."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zenthor.channels.webhook import signing
from zenthor.db import execute
from zenthor.ingress import InboundMessage

TEST_SECRET = "whsec_dGVzdC1zZWNyZXQtb2YtdGhlLWluZ3Jlc3MtdGVzdHMtMzJi"
"""A Standard Webhooks secret for tests (``whsec_`` + base64)."""


def sign_headers(
    body: bytes,
    secret: str | Iterable[str] = TEST_SECRET,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
    legacy: bool = False,
) -> dict[str, str]:
    """The headers that sign ``body`` as a sender would: Standard Webhooks (``webhook-id``, now
    unless ``timestamp``, one ``v1,`` signature per secret), or the legacy
    ``X-Zenthor-Signature`` alone with ``legacy=True``. The one place tests sign a webhook."""
    if legacy:
        assert isinstance(secret, str)
        return {signing.LEGACY_SIGNATURE_HEADER: signing.legacy_sign(body, secret)}
    return signing.sign_headers(secret, body, msg_id=msg_id or f"msg_{uuid.uuid4().hex}", timestamp=timestamp)


def signed_post(
    client,
    url: str,
    body: bytes | dict,
    secret: str | Iterable[str] = TEST_SECRET,
    *,
    headers: dict[str, str] | None = None,
    **signing_options,
):
    """POST ``body`` (bytes, or a dict sent as UTF-8 JSON) to ``url`` with ``client`` (an
    ``httpx.Client``, or the ``httpx`` module), signed by :func:`sign_headers`."""
    raw = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, dict) else body
    sent = {
        "Content-Type": "application/json",
        **sign_headers(raw, secret, **signing_options),
        **(headers or {}),
    }
    return client.post(url, content=raw, headers=sent)


def verify_callback(record, secret: str | Iterable[str] = TEST_SECRET, *, tolerance_s: int = 300) -> str:
    """The ``webhook-id`` of a callback the receiver verified with its copy of the secret."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return signing.verify(
        record.body, {k.lower(): v for k, v in record.headers.items()}, secrets, tolerance_s=tolerance_s
    )


def inbound(
    text: str = "hello", *, message_id: str | None = "m-1", chat_id: str = "chat-1", **overrides
) -> InboundMessage:
    """A webhook inbound message."""
    fields = {
        "channel": "webhook",
        "account_id": "acct",
        "chat_id": chat_id,
        "sender_id": "user-1",
        "text": text,
        "provider_message_id": message_id,
    }
    fields.update(overrides)
    return InboundMessage(**fields)


def count(table: str, where: str = "TRUE", params: tuple = ()) -> int:
    """Rows in ``table`` matching ``where``."""
    return execute(f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0]


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range (32768-60999 here): a server that binds
    it a few seconds later must not find it taken by some process's outgoing connection."""
    while True:
        port = random.randint(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class CallbackRecord:
    """One request the fake callback server received."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class CallbackServer:
    """A fake webhook receiver on 127.0.0.1: answers ``plan`` statuses in order, then 200."""

    plan: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    records: list[CallbackRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: with Nagle on, the body waits for the
            # client's delayed ACK of the headers (40 ms on Linux) and every call looks 40 ms slow.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with server._lock:
                    status = server.plan.pop(0) if server.plan else 200
                    server.records.append(CallbackRecord(dict(self.headers.items()), body, status))
                if server.delay_s:
                    time.sleep(server.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def ok_records(self) -> list[CallbackRecord]:
        with self._lock:
            return [r for r in self.records if 200 <= r.status < 300]

    def all_records(self) -> list[CallbackRecord]:
        with self._lock:
            return list(self.records)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ThreadedGateway:
    """The gateway app under uvicorn in a background thread on a free port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


class GatewayProcess:
    """A real ``zenthor gateway`` process on a free port; stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], *, workers: int = 1) -> None:
        import os
        import subprocess
        import sys
        import tempfile

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tempfile.mkstemp(prefix="zenthor-gateway-", suffix=".log")[1]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "zenthor.cli", "gateway", "--port", str(self.port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, "LOG_LEVEL": "WARNING", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()  # never leave a half-started gateway behind
                    raise RuntimeError(
                        f"gateway did not start: {open(self.log_path).read()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
