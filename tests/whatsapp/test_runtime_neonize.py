"""The WhatsApp runtime on the real neonize adapter, in process, offline, on real Postgres and RabbitMQ.

``WhatsAppRuntime`` runs in a thread with a transport factory that returns a real
:class:`NeonizeTransport`. Only two seams are replaced, as in ``test_neonize_transport``: neonize's
blocking ``connect()`` (it would dial WhatsApp) by :class:`GoSide`, which plays Go's part on the
dial thread (the Device event first, then every event the test hands it, through the C callback
neonize builds from ``client.event.execute``); and neonize's ctypes handle by the harness's
``FakeGo``, so neonize's own ``send_message``, ``mark_read`` and ``get_me`` run and their FFI calls
are recorded.

Every wait is for a condition (a row, an event, a recorded FFI call), bounded.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message as ProtoMessage
from neonize.events import ConnectedEv, DisconnectedEv, LoggedOutEv, StreamErrorEv, StreamReplacedEv
from neonize.exc import NeonizeError
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import StickerMessage

from tests.support.workers import DbThread, wait_for
from tests.whatsapp.neonize_harness import (
    OWN_DEVICE,
    OWN_PHONE,
    EventPipe,
    FakeGo,
    device_event,
    install_fake_go,
    jid,
    message_event,
)
from tests.whatsapp.runtime_support import account_row
from zenthor.actors.publish import publish_dispatch
from zenthor.agent.replies import write_replies
from zenthor.broker import broker
from zenthor.channels.whatsapp.delivery import DeliveryConfig
from zenthor.channels.whatsapp.inbound import InboundConfig
from zenthor.channels.whatsapp.neonize_transport import NeonizeTransport
from zenthor.channels.whatsapp.runtime import RuntimeConfig, WhatsAppRuntime
from zenthor.channels.whatsapp.term import Term
from zenthor.db import database, execute
from zenthor.queue import Lease, claim, complete

ACCOUNT = "acct-neo"
OWNER = "rt-neo"
OWN_DEVICE_JID = f"{OWN_PHONE}:{OWN_DEVICE}@s.whatsapp.net"
ALICE_NUMBER = "15551234567"
ALICE = f"{ALICE_NUMBER}@s.whatsapp.net"
ALICE_LID_USER = "200000000000002"
ALICE_LID = f"{ALICE_LID_USER}@lid"
BOB_NUMBER = "15557654321"
BOB = f"{BOB_NUMBER}@s.whatsapp.net"
UNSUPPORTED = "Sorry, I can only read text messages for now."
HOLDOFF_MS = 60_000  # nobody reconnects during a test after a replaced stream


# ---- Go's side of one transport -----------------------------------------------------------------


class GoSide:
    """What neonize's Go library does for one transport, offline.

    ``connect()`` runs :meth:`dial` on the transport's dial thread: the Device event, then
    ConnectedEv (a resumed session), then each event :meth:`deliver` queues, until neonize's
    ``stop()`` reaches Go's ``Stop``. Events go through the C callback neonize's ``connect()``
    would hand to Go, built from ``client.event.execute`` (the adapter's wrapper of neonize's).
    """

    def __init__(self, transport: NeonizeTransport, *, early: tuple[ProtoMessage, ...] = ()) -> None:
        self.transport = transport
        self.early = early  # delivered right after the Device event, before ConnectedEv
        self.early_delivered = threading.Event()
        self.go: FakeGo = install_fake_go(transport.neonize_client)
        self.stopped = threading.Event()
        self._inbox: queue.Queue = queue.Queue()
        go_stop = self.go.Stop

        def stop(uuid: bytes) -> bytes:
            self.stopped.set()
            self._inbox.put(None)  # Neonize() returns once Go's context is cancelled
            return go_stop(uuid)

        self.go.Stop = stop
        self.go.send_reply = lambda n: npb.SendResponse(
            ID=f"3EB0SENT{n:04d}", Timestamp=1767225601, ServerID=0
        )
        transport.neonize_client.connect = self.dial

    def dial(self, _proxy) -> None:
        pipe = EventPipe(self.transport.neonize_client)
        pipe.deliver(device_event())
        for event in self.early:
            pipe.deliver(event)
        self.early_delivered.set()
        pipe.deliver(ConnectedEv(status=True))
        while (item := self._inbox.get()) is not None:
            if isinstance(item, BaseException):
                raise item  # Neonize() returned with an error: the event loop is over
            event, done = item
            try:
                pipe.deliver(event)
            finally:
                done.set()

    def deliver(self, event: ProtoMessage, timeout: float = 15) -> None:
        """Have Go deliver ``event``; returns once the runtime's handler has returned."""
        done = threading.Event()
        self._inbox.put((event, done))
        assert done.wait(timeout), f"Go's callback for {type(event).__name__} did not return"

    def end_loop(self, error: str) -> None:
        """Go's event loop ends by itself (``Neonize()`` returns an error nobody asked for)."""
        self._inbox.put(NeonizeError(error))

    def marks(self, message_id: str) -> list[tuple]:
        """The MarkRead calls that named ``message_id``."""
        return [call for call in self.go.calls_to("MarkRead") if message_id in call[2]]

    def sends(self) -> list[tuple[str, int, str]]:
        """(recipient JID, its device, text) of each SendMessage that reached the FFI."""
        return [
            (f"{to.User}@{to.Server}", to.Device, message.conversation)
            for _, _, to, message in self.go.calls_to("SendMessage")
        ]


