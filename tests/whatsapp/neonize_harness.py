"""Drive real neonize 0.5.2 objects offline: build its protobuf events, deliver them through the C
callback neonize's ``connect()`` hands to Go, and answer its FFI calls with a fake Go library.

Nothing here dials WhatsApp or loads a session: events enter at the callback seam, and calls
leave through ``client._NewClient__client`` (the ctypes handle neonize calls), replaced by
:class:`FakeGo`, so neonize's own message building, parsing and error mapping still run.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message as ProtoMessage
from neonize._binder import func_callback_bytes, func_string
from neonize.client import NewClient
from neonize.events import EVENT_TO_INT
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from zenthor.channels.whatsapp.transport import ConnectionEvent, IncomingMessage, TransportHandlers

OWN_PHONE = "15550000001"
OWN_LID = "900000000000001"
OWN_DEVICE = 7


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> npb.JID:
    """A neonize JID as Go's ``EncodeJidProto`` fills it."""
    return npb.JID(User=user, Server=server, RawAgent=0, Device=device, Integrator=0, IsEmpty=False)


def empty_jid() -> npb.JID:
    """whatsmeow's ``EmptyJID`` as Go encodes it (an unset SenderAlt)."""
    return npb.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)


def fill_required(msg: ProtoMessage) -> ProtoMessage:
    """Set every unset proto2 ``required`` field to its default, as Go's encoder always sets them."""
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is not None:
            if fd.is_repeated:
                for item in getattr(msg, fd.name):
                    fill_required(item)
            elif fd.is_required or msg.HasField(fd.name):
                sub = getattr(msg, fd.name)
                sub.SetInParent()
                fill_required(sub)
        elif fd.is_required and not msg.HasField(fd.name):
            setattr(msg, fd.name, fd.default_value)
    return msg


def message_event(
    msg_id: str = "3EB0AAA1",
    *,
    message: WAMessage | None = None,
    text: str | None = "hello",
    sender: npb.JID | None = None,
    chat: npb.JID | None = None,
    sender_alt: npb.JID | None = None,
    from_me: bool = False,
    group: bool = False,
    push_name: str = "Alice",
    timestamp: int = 1767225600123,
    is_edit: bool = False,
) -> npb.Message:
    """A ``MessageEv`` as neonize's ``EncodeEventTypesMessage`` builds it (Timestamp in ms)."""
    sender = sender if sender is not None else jid("15551234567", device=3)
    if message is None:
        message = WAMessage(conversation=text) if text is not None else WAMessage()
    return npb.Message(
        Info=npb.MessageInfo(
            MessageSource=npb.MessageSource(
                Chat=chat if chat is not None else jid(sender.User, sender.Server),
                Sender=sender,
                IsFromMe=from_me,
                IsGroup=group,
                SenderAlt=sender_alt if sender_alt is not None else empty_jid(),
                RecipientAlt=empty_jid(),
                BroadcastListOwner=empty_jid(),
            ),
            ID=msg_id,
            Type="text",
            Pushname=push_name,
            Timestamp=timestamp,
        ),
        Message=message,
        IsEdit=is_edit,
    )


def device_event(device: int = OWN_DEVICE) -> npb.Device:
    """The Device event Go sends first on every connection (``FetchMe``)."""
    return npb.Device(
        JID=jid(OWN_PHONE, device=device),
        LID=jid(OWN_LID, "lid", device=device),
        Platform="",
        BussinessName="",
        PushName="Zenthor",
        Initialized=True,
    )


class EventPipe:
    """Go's side of the callbacks: calls exactly what neonize's ``connect()`` passes to Go.

    Build it after ``register_handlers`` (as neonize builds its callbacks inside ``connect()``).
    """

    def __init__(self, client: NewClient) -> None:
        self.client = client
        self._event_cb = func_callback_bytes(client.event.execute)
        self._qr_cb = func_string(client._NewClient__onQr)
        self._status_cb = func_string(client._NewClient__onLoginStatus)

    def deliver(self, event: ProtoMessage, code: int | None = None) -> None:
        """Serialise ``event`` (required fields filled) and call the event callback with its code."""
        raw = fill_required(event).SerializeToString()
        self.deliver_raw(raw, EVENT_TO_INT[type(event)] if code is None else code)

    def deliver_partial(self, event: ProtoMessage) -> None:
        """Deliver ``event`` without filling its required fields (fields missing on the wire)."""
        self.deliver_raw(event.SerializePartialToString(), EVENT_TO_INT[type(event)])

    def deliver_raw(self, raw: bytes, code: int) -> None:
        """Call the event callback with raw bytes (Go passes NULL and 0 for an empty payload)."""
        if not raw:
            self._event_cb(self.client.uuid, None, 0, code)
            return
        buffer = ctypes.create_string_buffer(raw, len(raw))
        self._event_cb(self.client.uuid, ctypes.addressof(buffer), len(raw), code)

    def qr(self, code: bytes) -> None:
        """What Go's ``qrFuncCb`` does for each QR code: a C string through ``__onQr``."""
        text = ctypes.create_string_buffer(code)
        self._qr_cb(ctypes.cast(ctypes.c_char_p(self.client.uuid), ctypes.c_void_p), ctypes.addressof(text))

    def login_status(self, status: str) -> None:
        """What Go's ``logStatusCb`` does for a QR channel outcome (``timeout``, ``success`` …)."""
        text = ctypes.create_string_buffer(status.encode())
        self._status_cb(None, ctypes.addressof(text))


