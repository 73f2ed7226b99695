"""NeonizeTransport against real neonize 0.5.2 objects, offline.

Events are real neonize protobufs delivered through the C callback neonize's ``connect()`` hands to
Go; sends go through neonize's own ``send_message`` (and friends) down to a fake ctypes handle.
``connect()``'s blocking dial is replaced where a test needs it: the real one dials WhatsApp.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from neonize._binder import func_callback_bytes
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
    UndecryptableMessageEv,
)
from neonize.exc import NeonizeError
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    ImageMessage,
    ProtocolMessage,
    ReactionMessage,
    StickerMessage,
    VideoMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from tests.whatsapp.neonize_harness import (
    OWN_DEVICE,
    OWN_LID,
    OWN_PHONE,
    EventPipe,
    FakeGo,
    Recorder,
    device_event,
    install_fake_go,
    jid,
    message_event,
)
from zenthor.channels.whatsapp.neonize_events import (
    STATUS_BROADCAST,
    datetime_from_millis,
    is_status_broadcast,
    parse_jid,
)
from zenthor.channels.whatsapp.neonize_transport import (
    NeonizeTransport,
    classify_send_error,
    find_stored_device,
    libpq_kwargs_from_pq_url,
)
from zenthor.channels.whatsapp.transport import (
    ConnectFailed,
    NotOnWhatsApp,
    TransportError,
    TransportHandlers,
)

OWN_DEVICE_JID = f"{OWN_PHONE}:{OWN_DEVICE}@s.whatsapp.net"
ALICE = "15551234567@s.whatsapp.net"
GROUP = "120363000000000001@g.us"


@contextmanager
def unraisable() -> Iterator[list]:
    """Collect what would reach ctypes' "Exception ignored on calling ctypes callback" print."""
    seen: list = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


class Rig:
    """A transport whose handlers are registered, with Go's callbacks and a fake Go library."""

    def __init__(
        self, tmp_path, *, device_jid: str | None = None, uuid: str = "acct-1-test", **kwargs
    ) -> None:
        self.transport = NeonizeTransport(
            "acct-1", str(tmp_path / "store.sqlite3"), device_jid, uuid, **kwargs
        )
        self.recorder = Recorder()
        self.go: FakeGo = install_fake_go(self.transport.neonize_client)
        self.transport.register_handlers(self.recorder.handlers())
        self.pipe = EventPipe(self.transport.neonize_client)

    def start(self) -> Rig:
        """What Go does first on every connection: send the Device event (opens the FFI gate)."""
        self.pipe.deliver(device_event())
        return self

    def deliver(self, event) -> None:
        with unraisable() as seen:
            self.pipe.deliver(event)
        assert seen == [], [str(u.exc_value) for u in seen]

    def one_message(self, event):
        self.deliver(event)
        assert self.recorder.malformed == []
        assert len(self.recorder.messages) == 1
        return self.recorder.messages[0]

    def one_connection(self, event):
        self.deliver(event)
        assert self.recorder.malformed == []
        assert len(self.recorder.connections) == 1, self.recorder.kinds()
        return self.recorder.connections[0]


@pytest.fixture
def rig(tmp_path) -> Rig:
    return Rig(tmp_path)


@pytest.fixture
def started(tmp_path) -> Rig:
    return Rig(tmp_path).start()


# ---- inbound messages -----------------------------------------------------------------------------


def test_plain_text_message(rig):
    msg = rig.one_message(message_event("3EB0AAA1", text="hello"))
    assert msg.message_id == "3EB0AAA1"
    assert msg.chat == ALICE and msg.sender == ALICE  # device 3 of the sender is dropped
    assert (msg.text, msg.kind) == ("hello", "text")
    assert msg.push_name == "Alice"
    assert not msg.from_me and not msg.is_group
    assert msg.sender_alt is None and msg.mentions == ()


def test_timestamp_is_milliseconds(rig):
    msg = rig.one_message(message_event(timestamp=1767225600123))
    assert msg.sent_at == datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert msg.sent_at.tzinfo is UTC