class EventLog(logging.Handler):
    """The typed events this process emits (``zenthor.events``), DEBUG ones included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str, **fields: object) -> list[logging.LogRecord]:
        return [
            r
            for r in list(self.records)
            if getattr(r, "event", None) == name and all(getattr(r, k, None) == v for k, v in fields.items())
        ]


@pytest.fixture
def events() -> Iterator[EventLog]:
    logger = logging.getLogger("zenthor.events")
    handler, level = EventLog(), logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def no_unraisable() -> Iterator[list]:
    """Nothing may reach ctypes' "Exception ignored on calling ctypes callback" print."""
    seen: list = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    yield seen
    sys.unraisablehook = previous
    assert seen == [], [str(u.exc_value) for u in seen]


# ---- the runtime ------------------------------------------------------------------------------------


def runtime_config(tmp_path: Path) -> RuntimeConfig:
    """What ``zenthor.cli.whatsapp._runtime_config`` builds, with test timings."""
    return RuntimeConfig(
        account_id=ACCOUNT,
        owner_id=OWNER,
        auth_mode="local",
        lease_ttl_ms=5_000,
        heartbeat_ms=200,
        standby_retry_ms=50,
        replaced_holdoff_ms=HOLDOFF_MS,
        stop_timeout_s=10.0,
        shutdown_grace_s=10.0,
        reconnect_base_ms=50,
        reconnect_max_ms=200,
        outbound_max_attempts=3,
        presence_poll_s=0.05,
        client_version="neonize 0.5.2",
        delivery=DeliveryConfig(poll_s=0.05, lock_ms=30_000, per_chat_per_min=20, per_account_per_min=60),
        inbound=InboundConfig(
            account_id=ACCOUNT,
            groups="ignore",
            unsupported_reply=UNSUPPORTED,
            spool_path=tmp_path / f"{ACCOUNT}.spool.jsonl",
        ),
    )


