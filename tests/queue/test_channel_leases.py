"""The account lease (I7) and the owner-fenced outbox, against real Postgres.

At most one process holds an account's lease, and a process that does not hold it can write
nothing about the account: not its state, not its heartbeat, not its outbox rows. Every wait for
a lease or a hold to run out polls the database clock (``… < now()``), never the host's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.factories import make_conversation
from tests.support.workers import DbThread, wait_for
from zenthor.db import database, execute
from zenthor.queue.channel_leases import (
    AccountLease,
    AccountRefused,
    account_state,
    accounts_snapshot,
    acquire_account,
    heartbeat_account,
    release_account,
    reset_operator_state,
    set_account_state,
)
from zenthor.queue.channel_outbox import (
    claim_next_owned,
    has_sendable,
    mark_sent_owned,
    recent_sends,
    reclaim_unknown_outcome,
    unclaim_owned,
)
from zenthor.queue.outbox import OutboundLease, claim_outbound, requeue_expired, retry_or_fail

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "whatsapp"
ACCOUNT = "acct-1"
LONG_TTL = 60_000
SHORT_TTL = 200
LOCK_MS = 30_000


# ---- helpers -----------------------------------------------------------------------------------


def acquire(owner: str, *, ttl_ms: int = LONG_TTL, version: str | None = "neonize 0.5.2", **options):
    return acquire_account(
        CHANNEL, ACCOUNT, owner, ttl_ms=ttl_ms, auth_mode="local", client_version=version, **options
    )


def owned(owner: str, **options) -> AccountLease:
    lease = acquire(owner, **options)
    assert isinstance(lease, AccountLease), lease
    return lease


def account_row() -> tuple:
    """Every column of the account's row (compared whole before and after a stale write)."""
    return execute(
        "SELECT * FROM channel_account WHERE channel = %s AND account_id = %s", (CHANNEL, ACCOUNT)
    )[0]


def snapshot() -> dict:
    [row] = accounts_snapshot(CHANNEL, ACCOUNT)
    return row


def wait_db_passed(
    column: str,
    table_where: str = "channel_account WHERE channel = %s AND account_id = %s",
    params: tuple = (CHANNEL, ACCOUNT),
    timeout: float = 10,
) -> None:
    """Wait until the database clock has passed ``column`` of the row (it must be set)."""
    wait_for(
        lambda: execute(f"SELECT {column} < now() FROM {table_where}", params)[0][0],
        timeout,
        0.02,
        message=f"the database clock to pass {column}",
    )


def wait_lease_expired() -> None:
    wait_db_passed("expires_at")


def db_now_plus(ms: int) -> datetime:
    return execute("SELECT now() + %s * interval '1 millisecond'", (ms,))[0][0]


def conversation(chat: str, *, channel: str = CHANNEL, account: str = ACCOUNT) -> int:
    return make_conversation(chat, channel=channel, account_id=account)


def outbox(conversation_id: int, text: str, *, attempts: int = 0, delay_ms: int = 0) -> int:
    """An outbox row for the conversation's chat (as write_replies would queue it)."""
    return execute(
        "INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text, attempts, "
        "available_at) SELECT id, channel, account_id, chat_id, %s, %s, "
        "now() + %s * interval '1 millisecond' FROM conversation WHERE id = %s RETURNING id",
        (text, attempts, delay_ms, conversation_id),
    )[0][0]


def outbox_row(outbound_id: int) -> dict:
    names = (
        "status",
        "attempts",
        "processor_id",
        "lease_token",
        "locked_until",
        "provider_message_id",
        "last_error",
        "resends",
        "sent_at",
        "available_at",
    )
    row = execute(f"SELECT {', '.join(names)} FROM outbound_message WHERE id = %s", (outbound_id,))[0]
    return dict(zip(names, row, strict=True))


def full_outbox_row(outbound_id: int) -> tuple:
    return execute("SELECT * FROM outbound_message WHERE id = %s", (outbound_id,))[0]


