"""The runtime in this process on the fake transport: a host without the session never takes the
account, and takes it as soon as the session is there."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tests.support.workers import DbThread, wait_for
from tests.whatsapp.runtime_support import account_row, owner_of
from zenthor.channels.whatsapp.delivery import DeliveryConfig
from zenthor.channels.whatsapp.fake_transport import FakeTransport
from zenthor.channels.whatsapp.inbound import InboundConfig
from zenthor.channels.whatsapp.runtime import RuntimeConfig, WhatsAppRuntime


class EventLog(logging.Handler):
    """The typed events this process emits."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == name]


def config(tmp_path: Path) -> RuntimeConfig:
    return RuntimeConfig(
        account_id="solo",
        owner_id="host-without-file",
        auth_mode="local",
        lease_ttl_ms=3000,
        heartbeat_ms=500,
        standby_retry_ms=50,
        replaced_holdoff_ms=1000,
        stop_timeout_s=10,
        shutdown_grace_s=3,
        reconnect_base_ms=50,
        reconnect_max_ms=200,
        outbound_max_attempts=8,
        presence_poll_s=0.1,
        client_version="fake",
        delivery=DeliveryConfig(poll_s=0.05, lock_ms=30_000, per_chat_per_min=20, per_account_per_min=60),
        inbound=InboundConfig("solo", "ignore", None, tmp_path / "solo.spool.jsonl"),
    )


def test_a_host_without_the_session_stays_standby_until_the_session_appears(tmp_path):
    session_file = tmp_path / "solo.sqlite3"
    events = EventLog()
    event_logger = logging.getLogger("zenthor.events")
    event_logger.addHandler(events)
    previous_level = event_logger.level
    event_logger.setLevel(logging.DEBUG)  # standby refusals are DEBUG events
    factory_calls = []

    def factory(term):
        factory_calls.append(term.lease.term)
        return FakeTransport("solo", tmp_path / "fake", owner_id="host", token=lambda: term.token, zenthor_env="test")

    runtime = WhatsAppRuntime(config(tmp_path), factory, publish=lambda _job: True, has_session=session_file.exists)
    result: list[int] = []
    thread = DbThread(target=lambda: result.append(runtime.run()), daemon=True)
    thread.start()
    try:
        refused = lambda: [r for r in events.named("channel.lease.contended") if r.reason == "no_session_here"]  # noqa: E731
        wait_for(lambda: len(refused()) >= 5, 10, message="several standby checks without a session")
        assert factory_calls == []  # never took it, never dialled
        waiting = account_row("solo")  # but the account is visible, with why nobody owns it
        assert not waiting["lease_held"] and waiting["lease_term"] == 0
        assert "run zenthor whatsapp pair" in waiting["last_error"]
        session_file.write_bytes(b"")  # the operator paired (or copied the session) on this host
        wait_for(lambda: owner_of("solo") == "host-without-file", 10, message="the account taken")
        wait_for(lambda: account_row("solo")["state"] == "connected", 10, message="connected")
        assert factory_calls == [1]
    finally:
        runtime.shutdown()
        thread.join(timeout=15)
        event_logger.removeHandler(events)
        event_logger.setLevel(previous_level)
    assert result == [0]
    assert owner_of("solo") is None  # released on shutdown
    assert not threading.Thread.is_alive(thread)


class EagerFake(FakeTransport):
    """A transport that hands over a message before connect() returns (neonize does: Go delivers
    from its own thread as soon as the dial is up)."""

    def connect(self, handlers):
        from datetime import UTC, datetime

        from zenthor.channels.whatsapp.transport import IncomingMessage

        handlers.on_message(
            IncomingMessage(
                message_id="early-1",
                chat="15551112222@s.whatsapp.net",
                sender="15551112222@s.whatsapp.net",
                text="said during connect",
                sent_at=datetime.now(UTC),
            )
        )
        super().connect(handlers)


def test_a_message_delivered_during_connect_is_accepted(tmp_path, settings_env):
    settings_env(WHATSAPP_CONTACT_POLICY="open")

    def factory(term):
        return EagerFake("solo", tmp_path / "fake", owner_id="host", token=lambda: term.token, zenthor_env="test")

    runtime = WhatsAppRuntime(config(tmp_path), factory, publish=lambda _job: True)
    thread = DbThread(target=runtime.run, daemon=True)
    thread.start()
    try:
        from tests.whatsapp.runtime_support import db_count

        wait_for(
            lambda: db_count("SELECT count(*) FROM message WHERE provider_message_id = 'early-1'") == 1,
            10,
            message="the early message stored",
        )
    finally:
        runtime.shutdown()
        thread.join(timeout=15)


def test_a_connection_that_outlives_its_lease_sends_nothing(tmp_path, settings_env):
    """whatsmeow reconnects by itself and neonize cannot stop it: after another process took the
    account, this process's connection (still up, even "reconnected") must send nothing."""
    from tests.whatsapp.runtime_support import FakeWhatsApp, db_count, outbox_rows
    from zenthor.db import database, execute

    settings_env(WHATSAPP_CONTACT_POLICY="open")
    fake = FakeWhatsApp(tmp_path / "fake", "solo")
    slow_heartbeat = RuntimeConfig(**{**config(tmp_path).__dict__, "heartbeat_ms": 1500, "lease_ttl_ms": 4000})

    def factory(term):
        return FakeTransport("solo", fake.root, owner_id="host", token=lambda: term.token, zenthor_env="test")

    events = EventLog()
    logging.getLogger("zenthor.events").addHandler(events)
    runtime = WhatsAppRuntime(slow_heartbeat, factory, publish=lambda _job: True)
    thread = DbThread(target=runtime.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: (account_row("solo") or {}).get("state") == "connected", 10, message="connected")
        with database.connection_context():
            # Another process takes the account (as after this one's lease had expired)...
            execute("UPDATE channel_account SET lease_token = gen_random_uuid(), owner_id = 'thief'")
            # ...and a reply for it is waiting.
            ((conversation_id,),) = execute(
                "INSERT INTO conversation (channel, account_id, chat_id) "
                "VALUES ('whatsapp', 'solo', '15551112222@s.whatsapp.net') RETURNING id"
            )
            execute(
                "INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text) "
                "VALUES (%s, 'whatsapp', 'solo', '15551112222@s.whatsapp.net', 'not yours')",
                (conversation_id,),
            )
        fake.control("connected")  # whatsmeow's own reconnect, on the old connection
        wait_for(lambda: events.named("channel.lease.lost"), 10, message="the refused heartbeat")
        assert fake.sends() == []
        assert [row[2] for row in outbox_rows("solo")] == ["pending"]
        assert db_count("SELECT count(*) FROM outbound_message WHERE processor_id = 'solo'") == 0
    finally:
        runtime.shutdown()
        thread.join(timeout=15)
        logging.getLogger("zenthor.events").removeHandler(events)
