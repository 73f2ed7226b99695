"""Real ``zenthor whatsapp run`` processes (fake transport) with a real ``dramatiq`` worker, on real
Postgres and RabbitMQ: one owner per account (I7), takeover, fencing, dedupe, order.

Every wait is for a condition (an event in a log, a row, a line in the fake's files), bounded.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from tests.support.workers import WorkerProcess, wait_for
from tests.whatsapp.runtime_support import (
    FAST_LEASE,
    FakeWhatsApp,
    RuntimeProcess,
    account_row,
    db_count,
    outbox_rows,
    owner_of,
)

ACCOUNT = "acct"
TTL_S = int(FAST_LEASE["WHATSAPP_LEASE_TTL_MS"]) / 1000
ALICE = "15551110001@s.whatsapp.net"


def said(text: str) -> str:
    """The echo responder's reply to ``text``."""
    return f"You said: {text}"


@pytest.fixture
def fake(tmp_path):
    return FakeWhatsApp(tmp_path / "fake", ACCOUNT)


@pytest.fixture
def stack(fake):
    """A dramatiq worker for the turns; runtimes are started by each test through ``start``."""
    worker = WorkerProcess("wa-worker", threads=8, env={"LOG_LEVEL": "WARNING"})
    runtimes: list[RuntimeProcess] = []

    def start(name: str, **env: str) -> RuntimeProcess:
        runtime = RuntimeProcess(name, ACCOUNT, fake, env=env)
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop()
    worker.stop()


def wait_owner(timeout: float = 20) -> str:
    return wait_for(lambda: owner_of(ACCOUNT), timeout, 0.05, message="an owner of the account")


def by_name(runtimes: list[RuntimeProcess], name: str) -> RuntimeProcess:
    return next(r for r in runtimes if r.name == name)


def accept_directly(message_id: str, text: str, *, chat: str) -> None:
    """Accept a WhatsApp message through ingress in this process (as a runtime's handler would)."""
    from zenthor.db import database
    from zenthor.ingress import InboundMessage, accept

    with database.connection_context():
        accept(
            InboundMessage(
                channel="whatsapp", account_id=ACCOUNT, chat_id=chat, sender_id=chat, text=text,
                provider_message_id=message_id,
            )
        )


def wait_sent(fake: FakeWhatsApp, text: str, timeout: float = 30) -> dict:
    def find():
        return next((s for s in fake.sends() if said(text) in s["text"]), None)

    return wait_for(find, timeout, 0.05, message=f"the reply to {text!r}")


def test_two_runtimes_on_one_account_have_exactly_one_owner(stack, fake):
    a, b = stack("rt-a"), stack("rt-b")
    owner = wait_owner()
    standby = b if owner == "rt-a" else a
    wait_for(lambda: standby.events("channel.standby"), 20, message="the other runtime to wait as standby")
    for i in range(3):
        fake.deliver(f"m{i}", f"hello {i}", chat=ALICE)
    for i in range(3):
        wait_sent(fake, f"hello {i}")
    sends = fake.sends()
    assert len(sends) == 3
    assert {s["owner"] for s in sends} == {owner}
    assert not standby.events("channel.lease.acquired")
    assert len(fake.connects()) == 1  # the standby never opened the session
    # Each answered message was marked read once, before or as its turn ran.
    reads = [r for r in fake.records() if r["op"] == "read"]
    assert sorted(i for r in reads for i in r["ids"]) == ["m0", "m1", "m2"]
    assert all(r["chat"] == ALICE and r["owner"] == owner for r in reads)