def test_timestamp_in_seconds_is_tolerated_and_zero_falls_back_to_arrival():
    assert datetime_from_millis(1767225600) == datetime(2026, 1, 1, tzinfo=UTC)
    assert datetime_from_millis(0) is None


def test_message_without_timestamp_is_delivered_with_its_arrival_time(rig):
    before = datetime.now(UTC)
    msg = rig.one_message(message_event(timestamp=0))
    assert before <= msg.sent_at <= datetime.now(UTC)


def test_extended_text_in_group_with_mentions_of_our_lid(rig):
    extended = ExtendedTextMessage(
        text=f"@{OWN_LID} what time is it?",
        contextInfo=ContextInfo(mentionedJID=[f"{OWN_LID}@lid", "15557654321:2@s.whatsapp.net"]),
    )
    event = message_event(
        "3EB0GRP1",
        message=WAMessage(extendedTextMessage=extended),
        sender=jid("200000000000002", "lid", device=1),
        chat=jid("120363000000000001", "g.us"),
        group=True,
    )
    msg = rig.one_message(event)
    assert msg.is_group and msg.chat == GROUP and msg.sender == "200000000000002@lid"
    assert (msg.text, msg.kind) == (f"@{OWN_LID} what time is it?", "text")
    assert msg.mentions == (f"{OWN_LID}@lid", "15557654321@s.whatsapp.net")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (WAMessage(imageMessage=ImageMessage(caption="look", mimetype="image/jpeg")), "image"),
        (WAMessage(videoMessage=VideoMessage(caption="look", mimetype="video/mp4")), "video"),
        (WAMessage(documentMessage=DocumentMessage(caption="look", fileName="a.pdf")), "document"),
    ],
)
def test_media_caption_is_the_text(rig, message, kind):
    msg = rig.one_message(message_event(message=message))
    assert (msg.text, msg.kind) == ("look", kind)


def test_caption_mentions_are_read_from_the_media_context_info(rig):
    image = ImageMessage(caption="hi", contextInfo=ContextInfo(mentionedJID=[f"{OWN_PHONE}@s.whatsapp.net"]))
    msg = rig.one_message(message_event(message=WAMessage(imageMessage=image)))
    assert msg.mentions == (f"{OWN_PHONE}@s.whatsapp.net",)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (WAMessage(imageMessage=ImageMessage(mimetype="image/jpeg")), "image"),
        (WAMessage(videoMessage=VideoMessage(mimetype="video/mp4")), "video"),
        (WAMessage(audioMessage=AudioMessage(mimetype="audio/ogg", PTT=True)), "audio"),
        (WAMessage(documentMessage=DocumentMessage(fileName="a.pdf")), "document"),
        (WAMessage(stickerMessage=StickerMessage(mimetype="image/webp")), "sticker"),
    ],
)
def test_media_without_caption_has_no_text(rig, message, kind):
    msg = rig.one_message(message_event(message=message))
    assert (msg.text, msg.kind) == (None, kind)


def test_reaction_has_no_text(rig):
    reaction = ReactionMessage(text="👍", senderTimestampMS=1767225600000)
    msg = rig.one_message(message_event(message=WAMessage(reactionMessage=reaction)))
    assert (msg.text, msg.kind) == (None, "reaction")


def test_protocol_message_and_edit_are_other_without_text(rig):
    revoke = WAMessage(protocolMessage=ProtocolMessage(type=ProtocolMessage.REVOKE))
    rig.deliver(message_event("3EB0REV1", message=revoke))
    rig.deliver(message_event("3EB0EDT1", text="edited text", is_edit=True))
    assert [(m.message_id, m.kind, m.text) for m in rig.recorder.messages] == [
        ("3EB0REV1", "other", None),
        ("3EB0EDT1", "other", None),
    ]


def test_lid_sender_with_sender_alt(rig):
    event = message_event(
        sender=jid("200000000000002", "lid", device=4), sender_alt=jid("15551234567", device=4)
    )
    msg = rig.one_message(event)
    assert (msg.sender, msg.chat) == ("200000000000002@lid", "200000000000002@lid")
    assert msg.sender_alt == ALICE