def claim(lease: AccountLease, **options) -> OutboundLease | None:
    return claim_next_owned(lease, lock_ms=options.pop("lock_ms", LOCK_MS), **options)


def claimed_id(lease: AccountLease, **options) -> int | None:
    got = claim(lease, **options)
    return got.outbound_id if got is not None else None


# ---- one owner at a time --------------------------------------------------------------------------


def test_twelve_threads_racing_for_the_account_give_exactly_one_lease():
    barrier = threading.Barrier(12)
    results: dict[str, object] = {}
    lock = threading.Lock()

    def race(owner: str) -> None:
        execute("SELECT 1")  # the connection is open before the start line
        barrier.wait(timeout=30)
        outcome = acquire(owner)
        with lock:
            results[owner] = outcome

    threads = [DbThread(target=race, args=(f"owner-{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 12
    winners = [owner for owner, outcome in results.items() if isinstance(outcome, AccountLease)]
    assert len(winners) == 1, results
    [winner] = winners
    refusals = [outcome for outcome in results.values() if isinstance(outcome, AccountRefused)]
    assert len(refusals) == 11
    assert {(r.reason, r.holder) for r in refusals} == {("held", winner)}
    # now() is each transaction's start: a loser that began before the winner sees a little more than
    # the TTL left.
    assert all(LONG_TTL - 30_000 < r.expires_in_ms < LONG_TTL + 30_000 for r in refusals)
    lease = results[winner]
    assert (lease.term, lease.takeover, lease.previous_owner) == (1, False, None)
    row = snapshot()
    assert row["owner_id"] == winner and row["lease_held"] and row["state"] == "connecting"
    assert row["lease_term"] == 1


_RACER = r"""
import json, sys, threading
from zenthor.db import database, execute, init_database
from zenthor.queue.channel_leases import AccountLease, acquire_account

name, threads, account = sys.argv[1], int(sys.argv[2]), sys.argv[3]
init_database(pool_size=threads + 2)
ready = threading.Barrier(threads + 1)
go = threading.Event()
results, lock = [], threading.Lock()


def race(i):
    owner = f"{name}-t{i}"
    with database.connection_context():
        execute("SELECT 1")
        ready.wait(timeout=60)
        go.wait(timeout=60)
        outcome = acquire_account("whatsapp", account, owner, ttl_ms=60000, auth_mode="local")
    with lock:
        results.append({
            "owner": owner,
            "won": isinstance(outcome, AccountLease),
            "reason": getattr(outcome, "reason", None),
            "holder": getattr(outcome, "holder", None),
        })


workers = [threading.Thread(target=race, args=(i,)) for i in range(threads)]
for worker in workers:
    worker.start()
ready.wait(timeout=60)
print("ready", flush=True)
sys.stdin.readline()
go.set()
for worker in workers:
    worker.join(timeout=60)
print(json.dumps(results), flush=True)
"""


@pytest.mark.timeout(120)
def test_two_processes_of_six_threads_have_exactly_one_winner():
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, f"proc{p}", "6", ACCOUNT],
            env=os.environ,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(2)
    ]
    try:
        for proc in procs:  # every thread of both processes waits at its start line
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=90)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0]
    results = [item for out in outputs for item in json.loads(out.strip().splitlines()[-1])]
    assert len(results) == 12
    winners = [r["owner"] for r in results if r["won"]]
    assert len(winners) == 1, results
    assert {(r["reason"], r["holder"]) for r in results if not r["won"]} == {("held", winners[0])}
    assert snapshot()["owner_id"] == winners[0]


# ---- heartbeat and expiry --------------------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_flushes_the_counters():
    lease = owned("a", ttl_ms=2_000)
    before = snapshot()
    inbound = datetime.now(UTC) - timedelta(seconds=5)
    assert heartbeat_account(lease, ttl_ms=LONG_TTL, rate_limited=3, last_inbound=inbound)
    after = snapshot()
    assert after["expires_at"] > before["expires_at"] + timedelta(seconds=50)
    assert after["heartbeat_at"] >= before["heartbeat_at"]
    assert after["rate_limited_total"] == 3
    assert abs(after["last_inbound_at"] - inbound) < timedelta(milliseconds=1)
    assert heartbeat_account(lease, ttl_ms=LONG_TTL, rate_limited=2)  # None keeps the last times
    again = snapshot()
    assert again["rate_limited_total"] == 5 and again["last_inbound_at"] == after["last_inbound_at"]
    assert again["owner_id"] == "a" and again["lease_term"] == lease.term