def test_kill9_of_the_owner_hands_over_within_ttl_and_the_waiting_replies_go_out_once(stack, fake):
    a, b = stack("rt-a"), stack("rt-b")
    first = wait_owner()
    fake.deliver("before", "before the crash", chat=ALICE)
    wait_sent(fake, "before the crash")
    owner, standby = (a, b) if first == "rt-a" else (b, a)
    owner.kill9()
    killed_at = time.time()
    # Replies that wait while nobody owns the account.
    for i in range(3):
        fake.deliver(f"during-{i}", f"during {i}", chat=ALICE)
    wait_for(lambda: owner_of(ACCOUNT) == standby.name, TTL_S + 5, 0.05, message="the standby to take over")
    acquired = standby.events("channel.lease.acquired")[-1]
    assert acquired["takeover"] is True and acquired["previous_owner"] == owner.name
    for i in range(3):
        wait_sent(fake, f"during {i}")
    took_over_after = min(s["ts"] for s in fake.sends() if s["owner"] == standby.name) - killed_at
    assert took_over_after <= TTL_S + 5
    texts = fake.sent_texts()
    for text in ("before the crash", "during 0", "during 1", "during 2"):
        assert sum(said(text) in t for t in texts) == 1, texts
    # Redelivered on takeover (the fake replays inbound.jsonl): deduped, not answered twice.
    assert standby.events("inbound.dedupe_skipped")


def test_sigstop_past_the_lease_then_sigcont_sends_nothing_more_and_goes_standby(stack, fake, settings_env):
    settings_env(WHATSAPP_CONTACT_POLICY="open")  # for accept_directly below
    a, b = stack("rt-a"), stack("rt-b")
    first = wait_owner()
    owner, standby = (a, b) if first == "rt-a" else (b, a)
    fake.deliver("m0", "warm up", chat=ALICE)
    wait_sent(fake, "warm up")
    owner.signal(signal.SIGSTOP)
    wait_for(lambda: owner_of(ACCOUNT) == standby.name, TTL_S + 5, 0.05, message="takeover")
    for i in range(2):
        fake.deliver(f"p{i}", f"while paused {i}", chat=ALICE)
        wait_sent(fake, f"while paused {i}")
    # Replies for the paused owner's old term are waiting in the outbox when it wakes up.
    standby.signal(signal.SIGSTOP)
    accept_directly("p-late", "after both paused", chat=ALICE)  # no runtime reads the fake now
    wait_for(
        lambda: any(r[2] == "pending" for r in outbox_rows(ACCOUNT)), 30, message="a reply waiting in the outbox"
    )
    resumed_at = time.time()
    owner.signal(signal.SIGCONT)
    wait_for(lambda: owner.events("channel.lease.lost"), 15, message="the woken owner to see its lease gone")
    wait_for(
        lambda: [e for e in owner.events("channel.standby") if e["reason"] == "held"]
        or owner.events("channel.lease.acquired")[1:],
        15,
        message="the woken owner to go back to standby",
    )
    # It sent nothing after waking while the other still held the lease.
    assert not [s for s in fake.sends() if s["owner"] == owner.name and s["ts"] >= resumed_at]
    standby.signal(signal.SIGCONT)
    wait_sent(fake, "after both paused")
    texts = fake.sent_texts()
    assert sum(said("after both paused") in t for t in texts) == 1


def test_sigterm_releases_and_the_standby_takes_over_in_under_five_seconds(stack, fake):
    a, b = stack("rt-a"), stack("rt-b")
    first = wait_owner()
    owner, standby = (a, b) if first == "rt-a" else (b, a)
    wait_for(lambda: standby.events("channel.standby"), 20, message="standby")
    stopped_at = time.time()
    owner.signal(signal.SIGTERM)
    assert owner.proc.wait(timeout=10) == 0
    wait_for(lambda: owner_of(ACCOUNT) == standby.name, 5, 0.02, message="handover within 5 s")
    acquired = standby.events("channel.lease.acquired")[-1]
    assert acquired["takeover"] is False  # released, not expired
    assert owner.events("channel.lease.released")[-1]["reason"] == "shutdown"
    assert time.time() - stopped_at < 5
    fake.deliver("after", "after the handover", chat=ALICE)
    assert wait_sent(fake, "after the handover")["owner"] == standby.name