@dataclass
class Recorder:
    """The runtime's side: records what the transport hands over."""

    messages: list[IncomingMessage] = field(default_factory=list)
    connections: list[ConnectionEvent] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)
    connection_seen: threading.Event = field(default_factory=threading.Event)

    def handlers(self) -> TransportHandlers:
        """TransportHandlers writing into this recorder."""

        def on_connection(event: ConnectionEvent) -> None:
            self.connections.append(event)
            self.connection_seen.set()

        return TransportHandlers(
            on_message=self.messages.append,
            on_connection=on_connection,
            on_malformed=lambda what, why: self.malformed.append((what, why)),
        )

    def kinds(self) -> list[str]:
        """The kinds of the connection events so far."""
        return [event.kind for event in self.connections]


class FakeGo:
    """Stands in for the ctypes handle of ``neonize-linux-amd64.so`` (after neonize's errcheck
    hooks, which turn every reply into ``bytes``). Records each call with its decoded arguments.

    Only the exports the transport uses exist: any other call fails loudly with AttributeError.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.send_error = ""
        self.send_reply: Callable[[int], npb.SendResponse] = lambda n: npb.SendResponse(
            ID=f"3EB0FAKE{n:04d}", Timestamp=1767225601, ServerID=0
        )
        self.presence_error = ""
        self.read_error = ""
        self.pair_code = "ABCD-EFGH"
        self.pair_error = ""
        self.lid_map: dict[str, npb.JID] = {}  # "user@lid" -> phone JID
        self.pn_map: dict[str, npb.JID] = {}  # "user@s.whatsapp.net" -> LID
        self.lookup_error = ""
        self.me: npb.Device | None = device_event()

    def _record(self, *call: object) -> None:
        self.calls.append(call)

    def calls_to(self, name: str) -> list[tuple]:
        """The recorded calls of one export."""
        return [call for call in self.calls if call[0] == name]

    def SendMessage(self, uuid: bytes, to: bytes, to_len: int, message: bytes, message_len: int) -> bytes:
        to_jid, wa_message = npb.JID.FromString(to), WAMessage.FromString(message)
        self._record("SendMessage", uuid, to_jid, wa_message)
        if self.send_error:
            return npb.SendMessageReturnFunction(Error=self.send_error).SerializeToString()
        response = fill_required(self.send_reply(len(self.calls_to("SendMessage"))))
        return npb.SendMessageReturnFunction(SendResponse=response).SerializeToString()

    def SendChatPresence(self, uuid: bytes, chat: bytes, chat_len: int, state: int, media: int) -> bytes:
        self._record("SendChatPresence", uuid, npb.JID.FromString(chat), state, media)
        return self.presence_error.encode()

    def MarkRead(
        self,
        uuid: bytes,
        ids: bytes,
        timestamp: int,
        chat: bytes,
        chat_len: int,
        sender: bytes,
        sender_len: int,
        receipt: bytes,
    ) -> bytes:
        self._record(
            "MarkRead",
            uuid,
            ids.decode().split(" "),
            npb.JID.FromString(chat),
            npb.JID.FromString(sender),
            receipt,
        )
        return self.read_error.encode()

    def GetMe(self, uuid: bytes) -> bytes:
        self._record("GetMe", uuid)
        return fill_required(self.me).SerializeToString() if self.me is not None else b""

    def _jid_lookup(self, name: str, table: dict[str, npb.JID], uuid: bytes, raw: bytes) -> bytes:
        asked = npb.JID.FromString(raw)
        self._record(name, uuid, asked)
        if self.lookup_error:
            return npb.GetJIDFromStoreReturnFunction(Error=self.lookup_error).SerializeToString()
        found = table.get(f"{asked.User}@{asked.Server}", empty_jid())
        return npb.GetJIDFromStoreReturnFunction(Jid=fill_required(found)).SerializeToString()

    def GetPNFromLID(self, uuid: bytes, raw: bytes, size: int) -> bytes:
        return self._jid_lookup("GetPNFromLID", self.lid_map, uuid, raw)

    def GetLIDFromPN(self, uuid: bytes, raw: bytes, size: int) -> bytes:
        return self._jid_lookup("GetLIDFromPN", self.pn_map, uuid, raw)

    def PairPhone(self, uuid: bytes, payload: bytes, size: int) -> bytes:
        params = npb.PairPhoneParams.FromString(payload)
        self._record("PairPhone", uuid, params)
        if self.pair_error:
            return npb.PairPhoneReturnFunction(Error=self.pair_error).SerializeToString()
        return npb.PairPhoneReturnFunction(Code=self.pair_code).SerializeToString()

    def Stop(self, uuid: bytes) -> bytes:
        self._record("Stop", uuid)
        return b""


def install_fake_go(client: NewClient) -> FakeGo:
    """Replace the client's ctypes handle (name-mangled ``__client``) with a :class:`FakeGo`."""
    fake = FakeGo()
    client._NewClient__client = fake
    return fake