def test_a_heartbeat_after_expiry_is_refused_even_when_nobody_took_over():
    lease = owned("a", ttl_ms=SHORT_TTL)
    wait_lease_expired()
    before = account_row()
    assert not heartbeat_account(lease, ttl_ms=LONG_TTL)
    assert account_row() == before  # the lapsed lease is not revived
    assert snapshot()["owner_id"] == "a" and not snapshot()["lease_held"]

    successor = owned("b")
    assert successor.takeover is True and successor.previous_owner == "a"
    assert successor.term == lease.term + 1 and successor.token != lease.token
    assert snapshot()["owner_id"] == "b" and snapshot()["lease_term"] == lease.term + 1


def test_a_stale_token_writes_nothing_about_the_account():
    stale = owned("a", ttl_ms=SHORT_TTL)
    wait_lease_expired()
    current = owned("b")
    assert set_account_state(current, "connected", device_jid="15550000001:7@s.whatsapp.net")
    before = account_row()

    assert not heartbeat_account(stale, ttl_ms=LONG_TTL, rate_limited=9)
    assert not release_account(stale)
    assert not release_account(stale, hold_ms=60_000)
    assert not set_account_state(stale, "disconnected", error="old socket", device_jid="1:1@s.whatsapp.net")
    assert not set_account_state(stale, "banned", ban_code=101, banned_until=db_now_plus(3_600_000))
    assert not set_account_state(stale, "logged_out", error="stale")
    assert account_row() == before
    assert snapshot()["state"] == "connected" and snapshot()["owner_id"] == "b"


def test_release_lets_another_owner_in_at_once_without_a_takeover():
    first = owned("a")
    assert release_account(first)
    row = snapshot()
    assert (row["lease_held"], row["expires_at"], row["state"], row["hold_until"]) == (
        False,
        None,
        "standby",
        None,
    )
    assert row["owner_id"] == "a"  # kept: the next owner learns who handed over
    second = owned("b")
    assert (second.takeover, second.previous_owner, second.term) == (False, "a", first.term + 1)
    assert not release_account(first)  # released once, and the account is b's now
    assert snapshot()["owner_id"] == "b"


def test_release_with_a_hold_refuses_everyone_until_it_passes():
    first = owned("a")
    assert release_account(first, hold_ms=1_500)
    before = account_row()
    refused = acquire("b")
    assert isinstance(refused, AccountRefused) and refused.reason == "held_off"
    assert account_row() == before  # refusing wrote nothing
    wait_db_passed("hold_until")
    second = owned("b")
    assert second.takeover is False
    assert snapshot()["hold_until"] is None


def test_a_ban_refuses_until_banned_until_and_pairing_is_not_refused():
    lease = owned("a")
    assert set_account_state(
        lease, "banned", error="temporary ban", ban_code=101, banned_until=db_now_plus(1_500)
    )
    assert release_account(lease)
    row = snapshot()
    assert (row["state"], row["ban_code"]) == ("banned", 101) and row["banned_until"] is not None
    refused = acquire("b")
    assert isinstance(refused, AccountRefused) and refused.reason == "banned"
    pairing = owned("pairing", for_pairing=True)  # only a live owner refuses the operator
    assert release_account(pairing)
    wait_db_passed("banned_until")
    assert isinstance(acquire("b"), AccountLease)