def test_the_same_inbound_ten_times_and_once_as_a_lid_makes_one_message_one_job_one_reply(stack, fake):
    stack("rt-a", WHATSAPP_CONTACT_POLICY="allowlist", WHATSAPP_ALLOW_FROM="+1 555 111 0001")
    wait_owner()
    for _ in range(10):
        fake.deliver("dup-1", "only once", chat=ALICE)
    # The same message again, under the sender's LID (whatsmeow hands both forms sometimes).
    fake.deliver("dup-1", "only once", chat="8800001@lid", sender="8800001@lid", sender_alt=ALICE)
    # An allowlisted number writing as a LID (SenderAlt carries the phone) is the same person.
    fake.deliver("lid-2", "as a lid", chat="8800001@lid", sender="8800001@lid", sender_alt=ALICE)
    reply = wait_sent(fake, "as a lid")
    assert reply["to"] == "8800001@lid"  # replies go to the chat the person wrote from
    wait_sent(fake, "only once")
    assert db_count("SELECT count(*) FROM message WHERE role = 'user' AND provider_message_id = 'dup-1'") == 1
    assert db_count("SELECT count(*) FROM agent_job") == 2
    assert db_count("SELECT count(*) FROM conversation WHERE channel = 'whatsapp'") == 1
    assert sum(said("only once") in t for t in fake.sent_texts()) == 1


def test_allowlist_resolves_a_lid_through_the_lid_map_and_ignores_strangers(stack, fake):
    (fake.dir / "lid_map.json").write_text(json.dumps({"7700002@lid": ALICE}))
    runtime = stack("rt-a", WHATSAPP_CONTACT_POLICY="allowlist", WHATSAPP_ALLOW_FROM=ALICE.split("@")[0])
    wait_owner()
    fake.deliver("stranger", "hi from a stranger", chat="15559990000@s.whatsapp.net")
    fake.deliver("unknown-lid", "hi from an unknown lid", chat="6600003@lid")
    fake.deliver("mapped", "via the lid map", chat="7700002@lid")
    wait_sent(fake, "via the lid map")
    wait_for(lambda: len(runtime.events("inbound.ignored")) >= 2, 10, message="strangers ignored")
    assert not [t for t in fake.sent_texts() if "stranger" in t or "unknown lid" in t]


def test_owner_killed_after_a_send_before_recording_it_sends_it_once_more_and_counts_it(stack, fake):
    a = stack("rt-a", WHATSAPP_FAKE_KILL="after_send:1")
    wait_for(lambda: owner_of(ACCOUNT) == "rt-a", 20, message="rt-a owns")
    b = stack("rt-b")
    fake.deliver("k1", "crash after send", chat=ALICE)
    wait_for(lambda: a.proc.poll() is not None, 30, message="rt-a to kill itself after the send")
    wait_for(lambda: owner_of(ACCOUNT) == "rt-b", TTL_S + 5, message="takeover")
    wait_for(lambda: len([t for t in fake.sent_texts() if said("crash after send") in t]) == 2, 20)
    unknown = b.events("whatsapp.outbound.outcome_unknown")
    assert unknown and unknown[0]["count"] == 1
    assert account_row(ACCOUNT)["resends_total"] == 1
    ((_, _, status, resends, provider_id, _),) = outbox_rows(ACCOUNT)
    assert (status, resends) == ("sent", 1) and provider_id.startswith(f"FAKE{b.pid}x")


def test_owner_killed_before_the_send_sends_it_exactly_once(stack, fake):
    a = stack("rt-a", WHATSAPP_FAKE_KILL="before_send:1")
    wait_for(lambda: owner_of(ACCOUNT) == "rt-a", 20, message="rt-a owns")
    b = stack("rt-b")
    fake.deliver("k2", "crash before send", chat=ALICE)
    wait_for(lambda: a.proc.poll() is not None, 30, message="rt-a to kill itself before the send")
    reply = wait_sent(fake, "crash before send", timeout=TTL_S + 20)
    assert reply["owner"] == "rt-b"
    assert [said("crash before send") in t for t in fake.sent_texts()].count(True) == 1
    assert b.events("whatsapp.outbound.outcome_unknown")  # it could not know; it counted