def test_lid_sender_without_sender_alt(rig):
    msg = rig.one_message(message_event(sender=jid("200000000000002", "lid")))
    assert msg.sender == "200000000000002@lid" and msg.sender_alt is None


def test_from_me(rig):
    event = message_event(sender=jid(OWN_PHONE, device=0), chat=jid("15551234567"), from_me=True)
    msg = rig.one_message(event)
    assert msg.from_me and msg.sender == f"{OWN_PHONE}@s.whatsapp.net" and msg.chat == ALICE


def test_status_broadcast_keeps_its_chat(rig):
    msg = rig.one_message(message_event(chat=jid("status", "broadcast"), text="my story"))
    assert msg.chat == STATUS_BROADCAST and is_status_broadcast(msg.chat)


# ---- lifecycle events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (DisconnectedEv(status=True), {"kind": "disconnected"}),
        (KeepAliveTimeoutEv(ErrorCount=2, LastSuccess=1767225600), {"kind": "keepalive_timeout", "code": 2}),
        (KeepAliveRestoredEv(), {"kind": "keepalive_restored"}),
        (StreamReplacedEv(), {"kind": "stream_replaced"}),
        (
            LoggedOutEv(OnConnect=True, Reason=npb.LOGGED_OUT),
            {"kind": "logged_out", "code": 401, "reason": "LOGGED_OUT", "on_connect": True},
        ),
        (
            LoggedOutEv(OnConnect=False, Reason=npb.MAIN_DEVICE_GONE),
            {"kind": "logged_out", "code": 403, "reason": "MAIN_DEVICE_GONE", "on_connect": False},
        ),
        (ClientOutdatedEv(), {"kind": "client_outdated", "code": 405}),
        (
            ConnectFailureEv(Reason=npb.BAD_USER_AGENT, Message="bad agent"),
            {"kind": "connect_failure", "code": 409, "reason": "BAD_USER_AGENT: bad agent"},
        ),
        (StreamErrorEv(Code="515"), {"kind": "stream_error", "code": 515, "reason": "515"}),
        (StreamErrorEv(Code="conflict"), {"kind": "stream_error", "code": None, "reason": "conflict"}),
        (
            PairStatusEv(ID=jid(OWN_PHONE, device=OWN_DEVICE), Status=npb.PairStatus.SUCCESS),
            {"kind": "pair_success", "jid": OWN_DEVICE_JID},
        ),
        (
            PairStatusEv(ID=jid(""), Status=npb.PairStatus.ERROR, Error="pair rejected"),
            {"kind": "pair_error", "reason": "pair rejected"},
        ),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, dict) else value["kind"],
)
def test_lifecycle_events(rig, event, expected):
    got = rig.one_connection(event)
    for name, value in expected.items():
        assert getattr(got, name) == value, name


def test_stream_error_515_is_not_a_logout(rig):
    got = rig.one_connection(StreamErrorEv(Code="515"))
    assert (got.kind, got.code) == ("stream_error", 515)
    assert "logged_out" not in rig.recorder.kinds()


def test_connected_carries_the_full_device_jid(started):
    got = started.one_connection(ConnectedEv(status=True))
    assert (got.kind, got.jid) == ("connected", OWN_DEVICE_JID)


def test_temporary_ban_expiry_is_a_duration_from_now(rig):
    before = datetime.now(UTC)
    got = rig.one_connection(TemporaryBanEv(Code=npb.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=3600))
    after = datetime.now(UTC)
    assert (got.kind, got.code, got.reason) == ("temporary_ban", 101, "SEND_TO_TOO_MANY_PEOPLE")
    assert before + timedelta(hours=1) <= got.expires_at <= after + timedelta(hours=1)


def test_temporary_ban_without_expiry(rig):
    got = rig.one_connection(TemporaryBanEv(Code=npb.TemporaryBan.BROADCAST_LIST, Expire=0))
    assert (got.code, got.expires_at) == (106, None)


