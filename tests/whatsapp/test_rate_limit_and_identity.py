"""SendRateLimit (an injected clock) and IdentityBook (real Postgres: whatsapp_identity and
whatsapp_chat), the two pieces of the WhatsApp runtime that remember things across sends and
across failovers."""

from __future__ import annotations

import pytest

from tests.support.factories import make_conversation
from zenthor.channels.whatsapp.identity import IdentityBook, is_lid, is_phone, server_of, strip_device
from zenthor.channels.whatsapp.rate_limit import WINDOW_S, SendRateLimit
from zenthor.db import execute
from zenthor.queue.channel_leases import AccountLease, acquire_account
from zenthor.queue.channel_outbox import recent_sends

ACCOUNT = "acct-1"
ALICE = "15551234567@s.whatsapp.net"
ALICE_LID = "200000000000002@lid"
BOB = "15557654321@s.whatsapp.net"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---- SendRateLimit ------------------------------------------------------------------------------


def test_a_chat_is_held_once_it_used_its_minute_and_others_go_on(clock):
    limit = SendRateLimit(2, 100, clock=clock)
    assert limit.held_chats() == [] and limit.account_wait_s() == 0
    limit.record("alice")
    clock.advance(10)
    limit.record("alice")
    limit.record("bob")
    assert limit.held_chats() == ["alice"]
    assert limit.account_wait_s() == 0  # the account as a whole may still send
    clock.advance(49.5)  # 59.5 s after alice's first send
    assert limit.held_chats() == ["alice"]
    clock.advance(0.5)  # exactly one window later the first send leaves it
    assert limit.held_chats() == []


def test_the_window_slides_rather_than_resetting_each_minute(clock):
    limit = SendRateLimit(2, 100, clock=clock)
    limit.record("alice")  # t=0
    clock.advance(30)
    limit.record("alice")  # t=30
    clock.advance(31)  # t=61: the t=0 send is out, the t=30 one is not
    assert limit.held_chats() == []
    limit.record("alice")  # t=61
    assert limit.held_chats() == ["alice"]
    clock.advance(28)  # t=89: still two sends within the last minute
    assert limit.held_chats() == ["alice"]
    clock.advance(1)  # t=90: the t=30 send leaves
    assert limit.held_chats() == []


def test_the_account_limit_says_how_long_to_wait(clock):
    limit = SendRateLimit(100, 3, clock=clock)
    for chat in ("a", "b", "c"):
        limit.record(chat)
        clock.advance(10)
    # t=30: sends at 0, 10 and 20; the oldest leaves the window at t=60
    assert limit.account_wait_s() == pytest.approx(30)
    assert limit.held_chats() == []
    clock.advance(29.5)
    assert limit.account_wait_s() == pytest.approx(0.5)
    clock.advance(0.5)
    assert limit.account_wait_s() == 0
    limit.record("d")
    assert limit.account_wait_s() == pytest.approx(10)  # now the t=10 send is the oldest


def test_seeding_counts_recent_sends_as_made_here(clock):
    limit = SendRateLimit(2, 3, clock=clock)
    # Unsorted, as the outbox returns them, and one older than the window.
    limit.seed([("alice", 10.0), ("bob", 70.0), ("alice", 50.0), ("carol", 5.0)])
    assert limit.held_chats() == ["alice"]
    assert limit.account_wait_s() == pytest.approx(WINDOW_S - 50)  # alice's 50 s old send is the oldest
    clock.advance(10)
    assert limit.held_chats() == [] and limit.account_wait_s() == 0
    limit.record("alice")
    assert limit.held_chats() == ["alice"]


def test_seeding_from_the_accounts_sends_in_the_last_minute(clock):
    lease = acquire_account("whatsapp", ACCOUNT, "owner-a", ttl_ms=60_000, auth_mode="local")
    assert isinstance(lease, AccountLease)
    alice = make_conversation(ALICE, channel="whatsapp", account_id=ACCOUNT)
    bob = make_conversation(BOB, channel="whatsapp", account_id=ACCOUNT)
    other = make_conversation(ALICE, channel="whatsapp", account_id="acct-2")
    for conversation_id, seconds_ago, status in (
        (alice, 5, "sent"),
        (alice, 20, "sent"),
        (bob, 120, "sent"),  # outside the window
        (bob, 1, "failed"),
        (other, 3, "sent"),  # another account
    ):
        execute(
            "INSERT INTO outbound_message "
            "(conversation_id, channel, account_id, chat_id, text, status, sent_at) "
            "SELECT id, channel, account_id, chat_id, 'x', %s, now() - %s * interval '1 second' "
            "FROM conversation WHERE id = %s",
            (status, seconds_ago, conversation_id),
        )
    recent = recent_sends(lease)
    assert sorted(chat for chat, _ in recent) == [ALICE, ALICE]
    assert sorted(round(ago) for _, ago in recent) == [5, 20]
    limit = SendRateLimit(2, 60, clock=clock)
    limit.seed(recent)
    assert limit.held_chats() == [ALICE]
    clock.advance(40.5)  # the 20 s old send leaves the window
    assert limit.held_chats() == []


# ---- JIDs -----------------------------------------------------------------------------------------


def test_jid_helpers():
    assert strip_device("15551234567:12@s.whatsapp.net") == ALICE
    assert strip_device("200000000000002:5@lid") == ALICE_LID
    assert strip_device("15551234567.0:3@s.whatsapp.net") == "15551234567.0@s.whatsapp.net"
    assert strip_device(ALICE) == ALICE
    assert is_phone(ALICE) and not is_lid(ALICE)
    assert is_lid(ALICE_LID) and not is_phone(ALICE_LID)
    assert server_of("120363000000000001@g.us") == "g.us" and server_of("nobody") == ""