def test_200_inbound_over_20_chats_get_one_reply_each_in_per_chat_order(stack, fake):
    stack("rt-a", WHATSAPP_RATE_PER_ACCOUNT_PER_MIN="1000")
    wait_owner()
    chats = [f"1555200{n:04d}@s.whatsapp.net" for n in range(20)]
    for i in range(10):
        for chat in chats:
            fake.deliver(f"{chat}-{i}", f"{chat.split('@')[0]} #{i}", chat=chat)
    wait_for(lambda: len(fake.sends()) >= 200, 120, 0.2, message="200 replies")
    time.sleep(0)  # nothing more is expected; the count below must be exact
    per_chat: dict[str, list[int]] = defaultdict(list)
    for send in fake.sends():
        match = re.search(r"You said: (\d+) #(\d+)", send["text"])
        assert match, send["text"]
        assert send["to"].startswith(match.group(1))
        per_chat[send["to"]].append(int(match.group(2)))
    assert len(fake.sends()) == 200
    assert all(order == list(range(10)) for order in per_chat.values()), per_chat
    assert len(per_chat) == 20


def test_the_per_chat_rate_limit_holds_a_busy_chat_back_in_order_while_others_go_on(stack, fake):
    stack("rt-a", WHATSAPP_RATE_PER_CHAT_PER_MIN="2")
    wait_owner()
    busy, quiet = ALICE, "15551110002@s.whatsapp.net"
    for i in range(4):
        fake.deliver(f"b{i}", f"busy {i}", chat=busy)
    wait_sent(fake, "busy 1")
    fake.deliver("q0", "quiet 0", chat=quiet)
    wait_sent(fake, "quiet 0")
    wait_for(lambda: account_row(ACCOUNT)["rate_limited_total"] >= 1, 10, message="the limit counted")
    texts = fake.sent_texts()
    assert not [t for t in texts if said("busy 2") in t or said("busy 3") in t]
    statuses = [r[2] for r in outbox_rows(ACCOUNT) if "busy" in r[5]]
    assert statuses == ["sent", "sent", "pending", "pending"]  # waiting, in order, none dropped


def test_logged_out_marks_the_account_and_nobody_reconnects(stack, fake):
    a, b = stack("rt-a", LOG_LEVEL="DEBUG"), stack("rt-b", LOG_LEVEL="DEBUG")
    wait_owner()
    fake.control("logged_out", reason="device_removed", on_connect=False)
    # The state and the release are two statements: wait for both.
    wait_for(
        lambda: account_row(ACCOUNT)["state"] == "logged_out" and owner_of(ACCOUNT) is None,
        10,
        message="logged_out recorded and the lease released",
    )

    def refusals(runtime: RuntimeProcess) -> int:
        return sum(e["reason"] == "logged_out" for e in runtime.events("channel.lease.contended"))

    # Both runtimes keep trying (every standby retry is refused) and nobody connects again.
    wait_for(lambda: refusals(a) >= 5 and refusals(b) >= 5, 20, message="several refused retries each")
    assert len(fake.connects()) == 1
    assert "pair again" in account_row(ACCOUNT)["last_error"]
    assert any(r.events("whatsapp.connection.logged_out") for r in (a, b))


def test_stream_replaced_ends_the_term_without_flip_flopping(stack, fake):
    a, b = stack("rt-a"), stack("rt-b")
    wait_owner()
    fake.control("stream_replaced")
    wait_for(lambda: account_row(ACCOUNT)["hold_until"] is not None, 10, message="the hold-off")
    replaced_at = time.time()
    assert any(r.events("whatsapp.connection.stream_replaced") for r in (a, b))
    # After the hold-off exactly one runtime connects again; none during it.
    wait_for(lambda: len(fake.connects()) == 2, 20, message="one reconnect after the hold-off")
    second = fake.connects()[1]
    holdoff_s = int(FAST_LEASE["WHATSAPP_REPLACED_HOLDOFF_MS"]) / 1000
    assert second["ts"] - replaced_at >= holdoff_s - 0.5


def test_temporary_ban_waits_until_it_ends(stack, fake):
    stack("rt-a")
    wait_owner()
    fake.control("temporary_ban", code=101, expires_in_s=3)
    wait_for(lambda: account_row(ACCOUNT)["state"] == "banned", 10, message="banned recorded")
    row = account_row(ACCOUNT)
    assert row["ban_code"] == 101 and row["banned_until"] is not None
    banned_until = row["banned_until"].timestamp()
    wait_for(lambda: len(fake.connects()) == 2, 20, message="a reconnect after the ban")
    assert fake.connects()[1]["ts"] >= banned_until - 0.5