def test_qr_code_and_qr_channel_outcome(rig):
    rig.pipe.qr(b"2@abc,def,ghi")
    rig.pipe.login_status("success")  # PairStatus brings pair_success; nothing here
    rig.pipe.login_status("timeout")
    assert [(e.kind, e.reason) for e in rig.recorder.connections] == [
        ("qr", "2@abc,def,ghi"),
        ("pair_error", "qr pairing ended: timeout"),
    ]


def test_a_second_registration_replaces_the_handlers(rig):
    second = Recorder()
    rig.transport.register_handlers(second.handlers())
    rig.pipe.deliver(message_event())
    assert rig.recorder.messages == [] and len(second.messages) == 1


# ---- malformed and unknown events ---------------------------------------------------------------------


def test_garbage_message_bytes_are_reported(rig):
    with unraisable() as seen:
        rig.pipe.deliver_raw(b"\xff\xff garbage \xff", 17)
    assert seen == [] and rig.recorder.messages == []
    [(what, why)] = rig.recorder.malformed
    assert what == "Message event" and "does not parse" in why


def test_garbage_logout_is_reported_and_still_ends_the_session(rig):
    with unraisable() as seen:
        rig.pipe.deliver_raw(b"\xff\xff garbage \xff", 6)
    assert seen == []
    assert rig.recorder.malformed[0][0] == "LoggedOut event"
    assert rig.recorder.kinds() == ["logged_out"]


@pytest.mark.parametrize(
    "event",
    [
        message_event("", text="no id"),
        npb.Message(Info=npb.MessageInfo(ID="3EB0NOSRC", Timestamp=1767225600000)),
    ],
    ids=["no-id", "no-chat-no-sender"],
)
def test_message_missing_fields_is_reported(rig, event):
    with unraisable() as seen:
        rig.pipe.deliver_partial(event)
    assert seen == [] and rig.recorder.messages == []
    assert len(rig.recorder.malformed) == 1


def test_pair_status_without_status_is_reported(rig):
    with unraisable() as seen:
        rig.pipe.deliver_partial(PairStatusEv(ID=jid(OWN_PHONE, device=OWN_DEVICE)))
    assert seen == [] and rig.recorder.connections == []
    assert rig.recorder.malformed[0][0] == "PairStatus event"


def test_undecryptable_message_is_reported(rig):
    info = message_event("3EB0UNDEC").Info
    rig.deliver(UndecryptableMessageEv(Info=info, IsUnavailable=False))
    [(what, why)] = rig.recorder.malformed
    assert "3EB0UNDEC" in what and ALICE in what and "decrypt" in why


@pytest.mark.parametrize("code", [14, 29, 99])
def test_unknown_event_code_is_reported(rig, code):
    with unraisable() as seen:
        rig.pipe.deliver_raw(b"\x08\x01", code)
    assert seen == []
    assert rig.recorder.malformed == [(f"event code {code}", "not an event code of neonize 0.5.2")]


def test_neonize_alone_drops_an_unknown_code_into_ctypes(rig):
    """Why the adapter wraps ``execute``: neonize raises UnsupportedEvent into ctypes, which prints it."""
    raw_callback = func_callback_bytes(rig.transport._neonize_execute)
    with unraisable() as seen:
        raw_callback(rig.transport.neonize_client.uuid, None, 0, 29)
    assert [type(u.exc_value).__name__ for u in seen] == ["UnsupportedEvent"]


def test_a_failing_runtime_handler_never_reaches_go(tmp_path):
    rig = Rig(tmp_path)
    calls: list[str] = []

    def explode(message) -> None:
        calls.append(message.message_id)
        raise RuntimeError("database down")

    rig.transport.register_handlers(
        TransportHandlers(on_message=explode, on_connection=rig.recorder.connections.append)
    )
    rig.deliver(message_event("3EB0ONE1"))
    rig.deliver(message_event("3EB0TWO2"))
    assert calls == ["3EB0ONE1", "3EB0TWO2"]


