"""A WhatsApp transport driven by files, for tests and failover rehearsals (never production).

``WHATSAPP_TRANSPORT=fake`` with ``WHATSAPP_FAKE_DIR=DIR``; refuses to start unless ``ZENTHOR_ENV``
is ``test`` or ``dev``. Per account, in ``DIR/<account>/``:

- ``inbound.jsonl`` — what "WhatsApp" delivers, one JSON object a line: ``id``, ``chat``, ``sender``,
  ``text`` (null for media), ``timestamp`` (epoch seconds), optional ``sender_alt``, ``from_me``,
  ``is_group``, ``push_name``, ``kind``, ``mentions``. A runtime that connects reads the file from
  its start and follows it while connected, as WhatsApp redelivers what a device has not
  acknowledged — so dedupe is exercised on every takeover.
- ``control.jsonl`` — connection events, each applied once by whichever connected runtime reads it
  first: ``{"id": "c1", "event": "logged_out" | "stream_replaced" | "temporary_ban" | "disconnected"
  | "connected" | "client_outdated" | "stream_error" | "keepalive_timeout", "code": …,
  "expires_in_s": …}``. Applied ids are appended to ``control.applied``.
- ``sent.jsonl`` — appended by the fake: every send, read mark and typing change, with the sending
  process's ``pid``, ``owner`` and account ``token``.
- ``connections.jsonl`` — appended by the fake: every connect and stop.
- optional ``not_on_whatsapp`` (one JID a line: sends to them fail for good), ``lid_map.json``
  (``{lid: phone}``: whatsmeow's LID map) and ``me.json`` (``{"jid": …, "lid": …}``).

Fault injection (environment of the runtime process): ``WHATSAPP_FAKE_DIAL_FAILURES=N`` (the first
N connects fail), ``WHATSAPP_FAKE_SEND_FAILURES=N`` (the first N sends fail, retryable),
``WHATSAPP_FAKE_KILL=before_send:N|after_send:N`` (the process kills itself with SIGKILL at its
N-th send, before or after "WhatsApp" took it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zenthor.channels.whatsapp.transport import (
    ConnectFailed,
    ConnectionEvent,
    IncomingMessage,
    NotOnWhatsApp,
    SendResult,
    Transport,
    TransportError,
    TransportHandlers,
)

_logger = logging.getLogger(__name__)
ALLOWED_ENVS = ("test", "dev")
DEFAULT_ME = "15550000000@s.whatsapp.net"
_FOLLOW_INTERVAL_S = 0.05


class FakeRefused(RuntimeError):
    """The fake transport was asked for outside ``ZENTHOR_ENV=test|dev`` or without a directory."""


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        raise FakeRefused(f"{name} must be an integer") from None


class FakeTransport(Transport):
    """The file-driven transport; one instance per connection (per term)."""

    _dial_failures_left: int | None = None  # per process, like a real network that comes back

    def __init__(
        self,
        account_id: str,
        fake_dir: str | os.PathLike[str],
        *,
        owner_id: str,
        token: Callable[[], str | None],
        zenthor_env: str,
    ) -> None:
        if zenthor_env not in ALLOWED_ENVS:
            raise FakeRefused(
                f"WHATSAPP_TRANSPORT=fake is for tests and rehearsals: ZENTHOR_ENV must be test or dev "
                f"(got {zenthor_env!r})"
            )
        self.account_id = account_id
        self.dir = Path(fake_dir) / account_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.owner_id = owner_id
        self._token = token
        self._handlers: TransportHandlers | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._sends = 0
        self._send_failures_left = _env_int("WHATSAPP_FAKE_SEND_FAILURES")
        self._kill_plan = self._parse_kill(os.environ.get("WHATSAPP_FAKE_KILL", ""))
        if FakeTransport._dial_failures_left is None:
            FakeTransport._dial_failures_left = _env_int("WHATSAPP_FAKE_DIAL_FAILURES")

    @staticmethod
    def _parse_kill(plan: str) -> tuple[str, int] | None:
        if not plan:
            return None
        when, _, count = plan.partition(":")
        if when not in ("before_send", "after_send") or not count.isdigit():
            raise FakeRefused(f"WHATSAPP_FAKE_KILL must be before_send:N or after_send:N (got {plan!r})")
        return when, int(count)

    # --- files ----------------------------------------------------------------------------
    def _append(self, name: str, record: dict[str, Any]) -> None:
        record = {**record, "pid": os.getpid(), "owner": self.owner_id, "token": self._token(), "ts": time.time()}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # One write() with O_APPEND: lines of several processes never interleave.
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return default

    # --- Transport ------------------------------------------------------------------------
    def connect(self, handlers: TransportHandlers) -> None:
        """Start delivering ``inbound.jsonl`` from its start, then follow it and ``control.jsonl``."""
        if FakeTransport._dial_failures_left:
            FakeTransport._dial_failures_left -= 1
            self._append("connections.jsonl", {"op": "dial_failed"})
            raise ConnectFailed("fake: dial failed (WHATSAPP_FAKE_DIAL_FAILURES)")
        self._handlers = handlers
        self._append("connections.jsonl", {"op": "connect"})
        self._follower = threading.Thread(target=self._follow, name=f"fake-wa-{self.account_id}", daemon=True)
        self._follower.start()

    def stop(self) -> None:
        """Stop following the files (instant: the fake has no socket)."""
        self._stop.set()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=5)
        self._append("connections.jsonl", {"op": "stop"})

    def send_text(self, to: str, text: str) -> SendResult:
        """Append the send to ``sent.jsonl`` (with pid and token), applying the fault plan."""
        self._sends += 1
        if self._kill_plan == ("before_send", self._sends):
            os.kill(os.getpid(), signal.SIGKILL)
        if to in self._unreachable():
            raise NotOnWhatsApp(f"fake: {to} is not on WhatsApp")
        if self._send_failures_left > 0:
            self._send_failures_left -= 1
            raise TransportError("fake: send failed (WHATSAPP_FAKE_SEND_FAILURES)")
        message_id = f"FAKE{os.getpid()}x{self._sends}x{int(time.time() * 1000)}"
        self._append("sent.jsonl", {"op": "send", "to": to, "text": text, "id": message_id})
        if self._kill_plan == ("after_send", self._sends):
            os.kill(os.getpid(), signal.SIGKILL)
        return SendResult(message_id, datetime.now(UTC))

    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        """Append a read mark."""
        self._append("sent.jsonl", {"op": "read", "chat": chat, "sender": sender, "ids": list(message_ids)})

    def set_typing(self, chat: str, typing: bool) -> None:
        """Append a typing change."""
        self._append("sent.jsonl", {"op": "typing", "chat": chat, "typing": typing})

    def own_jids(self) -> tuple[str, ...]:
        me = self._read_json("me.json", {})
        return tuple(j for j in (me.get("jid", DEFAULT_ME), me.get("lid")) if j)

    def phone_for_lid(self, lid: str) -> str | None:
        return self._read_json("lid_map.json", {}).get(lid)

    def lid_for_phone(self, phone: str) -> str | None:
        for lid, mapped in self._read_json("lid_map.json", {}).items():
            if mapped == phone:
                return lid
        return None

    def pair_phone(self, phone: str) -> str:
        """A fake pair code; pairing then succeeds at once."""
        self._complete_pairing()
        return "FAKE-CODE"

    def start_pairing(self) -> None:
        """Fake pairing: one QR, then success with the JID of ``me.json``."""
        if self._handlers is not None:
            self._handlers.on_connection(ConnectionEvent("qr", reason="fake-qr-data"))
        self._complete_pairing()

    def _complete_pairing(self) -> None:
        if self._handlers is not None:
            self._handlers.on_connection(ConnectionEvent("pair_success", jid=self.own_jids()[0]))

    def _unreachable(self) -> set[str]:
        try:
            return {line.strip() for line in (self.dir / "not_on_whatsapp").read_text().splitlines()}
        except OSError:
            return set()

    # --- the follower ---------------------------------------------------------------------
    def _follow(self) -> None:
        assert self._handlers is not None
        self._handlers.on_connection(ConnectionEvent("connected"))
        # Both files from their start: inbound is redelivered whole; a control line applies once.
        offsets = {"inbound.jsonl": 0, "control.jsonl": 0}
        while not self._stop.is_set():
            progressed = False
            for name in ("inbound.jsonl", "control.jsonl"):
                lines, offsets[name] = self._read_new_lines(name, offsets[name])
                for raw in lines:
                    if self._stop.is_set():
                        return
                    progressed = True
                    if name == "inbound.jsonl":
                        self._deliver_inbound(raw)
                    else:
                        self._apply_control(raw)
            if not progressed:
                self._stop.wait(_FOLLOW_INTERVAL_S)

    def _read_new_lines(self, name: str, offset: int) -> tuple[list[bytes], int]:
        try:
            with open(self.dir / name, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n")
        if end < 0:
            return [], offset  # only a partial line so far: wait for its newline
        return data[: end + 1].splitlines(), offset + end + 1

    def _deliver_inbound(self, raw: bytes) -> None:
        assert self._handlers is not None
        try:
            message = parse_inbound_line(raw)
        except ValueError as error:
            self._handlers.on_malformed("fake inbound line", str(error))
            return
        self._handlers.on_message(message)

    def _apply_control(self, raw: bytes) -> None:
        assert self._handlers is not None
        try:
            record = json.loads(raw)
            control_id, kind = str(record["id"]), str(record["event"])
        except (ValueError, KeyError, TypeError) as error:
            self._handlers.on_malformed("fake control line", f"{type(error).__name__}: {error}")
            return
        if not self._claim_control(control_id):
            return
        expires_at = None
        if record.get("expires_in_s") is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=float(record["expires_in_s"]))
        self._handlers.on_connection(
            ConnectionEvent(
                kind,
                code=record.get("code"),
                reason=record.get("reason"),
                expires_at=expires_at,
                on_connect=bool(record.get("on_connect", False)),
            )
        )

    def _claim_control(self, control_id: str) -> bool:
        """Apply each control line once across processes (an exclusive marker file per id)."""
        marker = self.dir / f"control.applied.{control_id}"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.close(fd)
        self._append("control.applied", {"id": control_id})
        return True


def parse_inbound_line(raw: bytes | str) -> IncomingMessage:
    """One ``inbound.jsonl`` line as an :class:`IncomingMessage`; ValueError names what is wrong."""
    try:
        record = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    for name in ("id", "chat", "sender"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise ValueError(f"{name} must be a non-empty string")
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError("text must be a string or null")
    timestamp = record.get("timestamp", time.time())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise ValueError("timestamp must be epoch seconds")
    try:
        sent_at = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"timestamp out of range: {timestamp!r}") from None
    mentions = record.get("mentions") or []
    if not isinstance(mentions, list) or not all(isinstance(m, str) for m in mentions):
        raise ValueError("mentions must be a list of JIDs")
    return IncomingMessage(
        message_id=record["id"],
        chat=record["chat"],
        sender=record["sender"],
        text=text,
        sent_at=sent_at,
        sender_alt=record.get("sender_alt") or None,
        push_name=record.get("push_name"),
        from_me=bool(record.get("from_me", False)),
        is_group=bool(record.get("is_group", False)),
        kind=str(record.get("kind") or ("text" if text is not None else "other")),
        mentions=tuple(mentions),
    )