# ---- IdentityBook ---------------------------------------------------------------------------------


def identities() -> list[tuple[str, str, str]]:
    return execute("SELECT account_id, lid, phone FROM whatsapp_identity ORDER BY account_id, lid")


def routes() -> list[tuple[str, str, str]]:
    return execute("SELECT account_id, chat_id, reply_jid FROM whatsapp_chat ORDER BY account_id, chat_id")


class Lookup:
    """whatsmeow's LID map as the transport exposes it, counting the questions."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = table or {}
        self.asked: list[str] = []

    def __call__(self, lid: str) -> str | None:
        self.asked.append(lid)
        return self.table.get(lid)


def test_a_phone_jid_is_its_own_identity():
    book = IdentityBook(ACCOUNT, Lookup())
    assert book.canonical("15551234567:3@s.whatsapp.net", None) == (ALICE, None)
    assert identities() == []


def test_a_phone_sender_with_its_lid_as_alt_teaches_the_pair():
    book = IdentityBook(ACCOUNT)
    assert book.canonical(ALICE, "200000000000002:1@lid") == (ALICE, None)
    assert identities() == [(ACCOUNT, ALICE_LID, ALICE)]


def test_a_lid_sender_with_sender_alt_is_the_phone_and_the_pair_is_persisted():
    lookup = Lookup()
    book = IdentityBook(ACCOUNT, lookup)
    assert book.canonical(ALICE_LID, ALICE) == (ALICE, "alt")
    assert identities() == [(ACCOUNT, ALICE_LID, ALICE)]
    assert book.canonical(ALICE_LID, None) == (ALICE, "map")  # from memory now
    assert lookup.asked == []


def test_a_lid_is_resolved_from_the_table_by_a_new_instance_after_a_failover():
    IdentityBook(ACCOUNT).canonical(ALICE_LID, ALICE)
    lookup = Lookup()
    successor = IdentityBook(ACCOUNT, lookup)  # another process, after a takeover
    assert successor.canonical(ALICE_LID, None) == (ALICE, "map")
    assert successor.phone_for(ALICE_LID) == ALICE
    assert lookup.asked == []  # the table knew it: whatsmeow's map was not asked
    assert IdentityBook("acct-2", Lookup()).canonical(ALICE_LID, None) == (ALICE_LID, None)  # per account


def test_a_lid_is_resolved_through_whatsmeows_map_and_then_remembered():
    lookup = Lookup({ALICE_LID: "15551234567:4@s.whatsapp.net"})
    book = IdentityBook(ACCOUNT, lookup)
    assert book.canonical("200000000000002:4@lid", None) == (ALICE, "map")
    assert lookup.asked == [ALICE_LID]  # asked without the device part
    assert identities() == [(ACCOUNT, ALICE_LID, ALICE)]
    assert book.canonical(ALICE_LID, None) == (ALICE, "map")
    assert lookup.asked == [ALICE_LID]  # memory answered the second time
    later = Lookup()
    assert IdentityBook(ACCOUNT, later).canonical(ALICE_LID, None) == (ALICE, "map")
    assert later.asked == []


def test_an_unresolvable_lid_stays_a_lid():
    lookup = Lookup()
    book = IdentityBook(ACCOUNT, lookup)
    assert book.canonical("299999999999999:2@lid", None) == ("299999999999999@lid", None)
    assert lookup.asked == ["299999999999999@lid"]
    assert IdentityBook(ACCOUNT).canonical("299999999999999@lid", None) == ("299999999999999@lid", None)
    assert identities() == []


def test_a_map_answer_that_is_not_a_phone_jid_is_not_learned():
    book = IdentityBook(ACCOUNT, Lookup({ALICE_LID: "300000000000003@lid"}))
    assert book.canonical(ALICE_LID, None) == (ALICE_LID, None)
    assert identities() == []


def test_device_suffixes_are_stripped_before_anything_is_stored():
    book = IdentityBook(ACCOUNT)
    assert book.canonical("200000000000002:5@lid", "15551234567:5@s.whatsapp.net") == (ALICE, "alt")
    assert identities() == [(ACCOUNT, ALICE_LID, ALICE)]
    assert book.phone_for(ALICE_LID) == ALICE


def test_learning_writes_only_when_something_changed():
    book = IdentityBook(ACCOUNT)
    assert book.learn(ALICE_LID, ALICE) is True
    assert book.learn("200000000000002:9@lid", ALICE) is False  # the same pair
    assert book.learn(ALICE, ALICE_LID) is False  # the wrong way round is refused
    before = execute("SELECT updated_at FROM whatsapp_identity")
    assert IdentityBook(ACCOUNT).learn(ALICE_LID, ALICE) is True  # new memory, same row: untouched
    assert execute("SELECT updated_at FROM whatsapp_identity") == before
    assert book.learn(ALICE_LID, BOB) is True  # the LID now belongs to another number
    assert identities() == [(ACCOUNT, ALICE_LID, BOB)]


def test_reply_routes_are_persisted_and_read_back_by_a_new_instance():
    book = IdentityBook(ACCOUNT)
    assert book.reply_jid(ALICE) == ALICE  # nothing known: the chat itself
    book.remember_route(ALICE, ALICE_LID)  # they wrote from their LID
    assert book.reply_jid(ALICE) == ALICE_LID
    assert routes() == [(ACCOUNT, ALICE, ALICE_LID)]
    successor = IdentityBook(ACCOUNT)
    assert successor.reply_jid(ALICE) == ALICE_LID
    assert IdentityBook("acct-2").reply_jid(ALICE) == ALICE
    book.remember_route(ALICE, ALICE)  # and then from their phone again
    assert routes() == [(ACCOUNT, ALICE, ALICE)]
    assert IdentityBook(ACCOUNT).reply_jid(ALICE) == ALICE