def test_logged_out_refuses_runtimes_but_not_pairing():
    lease = owned("a")
    assert set_account_state(lease, "logged_out", error="logged out by WhatsApp: pair again")
    assert release_account(lease)
    assert account_state(CHANNEL, ACCOUNT) == "logged_out"  # release keeps an operator state
    for owner in ("a", "b"):
        refused = acquire(owner)
        assert isinstance(refused, AccountRefused) and refused.reason == "logged_out"
    pairing = owned("pairing", for_pairing=True)
    refused = acquire("b", for_pairing=True)  # a live owner refuses pairing too
    assert isinstance(refused, AccountRefused) and (refused.reason, refused.holder) == ("held", "pairing")
    assert release_account(pairing)


def test_outdated_is_refused_only_for_the_client_version_that_saw_it():
    lease = owned("a", version="neonize 0.5.2")
    assert set_account_state(lease, "outdated", error="client outdated")
    assert release_account(lease)
    refused = acquire("b", version="neonize 0.5.2")
    assert isinstance(refused, AccountRefused) and refused.reason == "outdated"
    upgraded = owned("b", version="neonize 0.5.3")
    assert snapshot()["client_version"] == "neonize 0.5.3"
    assert release_account(upgraded)


def test_reset_operator_state_clears_the_ban_hold_and_error():
    lease = owned("a")
    assert set_account_state(
        lease, "banned", error="temporary ban", ban_code=102, banned_until=db_now_plus(3_600_000)
    )
    assert release_account(lease, hold_ms=3_600_000)
    assert isinstance(acquire("b"), AccountRefused)
    reset_operator_state(CHANNEL, ACCOUNT, state="standby", device_jid="15550000001:9@s.whatsapp.net")
    row = snapshot()
    assert row["state"] == "standby" and row["device_jid"] == "15550000001:9@s.whatsapp.net"
    assert (row["last_error"], row["ban_code"], row["banned_until"], row["hold_until"]) == (None,) * 4
    fresh = owned("b")
    assert fresh.device_jid == "15550000001:9@s.whatsapp.net"


def test_snapshot_reports_the_lease():
    assert accounts_snapshot(CHANNEL, ACCOUNT) == []
    assert account_state(CHANNEL, ACCOUNT) is None
    lease = owned("a")
    row = snapshot()
    assert (row["channel"], row["account_id"], row["owner_id"], row["auth_mode"]) == (
        CHANNEL,
        ACCOUNT,
        "a",
        "local",
    )
    assert row["lease_held"] and 0 < row["expires_in_s"] <= LONG_TTL / 1000
    assert release_account(lease)
    assert not snapshot()["lease_held"] and snapshot()["expires_in_s"] is None


# ---- the owner-fenced outbox ----------------------------------------------------------------------


def test_claims_take_each_conversations_oldest_row_in_order():
    lease = owned("a")
    alice, bob = conversation("alice@s.whatsapp.net"), conversation("bob@s.whatsapp.net")
    a1, b1, a2, b2 = outbox(alice, "a1"), outbox(bob, "b1"), outbox(alice, "a2"), outbox(bob, "b2")
    other_account = outbox(conversation("carol@s.whatsapp.net", account="acct-2"), "elsewhere")
    other_channel = outbox(conversation("dave", channel="webhook"), "not ours")

    first = claim(lease)
    assert first.outbound_id == a1
    assert (first.chat_id, first.text, first.attempt, first.channel) == (
        "alice@s.whatsapp.net",
        "a1",
        1,
        CHANNEL,
    )
    assert (first.token, first.worker_id, first.provider_message_id, first.resends) == (
        lease.token,
        "a",
        "",
        0,
    )
    row = outbox_row(a1)
    assert (row["status"], row["processor_id"], str(row["lease_token"])) == ("sending", "a", lease.token)
    assert row["locked_until"] is not None and row["attempts"] == 1

    assert claimed_id(lease) == b1
    assert claim(lease) is None  # a2 and b2 wait behind their conversation's row in flight
    assert mark_sent_owned(first, "3EB0A1")
    assert claimed_id(lease) == a2
    assert claim(lease) is None
    assert outbox_row(b2)["status"] == "pending"
    assert outbox_row(other_account)["status"] == outbox_row(other_channel)["status"] == "pending"