class RuntimeRig:
    """A paired account (its device in a SQLite session store and on its row) and its runtime."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = tmp_path / "store.sqlite3"
        with sqlite3.connect(self.store) as db:
            db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
            db.execute("INSERT INTO whatsmeow_device VALUES (?)", (OWN_DEVICE_JID,))
        db.close()
        execute(
            "INSERT INTO channel_account (channel, account_id, auth_mode, state, device_jid) "
            "VALUES ('whatsapp', %s, 'local', 'standby', %s)",
            (ACCOUNT, OWN_DEVICE_JID),
        )
        self.sides: list[GoSide] = []
        self.published: list[int] = []
        self.exit_codes: list[int] = []
        self.runtime = WhatsAppRuntime(runtime_config(tmp_path), self.make_transport, publish=self.publish)
        self.thread = DbThread(
            target=lambda: self.exit_codes.append(self.runtime.run()), name="wa-runtime-test", daemon=True
        )

    def make_transport(self, term: Term) -> NeonizeTransport:
        transport = NeonizeTransport(
            ACCOUNT,
            str(self.store),
            term.lease.device_jid,
            f"{ACCOUNT}-test-t{term.lease.term}",
            first_dial_grace=30.0,
            stop_drain_timeout=5.0,
        )
        self.sides.append(GoSide(transport))
        return transport

    def publish(self, job_id: int) -> bool:
        self.published.append(job_id)
        return publish_dispatch(job_id)  # the real broker, this run's vhost

    @property
    def side(self) -> GoSide:
        return self.sides[-1]

    def start(self) -> RuntimeRig:
        self.thread.start()
        wait_for(lambda: row()["state"] == "connected", 20, message="the account to be connected")
        # The inbound handler and the outbox sender exist once the term's workers run.
        wait_for(lambda: _alive(f"wa-presence-{ACCOUNT}"), 20, message="the term's workers")
        return self

    def shutdown(self) -> None:
        self.runtime.shutdown()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the runtime did not stop"


def _alive(name: str) -> bool:
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def rig(tmp_path, settings_env, no_unraisable) -> Iterator[RuntimeRig]:
    settings_env(WHATSAPP_CONTACT_POLICY="open")
    made = RuntimeRig(tmp_path)
    yield made
    if made.thread.is_alive():
        made.shutdown()


# ---- reading the database --------------------------------------------------------------------------


def row() -> dict:
    return account_row(ACCOUNT)


def query(sql: str, params: tuple = ()) -> list[tuple]:
    with database.connection_context():
        return execute(sql, params)


def conversations() -> list[tuple[int, str]]:
    return query("SELECT id, chat_id FROM conversation WHERE channel = 'whatsapp' ORDER BY id")


def user_messages(conversation_id: int) -> list[tuple[str, str, str]]:
    return query(
        "SELECT content, provider_message_id, sender_id FROM message "
        "WHERE conversation_id = %s AND role = 'user' ORDER BY id",
        (conversation_id,),
    )


def jobs(conversation_id: int) -> list[tuple[int, str]]:
    return query(
        "SELECT id, status FROM agent_job WHERE conversation_id = %s ORDER BY id", (conversation_id,)
    )


def outbox(conversation_id: int) -> list[tuple]:
    return query(
        "SELECT id, text, status, provider_message_id, job_id FROM outbound_message "
        "WHERE conversation_id = %s ORDER BY id",
        (conversation_id,),
    )


def counts() -> tuple[int, int, int, int]:
    return query(
        "SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM agent_job), "
        "(SELECT count(*) FROM outbound_message), (SELECT count(*) FROM inbound_dedupe)"
    )[0]


def dispatch_messages_waiting() -> int:
    return broker.get_queue_message_counts("dispatch")[0]


def answer(job_id: int, text: str) -> int:
    """Run the job's turn as a worker would (claim ▸ complete with the reply); the outbox row id."""
    with database.connection_context():
        lease = claim(job_id, "worker-test")
        assert isinstance(lease, Lease), lease
        written = complete(
            lease,
            write=lambda held: write_replies(
                held.conversation_id, held.job_id, [text], in_reply_to=held.message_id
            ),
        )
    [outbound_id] = written.outbound_ids
    return outbound_id


def released(account: dict) -> bool:
    """The lease was given back (not merely expired): no live lease and no expiry left."""
    return not account["lease_held"] and account["expires_at"] is None


def wait_sent(outbound_id: int) -> tuple:
    def sent():
        rows = query("SELECT status, provider_message_id FROM outbound_message WHERE id = %s", (outbound_id,))
        return rows[0] if rows and rows[0][0] == "sent" else None

    return wait_for(sent, 20, message=f"outbox row {outbound_id} to be sent")


# ---- messages in, replies out ------------------------------------------------------------------------


