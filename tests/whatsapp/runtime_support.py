"""Real ``zenthor whatsapp run`` processes on the fake transport, and the fake's files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.workers import log_events
from zenthor.db import execute

FAST_LEASE = {
    "WHATSAPP_LEASE_TTL_MS": "3000",
    "WHATSAPP_HEARTBEAT_MS": "500",
    "WHATSAPP_STANDBY_RETRY_MS": "200",
    "WHATSAPP_OUTBOX_POLL_MS": "50",
    "WHATSAPP_PRESENCE_POLL_MS": "100",
    "WHATSAPP_RECONNECT_BASE_MS": "100",
    "WHATSAPP_RECONNECT_MAX_MS": "400",
    "WHATSAPP_REPLACED_HOLDOFF_MS": "2000",
}


class FakeWhatsApp:
    """The fake transport's directory for one account: write inbound and control, read sends."""

    def __init__(self, root: Path, account_id: str) -> None:
        self.root = root
        self.account_id = account_id
        self.dir = root / account_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._controls = 0

    def deliver(self, message_id: str, text: str | None, *, chat: str, sender: str | None = None, **extra) -> None:
        """Append one inbound message (what WhatsApp would deliver)."""
        record = {
            "id": message_id,
            "chat": chat,
            "sender": sender or chat,
            "text": text,
            "timestamp": extra.pop("timestamp", time.time()),
            **extra,
        }
        self.append_raw("inbound.jsonl", json.dumps(record))

    def append_raw(self, name: str, line: str) -> None:
        with open(self.dir / name, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def control(self, event: str, **fields) -> str:
        """Append one connection event; applied once by whichever runtime reads it first."""
        self._controls += 1
        control_id = f"c{self._controls}-{time.monotonic_ns()}"
        self.append_raw("control.jsonl", json.dumps({"id": control_id, "event": event, **fields}))
        return control_id

    def records(self, name: str = "sent.jsonl") -> list[dict]:
        try:
            lines = (self.dir / name).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def sends(self) -> list[dict]:
        return [r for r in self.records() if r["op"] == "send"]

    def sent_texts(self) -> list[str]:
        return [r["text"] for r in self.sends()]

    def connects(self) -> list[dict]:
        return [r for r in self.records("connections.jsonl") if r["op"] == "connect"]


class RuntimeProcess:
    """A real ``zenthor whatsapp run`` process; its JSON log lines are kept for assertions."""

    def __init__(self, name: str, account_id: str, fake: FakeWhatsApp, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"zenthor-wa-{name}-", suffix=".log")[1])
        full_env = {
            **os.environ,
            **FAST_LEASE,
            "WORKER_ID": name,
            "WHATSAPP_TRANSPORT": "fake",
            "WHATSAPP_FAKE_DIR": str(fake.root),
            "WHATSAPP_AUTH_DIR": str(fake.root / "auth"),
            "WHATSAPP_CONTACT_POLICY": "open",
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zenthor.cli", "whatsapp", "run", "--account", account_id],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        if not os.environ.get("ZENTHOR_TEST_KEEP_LOGS"):
            self.log_path.unlink(missing_ok=True)

    def events(self, name: str | None = None) -> list[dict]:
        return log_events(self.log_path, name)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def account_row(account_id: str) -> dict | None:
    """The account's ``channel_account`` row, as a dict."""
    from zenthor.db import database
    from zenthor.queue.channel_leases import accounts_snapshot

    with database.connection_context():
        rows = accounts_snapshot("whatsapp", account_id)
    return rows[0] if rows else None


def owner_of(account_id: str) -> str | None:
    row = account_row(account_id)
    return row["owner_id"] if row and row["lease_held"] else None


def outbox_rows(account_id: str) -> list[tuple]:
    from zenthor.db import database

    with database.connection_context():
        return execute(
            "SELECT id, chat_id, status, resends, provider_message_id, text FROM outbound_message "
            "WHERE channel = 'whatsapp' AND account_id = %s ORDER BY id",
            (account_id,),
        )


def db_count(sql: str, params: tuple = ()) -> int:
    from zenthor.db import database

    with database.connection_context():
        return execute(sql, params)[0][0]