def test_a_row_waiting_out_its_backoff_holds_back_its_conversation():
    lease = owned("a")
    alice, bob = conversation("alice@s.whatsapp.net"), conversation("bob@s.whatsapp.net")
    waiting = outbox(alice, "retry later", delay_ms=3_600_000)
    behind = outbox(alice, "after it")
    free = outbox(bob, "bob's")
    assert claimed_id(lease) == free
    assert claim(lease) is None
    assert outbox_row(waiting)["status"] == outbox_row(behind)["status"] == "pending"
    assert not has_sendable(lease)  # "after it" could not go even without a rate limit


def test_held_chats_are_skipped_and_others_go_on():
    lease = owned("a")
    alice, bob = conversation("alice@s.whatsapp.net"), conversation("bob@s.whatsapp.net")
    a1, b1 = outbox(alice, "a1"), outbox(bob, "b1")
    assert claimed_id(lease, held_chats=["alice@s.whatsapp.net"]) == b1
    assert claim(lease, held_chats=["alice@s.whatsapp.net"]) is None
    assert outbox_row(a1)["status"] == "pending"
    assert has_sendable(lease)
    assert claimed_id(lease) == a1


def test_no_claim_once_the_account_lease_ran_out_or_was_taken_over():
    lease = owned("a", ttl_ms=SHORT_TTL)
    row_id = outbox(conversation("alice@s.whatsapp.net"), "hello")
    wait_lease_expired()
    before = full_outbox_row(row_id)
    assert claim(lease) is None  # nobody took over, and still nothing
    assert full_outbox_row(row_id) == before
    successor = owned("b")
    assert claim(lease) is None
    assert full_outbox_row(row_id) == before
    got = claim(successor)
    assert got.outbound_id == row_id and got.worker_id == "b"


def test_mark_sent_owned_stores_whatsapps_id_once():
    lease = owned("a")
    row_id = outbox(conversation("alice@s.whatsapp.net"), "hello")
    got = claim(lease)
    assert mark_sent_owned(got, "3EB0C0FFEE")
    row = outbox_row(row_id)
    assert (row["status"], row["provider_message_id"], row["locked_until"]) == ("sent", "3EB0C0FFEE", None)
    assert row["sent_at"] is not None
    assert not mark_sent_owned(got, "3EB0OTHER")  # not sending any more
    assert outbox_row(row_id)["provider_message_id"] == "3EB0C0FFEE"
    [(chat, ago)] = recent_sends(lease)
    assert chat == "alice@s.whatsapp.net" and 0 <= ago < 60