def test_messages_in_and_replies_out_through_real_neonize(rig, events):
    rig.start()
    account = row()
    assert (account["owner_id"], account["lease_held"], account["device_jid"]) == (
        OWNER,
        True,
        OWN_DEVICE_JID,
    )
    side = rig.side
    assert side.go.calls_to("GetMe")  # the runtime asked neonize who we are on "connected"

    # A direct text: one user message and one job, its dispatch nudge on RabbitMQ.
    hello = message_event("3EB0TXT1", text="hello there", sender=jid(ALICE_NUMBER, device=3))
    side.deliver(hello)
    [(conversation_id, chat_id)] = conversations()
    assert chat_id == ALICE
    assert user_messages(conversation_id) == [("hello there", "3EB0TXT1", ALICE)]
    [(job_id, status)] = jobs(conversation_id)
    assert status == "pending" and rig.published == [job_id]
    wait_for(lambda: dispatch_messages_waiting() == 1, 10, message="the dispatch nudge in RabbitMQ")

    # WhatsApp delivers the same message again: nothing new.
    before = counts()
    side.deliver(hello)
    assert counts() == before and rig.published == [job_id]
    assert events.named("inbound.dedupe_skipped", channel="whatsapp")

    # The turn runs: read mark and typing while it does, then the reply through neonize's send_message.
    with database.connection_context():
        lease = claim(job_id, "worker-test")
    assert isinstance(lease, Lease)
    wait_for(lambda: side.go.calls_to("MarkRead"), 10, message="the read mark")
    [(_, _, ids, chat, sender, receipt)] = side.go.calls_to("MarkRead")
    assert ids == ["3EB0TXT1"] and (chat.User, sender.User, receipt) == (ALICE_NUMBER, ALICE_NUMBER, b"read")
    wait_for(lambda: side.go.calls_to("SendChatPresence"), 10, message="typing…")
    with database.connection_context():
        written = complete(
            lease,
            write=lambda held: write_replies(
                held.conversation_id, held.job_id, ["pong"], in_reply_to=held.message_id
            ),
        )
    [reply_id] = written.outbound_ids
    assert wait_sent(reply_id) == ("sent", "3EB0SENT0001")  # neonize's SendResponse.ID
    [(_, uuid, to, message)] = side.go.calls_to("SendMessage")
    assert uuid == f"{ACCOUNT}-test-t1".encode()
    assert (to.User, to.Server, to.Device) == (ALICE_NUMBER, "s.whatsapp.net", 0)
    assert message.conversation == "pong" and not message.HasField("extendedTextMessage")
    wait_for(
        lambda: events.named("whatsapp.outbound.sent", outbound_id=reply_id, whatsapp_id="3EB0SENT0001"),
        10,
        message="the sent event",
    )
    wait_for(
        lambda: [c for c in side.go.calls_to("SendChatPresence") if c[3] == 1], 10, message="typing cleared"
    )

    # Alice writes from her LID, with her phone JID as SenderAlt: the same person, the same conversation.
    side.deliver(
        message_event(
            "3EB0LID1",
            text="it's me again",
            sender=jid(ALICE_LID_USER, "lid", device=4),
            sender_alt=jid(ALICE_NUMBER, device=4),
        )
    )
    assert conversations() == [(conversation_id, ALICE)]
    assert [m[1:] for m in user_messages(conversation_id)] == [("3EB0TXT1", ALICE), ("3EB0LID1", ALICE)]
    [_, (second_job, _)] = jobs(conversation_id)
    assert query("SELECT lid, phone FROM whatsapp_identity WHERE account_id = %s", (ACCOUNT,)) == [
        (ALICE_LID, ALICE)
    ]
    # Her reply goes to the chat she wrote from last: her LID.
    second_reply = answer(second_job, "pong again")
    assert wait_sent(second_reply) == ("sent", "3EB0SENT0002")
    assert side.sends()[1] == (ALICE_LID, 0, "pong again")
    # Her message was marked read once, in the chat she wrote from (by the presence loop if it saw
    # the turn running, else by the sender before the reply).
    wait_for(lambda: side.marks("3EB0LID1"), 10, message="the read mark of her second message")
    [(_, _, _, chat, sender, _)] = side.marks("3EB0LID1")
    assert (chat.User, chat.Server, sender.User, sender.Server) == (
        ALICE_LID_USER,
        "lid",
        ALICE_LID_USER,
        "lid",
    )

    # A sticker: no turn, one short reply that only text is understood (sent like any other row).
    sticker = message_event(
        "3EB0STK1",
        message=WAMessage(stickerMessage=StickerMessage(mimetype="image/webp")),
        sender=jid(BOB_NUMBER, device=2),
        push_name="Bob",
    )
    side.deliver(sticker)
    [(bob_conversation, _)] = [c for c in conversations() if c[1] == BOB]
    assert jobs(bob_conversation) == [] and user_messages(bob_conversation) == []
    [(notice_id, text, _, _, notice_job)] = outbox(bob_conversation)
    assert (text, notice_job) == (UNSUPPORTED, None)
    assert wait_sent(notice_id) == ("sent", "3EB0SENT0003")
    assert side.sends()[2] == (BOB, 0, UNSUPPORTED)
    side.deliver(sticker)  # again: still one reply
    assert len(outbox(bob_conversation)) == 1
    assert events.named("whatsapp.inbound.unsupported", kind="sticker", replied=True)

    # Our own message (sent from the phone) and a status update: skipped, nothing written.
    before = counts()
    side.deliver(
        message_event(
            "3EB0OWN1", text="from my phone", sender=jid(OWN_PHONE), chat=jid(ALICE_NUMBER), from_me=True
        )
    )
    side.deliver(
        message_event("3EB0STS1", text="my story", sender=jid(BOB_NUMBER), chat=jid("status", "broadcast"))
    )
    assert counts() == before
    skipped = {(r.provider_message_id, r.reason) for r in events.named("whatsapp.inbound.skipped")}
    assert skipped == {("3EB0OWN1", "own_message"), ("3EB0STS1", "status_broadcast")}
    assert len(side.go.calls_to("SendMessage")) == 3

    rig.shutdown()
    assert rig.exit_codes == [0]
    account = row()
    assert released(account) and account["state"] == "standby"
    assert side.stopped.is_set() and len(side.go.calls_to("Stop")) == 1
    assert len(rig.sides) == 1
    assert events.named("channel.lease.released", reason="shutdown")