# ---- sending ------------------------------------------------------------------------------------------


def test_send_text_returns_neonizes_id_and_timestamp(started):
    result = started.transport.send_text(ALICE, "pong")
    assert result.message_id == "3EB0FAKE0001"
    assert result.timestamp == datetime.fromtimestamp(1767225601, tz=UTC)
    [(_, uuid, to, message)] = started.go.calls_to("SendMessage")
    assert uuid == b"acct-1-test"
    assert (to.User, to.Server, to.Device) == ("15551234567", "s.whatsapp.net", 0)
    assert message.conversation == "pong" and not message.HasField("extendedTextMessage")


@pytest.mark.parametrize("to", [GROUP, "200000000000002@lid"])
def test_send_text_to_group_and_lid(started, to):
    started.transport.send_text(to, "hi")
    [(_, _, sent_to, _)] = started.go.calls_to("SendMessage")
    assert f"{sent_to.User}@{sent_to.Server}" == to


def test_text_with_at_digits_is_not_turned_into_mentions(started):
    started.transport.send_text(GROUP, "ping @15551234567 and @120363000000000009@g.us")
    [(_, _, _, message)] = started.go.calls_to("SendMessage")
    assert message.conversation.startswith("ping @15551234567")  # no group lookup, no mention list


@pytest.mark.parametrize(
    ("error", "not_on_whatsapp"),
    [
        ("no LID found for 15559999999@s.whatsapp.net from server", True),
        ("message recipient must be a user JID with no device part", True),
        ("can't send message to unknown server example.com", True),
        ("failed to get group members: you're not participating in that group", True),
        ("failed to get group members: that group does not exist", True),
        ("sending to non-status broadcast lists is not yet supported", True),
        ("client is nil", False),
        ("websocket not connected", False),
        ("server returned error 463", False),
        ("server returned error 403", False),
        (
            "failed to get user info for 1555@s.whatsapp.net: info query returned status 401: not-authorized",
            False,
        ),
        ("timed out waiting for message send response", False),
    ],
)
def test_send_error_mapping(started, error, not_on_whatsapp):
    started.go.send_error = error
    with pytest.raises(TransportError) as raised:
        started.transport.send_text(ALICE, "x")
    assert isinstance(raised.value, NotOnWhatsApp) is not_on_whatsapp
    assert raised.value.retryable is not not_on_whatsapp
    assert str(raised.value) == error
    assert classify_send_error(error).retryable is not not_on_whatsapp


def test_invalid_recipient_never_reaches_go(started):
    with pytest.raises(NotOnWhatsApp):
        started.transport.send_text("not a jid", "x")
    assert started.go.calls_to("SendMessage") == []


def test_send_before_go_answers_is_retryable_and_touches_no_ffi(rig):
    with pytest.raises(TransportError) as raised:
        rig.transport.send_text(ALICE, "x")
    assert raised.value.retryable and not isinstance(raised.value, NotOnWhatsApp)
    assert rig.go.calls == []


def test_stop_fences_sends_and_runs_once(started):
    started.transport.stop()
    started.transport.stop()
    with pytest.raises(TransportError) as raised:
        started.transport.send_text(ALICE, "x")
    assert raised.value.retryable
    assert [call[0] for call in started.go.calls] == ["Stop"]
    started.pipe.deliver(device_event())  # a late callback does not reopen the gate
    with pytest.raises(TransportError):
        started.transport.send_text(ALICE, "x")


def test_mark_read_reaches_ffi(started):
    started.transport.mark_read(GROUP, "200000000000002@lid", ["3EB0A", "3EB0B"])
    [(_, uuid, ids, chat, sender, receipt)] = started.go.calls_to("MarkRead")
    assert uuid == b"acct-1-test" and ids == ["3EB0A", "3EB0B"]
    assert (chat.User, chat.Server) == ("120363000000000001", "g.us")
    assert (sender.User, sender.Server) == ("200000000000002", "lid")
    assert receipt == b"read"