def test_unclaim_owned_hands_the_row_back_with_the_attempt_uncounted():
    lease = owned("a")
    row_id = outbox(conversation("alice@s.whatsapp.net"), "hello")
    got = claim(lease)
    assert outbox_row(row_id)["attempts"] == 1
    assert unclaim_owned(got)
    row = outbox_row(row_id)
    assert (row["status"], row["attempts"], row["lease_token"], row["locked_until"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert not unclaim_owned(got)  # not sending any more
    again = claim(lease)
    assert again.outbound_id == row_id and again.attempt == 1


def test_a_new_owner_sends_again_what_the_old_one_left_sending():
    old = owned("a", ttl_ms=2_000)
    alice, bob = conversation("alice@s.whatsapp.net"), conversation("bob@s.whatsapp.net")
    r1, r2, after = outbox(alice, "one"), outbox(bob, "two"), outbox(alice, "after one")
    assert {claimed_id(old), claimed_id(old)} == {r1, r2}  # then "a" dies before recording them
    execute("UPDATE channel_account SET expires_at = now() WHERE account_id = %s", (ACCOUNT,))
    new = owned("b")
    assert claim(new) is None  # the rows in doubt hold their conversations until reclaimed

    outcome = reclaim_unknown_outcome(new, max_attempts=3)
    assert (sorted(outcome.resend_ids), outcome.failed_ids, outcome.previous_owners) == ([r1, r2], [], ["a"])
    for row_id in (r1, r2):
        row = outbox_row(row_id)
        assert (row["status"], row["resends"], row["lease_token"], row["attempts"]) == ("pending", 1, None, 1)
        assert row["last_error"] == "outcome unknown: a did not record the send"
    assert snapshot()["resends_total"] == 2

    resent = claim(new)
    assert (resent.outbound_id, resent.attempt, resent.resends) == (r1, 2, 1)
    # The new owner's own sending rows are not "unknown": a second reclaim changes nothing.
    assert reclaim_unknown_outcome(new, max_attempts=3).resend_ids == []
    assert outbox_row(r1)["status"] == "sending" and snapshot()["resends_total"] == 2
    assert outbox_row(after)["status"] == "pending"


def test_reclaim_fails_a_row_with_no_attempts_left():
    old = owned("a", ttl_ms=2_000)
    spent = outbox(conversation("alice@s.whatsapp.net"), "spent", attempts=2)
    fresh = outbox(conversation("bob@s.whatsapp.net"), "fresh")
    assert claimed_id(old) == spent and claimed_id(old) == fresh
    assert outbox_row(spent)["attempts"] == 3
    execute("UPDATE channel_account SET expires_at = now() WHERE account_id = %s", (ACCOUNT,))
    new = owned("b")
    outcome = reclaim_unknown_outcome(new, max_attempts=3)
    assert (outcome.resend_ids, outcome.failed_ids) == ([fresh], [spent])
    assert outbox_row(spent)["status"] == "failed" and outbox_row(fresh)["status"] == "pending"
    # Only what is really sent again counts as a resend.
    assert (outbox_row(spent)["resends"], outbox_row(fresh)["resends"]) == (0, 1)
    assert snapshot()["resends_total"] == 1


def test_reclaim_with_a_stale_token_does_nothing():
    old = owned("a", ttl_ms=SHORT_TTL)
    row_id = outbox(conversation("alice@s.whatsapp.net"), "hello")
    wait_lease_expired()
    new = owned("b")
    got = claim(new)
    assert got.outbound_id == row_id
    before, account_before = full_outbox_row(row_id), account_row()
    outcome = reclaim_unknown_outcome(old, max_attempts=3)
    assert (outcome.resend_ids, outcome.failed_ids, outcome.previous_owners) == ([], [], [])
    assert full_outbox_row(row_id) == before  # b's send in flight is untouched
    assert account_row() == account_before


ROWS, CONVERSATIONS, THREADS = 200, 20, 8


@pytest.mark.timeout(120)
def test_eight_threads_claiming_with_one_lease_never_share_a_row_and_keep_each_chats_order():
    lease = owned("a")
    conversations = [conversation(f"1555000{i:04d}@s.whatsapp.net") for i in range(CONVERSATIONS)]
    with database.atomic():
        ids = [outbox(conversations[n % CONVERSATIONS], f"m{n}") for n in range(ROWS)]
    claims: list[tuple[int, int, str]] = []  # (outbound id, conversation, thread), in claim order
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def drain(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                got = claim(lease)
                if got is None:
                    if not execute("SELECT 1 FROM outbound_message WHERE status <> 'sent' LIMIT 1"):
                        return
                    continue
                with lock:
                    claims.append((got.outbound_id, got.conversation_id, name))
                assert mark_sent_owned(got, f"3EB0{got.outbound_id:06d}")
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    threads = [DbThread(target=drain, args=(f"t{i}",)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert errors == []
    assert sorted(c[0] for c in claims) == ids  # every row claimed exactly once
    assert len({c[2] for c in claims}) > 1, "more than one thread must have claimed"
    per_conversation: dict[int, list[int]] = defaultdict(list)
    for outbound_id, conversation_id, _ in claims:
        per_conversation[conversation_id].append(outbound_id)
    for conversation_id, claimed in per_conversation.items():
        assert claimed == sorted(claimed), f"conversation {conversation_id} out of order"
    assert (
        execute(
            "SELECT count(*) FROM outbound_message WHERE status = 'sent' AND attempts = 1 "
            "AND provider_message_id = '3EB0' || lpad(id::text, 6, '0')"
        )[0][0]
        == ROWS
    )


# ---- retries, and the global sweep -------------------------------------------------------------------


def test_retry_or_fail_with_an_owned_lease_backs_off_then_fails(settings_env):
    settings_env(OUTBOUND_MAX_ATTEMPTS="2", OUTBOUND_RETRY_BASE_MS="60000")
    lease = owned("a")
    alice = conversation("alice@s.whatsapp.net")
    row_id, behind = outbox(alice, "hello"), outbox(alice, "after hello")
    first = claim(lease)
    outcome = retry_or_fail(first, "websocket not connected")
    assert (outcome.final, outcome.fenced, outcome.attempts) == (False, True, 1)
    assert 48_000 <= outcome.delay_ms <= 72_000
    row = outbox_row(row_id)
    assert (row["status"], row["lease_token"], row["last_error"]) == (
        "pending",
        None,
        "websocket not connected",
    )
    assert execute(
        "SELECT available_at > now() + interval '40 seconds' FROM outbound_message WHERE id = %s", (row_id,)
    )[0][0]
    assert claim(lease) is None  # waiting out the backoff, and its chat waits behind it
    execute("UPDATE outbound_message SET available_at = now() WHERE id = %s", (row_id,))
    second = claim(lease)
    assert (second.outbound_id, second.attempt) == (row_id, 2)
    outcome = retry_or_fail(second, "websocket not connected")
    assert (outcome.final, outcome.fenced) == (True, True)
    assert outbox_row(row_id)["status"] == "failed"
    assert claimed_id(lease) == behind  # a failed row no longer holds its chat's line


def test_retry_or_fail_of_a_row_that_is_not_retryable_fails_it_at_once():
    lease = owned("a")
    row_id = outbox(conversation("15559999999@s.whatsapp.net"), "hello")
    got = claim(lease)
    outcome = retry_or_fail(got, "no LID found for 15559999999@s.whatsapp.net", retryable=False)
    assert (outcome.final, outcome.fenced, outcome.attempts) == (True, True, 1)
    assert outbox_row(row_id)["status"] == "failed"


def test_retry_or_fail_of_a_row_reclaimed_by_a_new_owner_is_fenced():
    old = owned("a", ttl_ms=2_000)
    row_id = outbox(conversation("alice@s.whatsapp.net"), "hello")
    got = claim(old)
    execute("UPDATE channel_account SET expires_at = now() WHERE account_id = %s", (ACCOUNT,))
    new = owned("b")
    assert reclaim_unknown_outcome(new, max_attempts=3).resend_ids == [row_id]
    before = full_outbox_row(row_id)
    assert retry_or_fail(got, "late failure").fenced is False
    assert retry_or_fail(got, "late failure", retryable=False).fenced is False
    assert not mark_sent_owned(got, "3EB0LATE") and not unclaim_owned(got)
    assert full_outbox_row(row_id) == before


def test_the_global_outbox_sweep_never_touches_whatsapp_rows():
    lease = owned("a")
    mine = outbox(conversation("alice@s.whatsapp.net"), "owner's", attempts=7)
    webhook = outbox(conversation("hook-chat", channel="webhook", account="hooks"), "anyone's")
    assert claim(lease, lock_ms=1).outbound_id == mine  # attempts now 8: the sweep would fail it
    claimed = claim_outbound(webhook, "worker-1", lock_ms=1)
    assert isinstance(claimed, OutboundLease)
    wait_db_passed("locked_until", "outbound_message WHERE id = %s", (mine,))
    wait_db_passed("locked_until", "outbound_message WHERE id = %s", (webhook,))
    before = full_outbox_row(mine)

    requeued = requeue_expired()
    assert [(row_id, status) for row_id, _conversation, status in requeued] == [(webhook, "pending")]
    assert full_outbox_row(mine) == before
    assert outbox_row(webhook)["status"] == "pending"