def test_a_collected_burst_is_marked_read_together_when_its_turn_starts(rig, events, settings_env):
    """Collect (issue 14): three messages of one person, one turn; the presence loop marks all
    three read in one receipt when the turn starts, and the one reply answers the newest."""
    settings_env(QUEUE_MODE="collect")
    rig.start()
    side = rig.side
    for n, text in enumerate(("hi", "can you remind me", "to call mom at 6")):
        side.deliver(message_event(f"3EB0BRST{n}", text=text, sender=jid(ALICE_NUMBER, device=3)))
    [(conversation_id, _)] = conversations()
    [(head, _), _, _] = jobs(conversation_id)
    with database.connection_context():
        lease = claim(head, "worker-test")
    assert isinstance(lease, Lease) and len(lease.merged_job_ids) == 2
    wait_for(lambda: side.go.calls_to("MarkRead"), 10, message="the read mark")
    [(_, _, ids, _, _, receipt)] = side.go.calls_to("MarkRead")
    assert ids == ["3EB0BRST0", "3EB0BRST1", "3EB0BRST2"] and receipt == b"read"
    with database.connection_context():
        written = complete(
            lease,
            write=lambda held: write_replies(
                held.conversation_id, held.job_id, ["I will remind you"], in_reply_to=held.reply_to
            ),
        )
    [reply_id] = written.outbound_ids
    assert wait_sent(reply_id)[0] == "sent"
    assert side.sends() == [(ALICE, 0, "I will remind you")]
    assert len(side.go.calls_to("MarkRead")) == 1  # nothing marked twice
    assert [status for _, status in jobs(conversation_id)] == ["done", "done", "done"]
    rig.shutdown()


# ---- the connection's end ---------------------------------------------------------------------------


def test_a_replaced_stream_ends_the_term_releases_and_holds_everyone_off(rig, events):
    rig.start()
    term = rig.runtime.term
    side = rig.side
    side.deliver(StreamReplacedEv())
    # The release event comes last, after the row was written.
    wait_for(
        lambda: events.named("channel.lease.released", reason="stream_replaced"), 10, message="the release"
    )
    assert term.end_reason == "stream_replaced"
    account = row()
    assert released(account) and account["owner_id"] == OWNER  # kept: it names who handed over
    assert account["state"] == "replaced"  # kept through the release, for the hold-off
    assert account["hold_until"] is not None and "(440)" in account["last_error"]
    assert query(
        "SELECT hold_until > now() + interval '30 seconds' FROM channel_account WHERE account_id = %s",
        (ACCOUNT,),
    ) == [(True,)]
    wait_for(side.stopped.is_set, 10, message="the connection to close")
    assert events.named("whatsapp.connection.stream_replaced", term=term.lease.term)
    assert events.named("whatsapp.connection.state", state="replaced")
    # Standby again: every retry is refused while the hold lasts, and nothing dials.
    wait_for(
        lambda: len(events.named("channel.lease.contended", reason="held_off")) >= 5,
        10,
        message="several refused retries",
    )
    assert len(rig.sides) == 1
    rig.shutdown()
    assert rig.exit_codes == [0] and len(rig.sides) == 1


