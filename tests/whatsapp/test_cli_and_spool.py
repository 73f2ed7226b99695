"""``zenthor whatsapp pair`` and ``status`` as an operator runs them (fake transport), and the
inbound spool that keeps a message WhatsApp already acknowledged when the database is away."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.whatsapp.runtime_support import FakeWhatsApp, account_row, db_count
from zenthor.channels.whatsapp.identity import IdentityBook
from zenthor.channels.whatsapp.inbound import InboundConfig, InboundHandler
from zenthor.channels.whatsapp.transport import IncomingMessage
from zenthor.db import close_database, database, init_database
from zenthor.queue.channel_leases import acquire_account, release_account, set_account_state


def zenthor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "zenthor.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def fake_env(tmp_path):
    fake = FakeWhatsApp(tmp_path / "fake", "shop")
    (fake.dir / "me.json").write_text(json.dumps({"jid": "15550009999:3@s.whatsapp.net"}))
    return fake, {
        "WHATSAPP_TRANSPORT": "fake",
        "WHATSAPP_FAKE_DIR": str(fake.root),
        "WHATSAPP_AUTH_DIR": str(tmp_path / "auth"),
        "LOG_LEVEL": "WARNING",
    }


def test_pair_records_the_jid_and_clears_a_logged_out_account(fake_env):
    _fake, env = fake_env
    with database.connection_context():
        lease = acquire_account("whatsapp", "shop", "old-owner", ttl_ms=5000, auth_mode="local")
        set_account_state(lease, "logged_out", error="logged out by WhatsApp: pair again")
        release_account(lease)
    result = zenthor("whatsapp", "pair", "--account", "shop", env=env)
    assert result.returncode == 0, result.stderr
    assert "paired account shop as 15550009999:3@s.whatsapp.net" in result.stdout
    row = account_row("shop")
    assert row["state"] == "standby" and row["device_jid"] == "15550009999:3@s.whatsapp.net"
    assert row["last_error"] is None and not row["lease_held"]


def test_pair_with_a_phone_number_shows_the_code(fake_env):
    _fake, env = fake_env
    result = zenthor("whatsapp", "pair", "--account", "shop", "--phone", "+15550009999", env=env)
    assert result.returncode == 0, result.stderr
    assert "FAKE-CODE" in result.stdout


def test_pair_is_refused_while_a_runtime_owns_the_account(fake_env):
    _fake, env = fake_env
    with database.connection_context():
        acquire_account("whatsapp", "shop", "running-runtime", ttl_ms=60_000, auth_mode="local")
    result = zenthor("whatsapp", "pair", "--account", "shop", env=env)
    assert result.returncode == 1
    assert "running-runtime" in result.stderr and "stop its runtime first" in result.stderr


def test_status_prints_for_people_and_json_for_scripts(fake_env):
    _fake, env = fake_env
    empty = zenthor("whatsapp", "status", env=env)
    assert empty.returncode == 0 and "no WhatsApp account has run yet" in empty.stdout
    with database.connection_context():
        lease = acquire_account("whatsapp", "shop", "host-a-1", ttl_ms=60_000, auth_mode="postgres")
        set_account_state(lease, "connected", device_jid="15550009999:3@s.whatsapp.net")
    human = zenthor("whatsapp", "status", env=env)
    assert "account shop: connected" in human.stdout and "owner: host-a-1" in human.stdout
    assert "auth: postgres" in human.stdout
    data = json.loads(zenthor("whatsapp", "status", "--json", env=env).stdout)
    (account,) = data["accounts"]
    assert account["owner_id"] == "host-a-1" and account["lease_held"] is True
    assert account["state"] == "connected" and account["device_jid"].startswith("15550009999")
    for key in ("expires_at", "last_inbound_at", "last_outbound_at", "resends_total", "outbox"):
        assert key in account


def test_a_message_is_spooled_while_the_database_is_away_and_accepted_at_the_next_term(
    tmp_path, settings_env
):
    from zenthor.channels.whatsapp.fake_transport import parse_inbound_line

    settings_env(WHATSAPP_CONTACT_POLICY="open")
    config = InboundConfig("shop", "ignore", None, tmp_path / "shop.spool.jsonl")
    handler = InboundHandler(config, IdentityBook("shop"), own_jids=lambda: (), publish=lambda _job: True)
    message = IncomingMessage(
        message_id="spooled-1",
        chat="15551230000@s.whatsapp.net",
        sender="15551230000@s.whatsapp.net",
        text="kept for later",
        sent_at=datetime.now(UTC),
    )
    # A real outage: the pool points at a port where no Postgres listens.
    init_database("postgresql://postgres@127.0.0.1:1/zenthor_nowhere")
    try:
        assert handler(message) == "spooled"
    finally:
        close_database()
        init_database()
    assert Path(config.spool_path).exists()
    assert db_count("SELECT count(*) FROM message WHERE provider_message_id = 'spooled-1'") == 0
    assert handler.replay_spool(parse_inbound_line) == 1
    assert handler.replay_spool(parse_inbound_line) == 0  # the spool is gone once handled
    assert db_count("SELECT count(*) FROM message WHERE provider_message_id = 'spooled-1'") == 1
    assert not Path(config.spool_path).exists()


def test_the_whatsapp_timestamp_is_stored_as_the_messages_sent_at(tmp_path, settings_env):
    """Issue 11, item 7: the adapter's timestamp (here the fake transport's line) reaches
    message.sent_at, also through the spool."""
    from zenthor.channels.whatsapp.fake_transport import parse_inbound_line

    settings_env(WHATSAPP_CONTACT_POLICY="open")
    config = InboundConfig("shop", "ignore", None, tmp_path / "shop.spool.jsonl")
    handler = InboundHandler(config, IdentityBook("shop"), own_jids=lambda: (), publish=lambda _job: True)
    line = {"id": "ts-1", "chat": "15551230000@s.whatsapp.net", "sender": "15551230000@s.whatsapp.net"}
    assert (
        handler(parse_inbound_line(json.dumps({**line, "text": "hi", "timestamp": 1746086400}))) == "accepted"
    )
    spooled = parse_inbound_line(json.dumps({**line, "id": "ts-2", "text": "later", "timestamp": 1746086460}))
    init_database("postgresql://postgres@127.0.0.1:1/zenthor_nowhere")
    try:
        assert handler(spooled) == "spooled"
    finally:
        close_database()
        init_database()
    assert handler.replay_spool(parse_inbound_line) == 1
    with database.connection_context():
        stored = dict(database.execute_sql("SELECT provider_message_id, sent_at FROM message").fetchall())
    assert stored == {
        "ts-1": datetime.fromtimestamp(1746086400, UTC),
        "ts-2": datetime.fromtimestamp(1746086460, UTC),
    }