def test_mark_read_of_nothing_sends_nothing(started):
    started.transport.mark_read(ALICE, ALICE, [])
    assert started.go.calls_to("MarkRead") == []


def test_mark_read_error_is_retryable(started):
    started.go.read_error = "websocket not connected"
    with pytest.raises(TransportError) as raised:
        started.transport.mark_read(ALICE, ALICE, ["3EB0A"])
    assert raised.value.retryable and "websocket not connected" in str(raised.value)


def test_set_typing_reaches_ffi(started):
    started.transport.set_typing(ALICE, True)
    started.transport.set_typing(ALICE, False)
    calls = started.go.calls_to("SendChatPresence")
    assert [(c[2].User, c[3], c[4]) for c in calls] == [("15551234567", 0, 0), ("15551234567", 1, 0)]


def test_set_typing_error_is_retryable(started):
    started.go.presence_error = "can't send presence without PushName set"
    with pytest.raises(TransportError) as raised:
        started.transport.set_typing(ALICE, True)
    assert raised.value.retryable


# ---- identity -----------------------------------------------------------------------------------------


def test_own_jids_from_get_me(started):
    assert started.transport.own_jids() == (f"{OWN_PHONE}@s.whatsapp.net", f"{OWN_LID}@lid")
    assert started.go.calls_to("GetMe")


def test_own_jids_before_go_answers_touch_no_ffi(rig):
    assert rig.transport.own_jids() == ()
    assert rig.go.calls == []


def test_own_jids_after_stop_use_the_first_device_event(started):
    started.transport.stop()
    assert started.transport.own_jids() == (f"{OWN_PHONE}@s.whatsapp.net", f"{OWN_LID}@lid")
    assert started.go.calls_to("GetMe") == []


def test_lid_map_lookups(started):
    started.go.lid_map["200000000000002@lid"] = jid("15551234567")
    started.go.pn_map[ALICE] = jid("200000000000002", "lid")
    assert started.transport.phone_for_lid("200000000000002@lid") == ALICE
    assert started.transport.phone_for_lid("200000000000002:5@lid") == ALICE  # asked without the device
    assert started.go.calls_to("GetPNFromLID")[-1][2].Device == 0
    assert started.transport.lid_for_phone(ALICE) == "200000000000002@lid"
    assert started.transport.phone_for_lid("299999999999999@lid") is None  # unknown: empty JID
    assert started.transport.phone_for_lid(ALICE) is None  # not a LID: no FFI call
    assert started.transport.lid_for_phone("nonsense") is None
    assert len(started.go.calls_to("GetPNFromLID")) == 3 and len(started.go.calls_to("GetLIDFromPN")) == 1


def test_lid_map_errors_and_closed_gate_give_none(rig):
    assert rig.transport.phone_for_lid("200000000000002@lid") is None  # Go would SIGSEGV here
    assert rig.go.calls == []
    rig.start()
    rig.go.lookup_error = "sql: database is closed"
    assert rig.transport.phone_for_lid("200000000000002@lid") is None


def test_pair_phone(started):
    assert started.transport.pair_phone("+1 555 000 0001") == "ABCD-EFGH"
    [(_, _, params)] = started.go.calls_to("PairPhone")
    assert params.phone == "15550000001" and params.showPushNotification


def test_pair_phone_bad_number_is_not_retryable(started):
    started.go.pair_error = "phone number too short"
    with pytest.raises(TransportError) as raised:
        started.transport.pair_phone("12345")
    assert not raised.value.retryable


def test_pair_phone_before_the_socket_is_retryable(tmp_path):
    rig = Rig(tmp_path, pair_wait=0.0)
    with pytest.raises(TransportError) as raised:
        rig.transport.pair_phone("15550000001")
    assert raised.value.retryable and rig.go.calls == []


def test_pair_phone_waits_for_the_first_qr_code(tmp_path):
    rig = Rig(tmp_path, pair_wait=30.0)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(rig.transport.pair_phone("15550000001")))
    worker.start()
    rig.pipe.qr(b"2@first")  # Go is up: the gate opens and pair_phone proceeds
    worker.join(timeout=30)
    assert result == ["ABCD-EFGH"]