def test_a_failed_first_dial_is_retried_with_backoff(stack, fake):
    runtime = stack("rt-a", WHATSAPP_FAKE_DIAL_FAILURES="3")
    wait_for(lambda: account_row(ACCOUNT) and account_row(ACCOUNT)["state"] == "connected", 30)
    retries = runtime.events("whatsapp.connection.retry")
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    assert all(r["delay_ms"] <= int(FAST_LEASE["WHATSAPP_RECONNECT_MAX_MS"]) for r in retries)


def test_bad_input_is_reported_and_nothing_is_lost(stack, fake):
    runtime = stack("rt-a")
    wait_owner()
    (fake.dir / "not_on_whatsapp").write_text("15550000404@s.whatsapp.net\n")
    fake.append_raw("inbound.jsonl", "{not json")
    fake.append_raw("inbound.jsonl", json.dumps({"id": "no-chat", "text": "x"}))
    fake.append_raw("control.jsonl", json.dumps({"event": "no id"}))
    fake.control("something_new", code=7)
    fake.deliver("nowa", "to nobody", chat="15550000404@s.whatsapp.net")
    fake.deliver("sticker", None, chat=ALICE, kind="sticker")
    fake.deliver("ok", "still answered", chat=ALICE)
    wait_sent(fake, "still answered")
    wait_for(lambda: any(r[2] == "failed" for r in outbox_rows(ACCOUNT)), 20, message="the undeliverable row")
    failed = [r for r in outbox_rows(ACCOUNT) if r[2] == "failed"]
    assert len(failed) == 1 and failed[0][1] == "15550000404@s.whatsapp.net"
    assert len(runtime.events("whatsapp.inbound.malformed")) >= 3
    assert [e for e in runtime.events("whatsapp.connection.event") if e["kind"] == "something_new"]
    failures = runtime.events("whatsapp.outbound.send_failed")
    assert failures and failures[0]["retryable"] is False
    # The sticker got one polite reply, and no turn.
    assert sum("only read text" in t for t in fake.sent_texts()) == 1
    assert db_count("SELECT count(*) FROM message WHERE provider_message_id = 'sticker'") == 0


def test_the_fake_transport_refuses_production(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "zenthor.cli", "whatsapp", "run", "--account", "x"],
        env={
            **__import__("os").environ,
            "ZENTHOR_ENV": "production",
            "WHATSAPP_TRANSPORT": "fake",
            "WHATSAPP_FAKE_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "WHATSAPP_TRANSPORT" in result.stderr and "ZENTHOR_ENV" in result.stderr


def test_groups_are_ignored_by_default_and_answered_only_when_mentioned_if_enabled(stack, fake):
    group = "120363000000000001@g.us"
    me = "15550000000@s.whatsapp.net"  # the fake's own JID (no me.json)
    stack("rt-a", WHATSAPP_GROUPS="mentions")
    wait_owner()
    fake.deliver("g1", "chatter among friends", chat=group, sender=ALICE, is_group=True)
    fake.deliver("g2", "@bot what time is it", chat=group, sender=ALICE, is_group=True, mentions=[me])
    reply = wait_sent(fake, "@bot what time is it")
    assert reply["to"] == group
    assert not [t for t in fake.sent_texts() if "chatter" in t]
    assert db_count("SELECT count(*) FROM conversation WHERE chat_id = %s", (group,)) == 1


def test_own_messages_and_status_broadcasts_are_skipped(stack, fake):
    runtime = stack("rt-a", LOG_LEVEL="DEBUG")
    wait_owner()
    fake.deliver("own", "sent from my phone", chat=ALICE, from_me=True)
    fake.deliver("status", "my story", chat="status@broadcast", sender=ALICE)
    fake.deliver("real", "a real question", chat=ALICE)
    wait_sent(fake, "a real question")
    reasons = {e["reason"] for e in runtime.events("whatsapp.inbound.skipped")}
    assert {"own_message", "status_broadcast"} <= reasons
    assert len(fake.sends()) == 1
    assert db_count("SELECT count(*) FROM message WHERE role = 'user'") == 1