def test_a_logout_marks_the_account_and_nobody_reconnects(rig, events):
    rig.start()
    side = rig.side
    side.deliver(LoggedOutEv(OnConnect=False, Reason=npb.LOGGED_OUT))
    wait_for(lambda: row()["state"] == "logged_out" and not row()["lease_held"], 10, message="logged_out")
    [logout] = events.named("whatsapp.connection.logged_out")
    assert (logout.reason, logout.on_connect) == ("LOGGED_OUT", False)
    assert "pair again" in row()["last_error"]
    wait_for(side.stopped.is_set, 10, message="the connection to close")

    # The runtime keeps trying as standby; every try is refused and nothing dials again.
    wait_for(
        lambda: len(events.named("channel.lease.contended", reason="logged_out")) >= 5,
        10,
        message="several refused retries",
    )
    assert len(rig.sides) == 1
    assert row()["state"] == "logged_out" and released(row())
    rig.shutdown()
    assert rig.exit_codes == [0] and len(rig.sides) == 1
    assert row()["state"] == "logged_out"


def test_a_515_stream_error_and_a_disconnect_are_not_a_logout(rig, events):
    rig.start()
    term = rig.runtime.term
    side = rig.side
    side.deliver(StreamErrorEv(Code="515"))
    assert events.named("whatsapp.connection.event", kind="stream_error", code=515)
    assert row()["state"] == "connected"
    side.deliver(DisconnectedEv(status=True))
    account = row()
    assert (account["state"], account["owner_id"], account["lease_held"]) == ("disconnected", OWNER, True)
    assert account["lease_term"] == term.lease.term
    side.deliver(ConnectedEv(status=True))  # whatsmeow reconnected by itself
    assert row()["state"] == "connected"

    # The term goes on: the lease keeps being renewed, nothing was re-dialled.
    seen = row()["heartbeat_at"]
    wait_for(lambda: row()["heartbeat_at"] > seen, 10, message="a heartbeat after the reconnect")
    assert not term.ended and rig.runtime.term is term
    assert len(rig.sides) == 1 and not side.stopped.is_set()
    assert not events.named("whatsapp.connection.logged_out")
    assert not events.named("channel.lease.released")

    rig.shutdown()
    account = row()
    assert released(account) and account["state"] == "standby"
    assert rig.exit_codes == [0] and len(rig.sides) == 1


def test_a_dead_event_loop_ends_the_term_and_a_fresh_client_takes_over(rig, events):
    rig.start()
    first_term = rig.runtime.term
    first = rig.side
    first.end_loop("proto: required field neonize.ConnectFailure.Reason not set")
    wait_for(lambda: len(rig.sides) == 2, 15, message="a fresh client for a new term")
    assert first_term.end_reason == "connection_dead"
    assert events.named("channel.lease.released", reason="connection_dead", term=first_term.lease.term)
    assert first.stopped.is_set()  # the dead client was stopped before the lease was given back
    wait_for(lambda: row()["state"] == "connected" and row()["lease_held"], 15, message="connected again")
    account = row()
    assert (account["owner_id"], account["lease_term"]) == (OWNER, first_term.lease.term + 1)
    second_term = rig.runtime.term
    assert second_term is not first_term and second_term.lease.previous_owner == OWNER
    assert not second_term.lease.takeover  # released, not left to expire
    rig.shutdown()
    assert released(row()) and rig.exit_codes == [0]


class ReturnsAfterEarlyEvents(NeonizeTransport):
    """A transport whose ``connect()`` returns only once Go delivered its early events: what
    happens when whatsmeow hands over queued messages while ``connect()`` is still returning."""

    side: GoSide

    def connect(self, handlers) -> None:
        super().connect(handlers)
        assert self.side.early_delivered.wait(10)


def test_a_message_delivered_while_connect_returns_is_not_lost(rig, events):
    def make_transport(term: Term) -> NeonizeTransport:
        transport = ReturnsAfterEarlyEvents(
            ACCOUNT, str(rig.store), term.lease.device_jid, f"{ACCOUNT}-early", first_dial_grace=30.0
        )
        transport.side = GoSide(
            transport, early=(message_event("3EB0EARLY", text="sent while we were offline"),)
        )
        rig.sides.append(transport.side)
        return transport

    rig.runtime.transport_factory = make_transport
    rig.start()
    assert rig.side.early_delivered.is_set()
    # The handler existed before the dial: the message was accepted like any other.
    [(conversation_id, chat_id)] = conversations()
    assert chat_id == ALICE
    assert user_messages(conversation_id) == [("sent while we were offline", "3EB0EARLY", ALICE)]
    assert len(jobs(conversation_id)) == 1 and len(rig.published) == 1
    assert not rig.runtime.config.inbound.spool_path.exists()
    rig.shutdown()