# ---- connect, the session store and the Go-side key ---------------------------------------------------


def make_store(path, *jids: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO whatsmeow_device VALUES (?)", [(j,) for j in jids])
    db.close()


def test_client_is_keyed_on_our_uuid_and_opens_the_given_device(tmp_path):
    transport = NeonizeTransport("acct-1", str(tmp_path / "s.sqlite3"), OWN_DEVICE_JID, "acct-1-pid-t3")
    client = transport.neonize_client
    assert client.uuid == b"acct-1-pid-t3"  # NewClient alone would use the JID's user
    assert (client.jid.User, client.jid.Device, client.jid.Server) == (
        OWN_PHONE,
        OWN_DEVICE,
        "s.whatsapp.net",
    )
    assert client.new_device is False
    assert NeonizeTransport("acct-1", str(tmp_path / "s.sqlite3"), None, "u2").neonize_client.new_device


def test_store_lookup(tmp_path):
    store = tmp_path / "store.sqlite3"
    assert find_stored_device(str(store), OWN_DEVICE_JID) is None
    assert not store.exists()  # looking never creates the store
    make_store(store, OWN_DEVICE_JID, "15557777777:3@s.whatsapp.net")
    assert find_stored_device(str(store), OWN_DEVICE_JID) == OWN_DEVICE_JID
    assert find_stored_device(str(store), f"{OWN_PHONE}@s.whatsapp.net") == OWN_DEVICE_JID
    assert find_stored_device(str(store), f"{OWN_PHONE}:9@s.whatsapp.net") is None


def test_connect_refuses_a_device_missing_from_the_store(tmp_path):
    rig = Rig(tmp_path, device_jid=OWN_DEVICE_JID)
    dialed: list[object] = []
    rig.transport.neonize_client.connect = dialed.append
    with pytest.raises(ConnectFailed) as raised:
        rig.transport.connect(rig.recorder.handlers())
    assert not raised.value.retryable and "pair again" in str(raised.value)
    assert dialed == []  # whatsmeow.NewClient(nil) would have aborted the process
    assert not rig.transport.has_session()


def test_connect_resolves_a_bare_jid_to_the_stored_device(tmp_path):
    make_store(tmp_path / "store.sqlite3", OWN_DEVICE_JID)
    rig = Rig(tmp_path, device_jid=f"{OWN_PHONE}@s.whatsapp.net", first_dial_grace=30.0)
    rig.transport.neonize_client.connect = fake_dial(rig)
    rig.transport.connect(rig.recorder.handlers())
    assert rig.transport.device_jid == OWN_DEVICE_JID
    assert rig.transport.neonize_client.jid.Device == OWN_DEVICE
    rig.transport.stop()


def test_first_dial_failure_is_connect_failed(tmp_path):
    rig = Rig(tmp_path, first_dial_grace=30.0)

    def refuse(_proxy) -> None:
        raise NeonizeError("failed to upgrade database: dial tcp 127.0.0.1:1: connect: connection refused")

    rig.transport.neonize_client.connect = refuse
    with pytest.raises(ConnectFailed) as raised:
        rig.transport.connect(rig.recorder.handlers())
    assert raised.value.retryable and "connection refused" in str(raised.value)
    rig.transport.stop()  # safe after a failed dial
    assert rig.recorder.connections == []


def fake_dial(rig: Rig, *, then: threading.Event | None = None, error: str | None = None):
    """Stands in for neonize's blocking connect(): Go's first callback, then block until stop()."""
    stopped = threading.Event()
    original_stop = rig.go.Stop

    def stop(uuid: bytes) -> bytes:
        stopped.set()
        return original_stop(uuid)

    rig.go.Stop = stop

    def dial(_proxy) -> None:
        # neonize's connect() hands Go func_callback_bytes(client.event.execute): so does this.
        EventPipe(rig.transport.neonize_client).deliver(device_event())
        if then is not None:
            then.wait(30)
            raise NeonizeError(error or "")
        stopped.wait(30)

    return dial


def test_connect_returns_when_go_answers_and_stop_ends_it(tmp_path):
    rig = Rig(tmp_path, first_dial_grace=30.0)
    rig.transport.neonize_client.connect = fake_dial(rig)
    rig.transport.connect(rig.recorder.handlers())
    assert rig.transport.send_text(ALICE, "up").message_id == "3EB0FAKE0001"
    rig.transport.stop()
    rig.transport._dial_thread.join(30)
    assert not rig.transport._dial_thread.is_alive()
    assert rig.recorder.connections == []  # a stop is not a failure


def test_connect_returns_after_the_grace_while_the_dial_is_pending(tmp_path):
    rig = Rig(tmp_path, first_dial_grace=0.01)
    release = threading.Event()
    rig.transport.neonize_client.connect = lambda _proxy: release.wait(30)
    rig.transport.connect(rig.recorder.handlers())
    with pytest.raises(TransportError):
        rig.transport.send_text(ALICE, "x")  # Go has not answered yet
    rig.transport.stop()
    release.set()


def test_event_loop_ending_later_is_a_connect_failure(tmp_path):
    rig = Rig(tmp_path, first_dial_grace=30.0)
    end_loop = threading.Event()
    rig.transport.neonize_client.connect = fake_dial(
        rig, then=end_loop, error="proto: required field neonize.ConnectFailure.Reason not set"
    )
    rig.transport.connect(rig.recorder.handlers())
    end_loop.set()
    assert rig.recorder.connection_seen.wait(30)
    [event] = rig.recorder.connections
    assert (event.kind, event.code) == ("connect_failure", None) and "required field" in event.reason
    assert rig.recorder.malformed[0][0] == "neonize event loop"
    rig.transport.stop()


def test_connect_is_once_per_transport(tmp_path):
    rig = Rig(tmp_path, first_dial_grace=30.0)
    rig.transport.neonize_client.connect = fake_dial(rig)
    rig.transport.connect(rig.recorder.handlers())
    with pytest.raises(ConnectFailed):
        rig.transport.connect(rig.recorder.handlers())
    rig.transport.stop()


# ---- pure helpers -------------------------------------------------------------------------------------


def test_parse_jid_forms():
    device = parse_jid("15551234567.0:12@s.whatsapp.net")
    assert (device.User, device.RawAgent, device.Device, device.Server) == (
        "15551234567",
        0,
        12,
        "s.whatsapp.net",
    )
    assert parse_jid("status@broadcast").Server == "broadcast"
    for bad in ("", "nobody", "@s.whatsapp.net", "a@", "a:x@s.whatsapp.net", "a@b@c"):
        with pytest.raises(ValueError):
            parse_jid(bad)


def test_libpq_kwargs_from_pq_url_moves_settings_into_options():
    kwargs = libpq_kwargs_from_pq_url(
        "postgres://wa:s%40cret@db.internal:5433/zenthor?sslmode=disable&search_path=whatsmeow_acct_1"
    )
    assert kwargs["dsn"] == "postgres://wa:s%40cret@db.internal:5433/zenthor?sslmode=disable"
    assert kwargs["options"] == "-c search_path=whatsmeow_acct_1"
    assert kwargs["connect_timeout"] == "5"


def test_event_types_cover_every_lifecycle_kind_of_the_transport():
    from zenthor.channels.whatsapp.neonize_events import LIFECYCLE_KINDS

    assert set(LIFECYCLE_KINDS) == {
        ConnectedEv,
        DisconnectedEv,
        KeepAliveTimeoutEv,
        KeepAliveRestoredEv,
        StreamReplacedEv,
        LoggedOutEv,
        TemporaryBanEv,
        ClientOutdatedEv,
        ConnectFailureEv,
        StreamErrorEv,
        PairStatusEv,
    }
    assert MessageEv not in LIFECYCLE_KINDS
