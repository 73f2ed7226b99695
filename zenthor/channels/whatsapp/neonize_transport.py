"""The neonize adapter: :class:`NeonizeTransport`, one account's WhatsApp connection over neonize 0.5.2.

How it sits on neonize (each point checked offline against the installed wheel and its bundled Go
library, ``neonize-linux-amd64.so``):

- **Events.** One handler per event type is registered on the real ``NewClient`` before
  ``connect()`` (neonize subscribes Go to exactly the registered codes). The C callback neonize hands
  to Go, ``func_callback_bytes(client.event.execute)``, is built from our wrapper around neonize's
  own ``execute``: an unknown code or an unparseable payload is reported through ``on_malformed``
  instead of dying in ctypes' "exception ignored" print (what neonize's ``UnsupportedEvent`` does).
- **The FFI gate.** Go keeps clients in an unlocked map. ``GetMe``, ``GetPNFromLID`` and
  ``GetLIDFromPN`` dereference a missing entry and kill the process (SIGSEGV, seen before
  ``connect()``), and ``Neonize()`` / ``Stop()`` write that map while other calls read it. So no FFI
  call runs before Go has shown the client exists (its first callback) or once :meth:`stop` began.
- **The device guard.** neonize hands the device JID to whatsmeow's ``GetDevice``; a device missing
  from the store comes back nil and ``whatsmeow.NewClient(nil)`` panics: the process aborts. So
  :meth:`connect` checks the store first (:func:`find_stored_device`).
- **The Go-side key.** ``NewClient`` ignores ``uuid`` when given a ``jid`` (it uses ``jid.User``), so
  two terms of one account in one process would share a key and one's ``stop()`` would cancel the
  other's client. The client is keyed on our ``client_uuid`` and the device JID is set afterwards.
"""

from __future__ import annotations

import ctypes
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from neonize._binder import ProxySettings
from neonize.client import NewClient
from neonize.events import INT_TO_EVENT, MessageEv, UndecryptableMessageEv
from neonize.exc import NeonizeError
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
from neonize.utils.enum import ChatPresence, ChatPresenceMedia, ReceiptType

from .neonize_events import (
    LIFECYCLE_EVENT_TYPES,
    bare_from_string,
    bare_jid_of,
    connection_event_from,
    datetime_from_seconds,
    device_jid_of,
    event_name,
    fallback_connection_event,
    incoming_message_from,
    jid_is_empty,
    login_status_event,
    parse_jid,
    qr_event,
    undecryptable_summary,
)
from .transport import (
    ConnectFailed,
    ConnectionEvent,
    NotOnWhatsApp,
    SendResult,
    Transport,
    TransportError,
    TransportHandlers,
)

log = logging.getLogger(__name__)

DEFAULT_FIRST_DIAL_GRACE = 1.0  # seconds connect() waits for a dial that fails at once (bad store, refused)
DEFAULT_STOP_DRAIN_TIMEOUT = 10.0  # seconds stop() waits for FFI calls in flight before neonize's stop()
DEFAULT_PAIR_WAIT = 30.0  # seconds pair_phone() waits for the socket (the first QR code) before giving up

# whatsmeow error texts (errors.go, send.go, group.go of the bundled whatsmeow; all present in the .so)
# after which another try cannot help: the recipient has no account, or the chat does not take us.
NOT_ON_WHATSAPP_MARKERS: tuple[str, ...] = (
    "no lid found for",  # usync knows no account for the phone number (send.go)
    "message recipient must be a user jid with no device part",  # ErrRecipientADJID
    "can't send message to unknown server",  # ErrUnknownServer
    "sending to non-status broadcast lists is not yet supported",  # ErrBroadcastListUnsupported
    "you're not participating in that group",  # ErrNotInGroup (403 on the group's info)
    "that group does not exist",  # ErrGroupNotFound (404 on the group's info)
)
# PairPhone's own refusals of the number (pair-code.go); everything else may pass on a retry.
BAD_PHONE_MARKERS: tuple[str, ...] = (
    "phone number too short",
    "international phone number required",
)


def classify_send_error(message: str) -> TransportError:
    """The transport error for a neonize/whatsmeow send failure text.

    :class:`NotOnWhatsApp` for the texts in :data:`NOT_ON_WHATSAPP_MARKERS`; anything else (``client is
    nil``, ``websocket not connected``, ``server returned error 463``, timeouts…) is retryable.
    whatsmeow has no "blocked" error, and its ``not-authorized`` is about our session (a logout event
    follows), so neither is a reason to give up on the message.
    """
    lowered = message.lower()
    if any(marker in lowered for marker in NOT_ON_WHATSAPP_MARKERS):
        return NotOnWhatsApp(message)
    return TransportError(message, retryable=True)


# ---- the session store ------------------------------------------------------------------------

# libpq's connection keywords (a lib/pq URL may carry others, which lib/pq sends as settings).
_LIBPQ_KEYWORDS = frozenset(
    "host hostaddr port dbname user password passfile require_auth channel_binding connect_timeout "
    "client_encoding options application_name fallback_application_name keepalives keepalives_idle "
    "keepalives_interval keepalives_count tcp_user_timeout replication gssencmode sslmode requiressl "
    "sslnegotiation sslcompression sslcert sslkey sslpassword sslcertmode sslrootcert sslcrl sslcrldir "
    "sslsni requirepeer ssl_min_protocol_version ssl_max_protocol_version krbsrvname gsslib "
    "gssdelegation service target_session_attrs load_balance_hosts".split()
)
_LIB_PQ_ONLY = frozenset({"sslinline", "binary_parameters", "disable_prepared_binary_result"})


def libpq_kwargs_from_pq_url(url: str) -> dict[str, str]:
    """psycopg2 ``connect()`` keywords for a lib/pq URL (the store name whatsmeow is given).

    lib/pq sends unknown URL parameters (``search_path=…``) as run-time settings, which libpq refuses
    in a URL: they move to ``options`` as ``-c name=value``.
    """
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    settings: list[str] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _LIB_PQ_ONLY:
            continue
        if key in _LIBPQ_KEYWORDS:
            kept.append((key, value))
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            settings.append(f"-c {key}={escaped}")
    kwargs = {"dsn": urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), ""))}
    if settings:
        kwargs["options"] = " ".join(settings)
    if "connect_timeout" not in dict(kept):
        kwargs["connect_timeout"] = "5"  # a check, not a session: do not hang on a dead server
    return kwargs


def find_stored_device(store: str, device_jid: str) -> str | None:
    """The device JID whatsmeow's store (SQLite path or lib/pq URL, as neonize takes it) holds for
    ``device_jid``, or None.

    An exact match on the full device JID (``user:device@server``) first; a JID without a device
    part matches the store's only device of that user (a bare JID saved by mistake still resumes
    the right session, never "the first device"). Raises :class:`TransportError` (retryable) when
    the store cannot be read; a store without whatsmeow's tables holds no device.
    """
    wanted = parse_jid(device_jid)
    key = device_jid_of(wanted)
    stored = (
        _stored_devices_postgres(store) if store.startswith("postgres") else _stored_devices_sqlite(store)
    )
    if key in stored:
        return key
    if wanted.Device or wanted.RawAgent:
        return None
    same_user = [jid for jid in stored if _bare_or_none(jid) == bare_jid_of(wanted)]
    return same_user[0] if len(same_user) == 1 else None


def stored_devices(store: str) -> list[str]:
    """Full device JIDs in whatsmeow's store, read-only (a missing store holds none)."""
    return _stored_devices_postgres(store) if store.startswith("postgres") else _stored_devices_sqlite(store)


def _bare_or_none(value: str) -> str | None:
    try:
        return bare_from_string(value)
    except ValueError:
        return None


def _stored_devices_sqlite(path: str) -> list[str]:
    file = Path(path)
    if not file.exists():
        return []
    try:
        # Read-only URI: a check must never create the file or the tables.
        with closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT jid FROM whatsmeow_device")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise TransportError(f"cannot read the session store {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise TransportError(f"cannot read the session store {path}: {exc}") from exc


def _stored_devices_postgres(url: str) -> list[str]:
    import psycopg2  # only Postgres stores need it
    from psycopg2 import errors as pg_errors

    try:
        with closing(psycopg2.connect(**libpq_kwargs_from_pq_url(url))) as db, db.cursor() as cursor:
            cursor.execute("SELECT jid FROM whatsmeow_device")
            return [row[0] for row in cursor.fetchall()]
    except pg_errors.UndefinedTable:
        return []
    except psycopg2.Error as exc:
        raise TransportError(f"cannot read the session store: {exc}") from exc


# ---- the FFI gate -----------------------------------------------------------------------------


class FfiGate:
    """Admits calls into neonize's Go library only while Go knows our client.

    States: ``waiting`` (Go has not answered yet) → ``open`` (first callback seen) → ``closed``
    (stop began). Calls run concurrently with each other; :meth:`close` waits for those in flight,
    so none of them reads Go's client map while ``Stop()`` edits it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state = "waiting"
        self._active = 0

    @property
    def state(self) -> str:
        """``waiting``, ``open`` or ``closed``."""
        return self._state

    def open(self) -> bool:
        """Let calls through (once Go has shown the client exists); True if this call opened it."""
        with self._cond:
            if self._state != "waiting":
                return False
            self._state = "open"
            self._cond.notify_all()
            return True

    def wait_open(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the gate to open; False if it did not (or was closed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._state != "waiting", timeout=timeout)
            return self._state == "open"

    @contextmanager
    def admit(self, action: str) -> Iterator[None]:
        """Run the body as one FFI call, or raise a retryable :class:`TransportError` at once."""
        with self._cond:
            if self._state == "waiting":
                raise TransportError(f"{action}: the neonize client has not started yet", retryable=True)
            if self._state == "closed":
                raise TransportError(f"{action}: the transport is stopping", retryable=True)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self, drain_timeout: float) -> bool:
        """Refuse new calls and wait up to ``drain_timeout`` s for those in flight; True if all ended."""
        with self._cond:
            self._state = "closed"
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._active == 0, timeout=drain_timeout)


# ---- the transport ----------------------------------------------------------------------------


class NeonizeTransport(Transport):
    """One account's WhatsApp connection over neonize's sync ``NewClient``.

    Make one per term: :meth:`connect` once and :meth:`stop` once, from the same thread. ``store`` is
    the session store as neonize takes it (SQLite path, or a lib/pq URL starting with ``postgres``);
    ``device_jid`` the account's full device JID (``user:device@s.whatsapp.net``) to resume, or None
    to pair a new device (never "the first device in the store"); ``client_uuid`` must be unique per
    process and term.
    """

    def __init__(
        self,
        account_id: str,
        store: str,
        device_jid: str | None,
        client_uuid: str,
        *,
        first_dial_grace: float = DEFAULT_FIRST_DIAL_GRACE,
        stop_drain_timeout: float = DEFAULT_STOP_DRAIN_TIMEOUT,
        pair_wait: float = DEFAULT_PAIR_WAIT,
        proxy: ProxySettings | None = None,
        device_props: DeviceProps | None = None,
    ) -> None:
        if not client_uuid:
            raise ValueError("client_uuid is required: it keys the client on neonize's Go side")
        self.account_id = account_id
        self.store = store
        self.client_uuid = client_uuid
        self._device = parse_jid(device_jid) if device_jid else None
        self._first_dial_grace = first_dial_grace
        self._stop_drain_timeout = stop_drain_timeout
        self._pair_wait = pair_wait
        self._proxy = proxy
        # uuid keys the Go side; NewClient would key on jid.User if handed the jid, so it is set after.
        self._client = NewClient(store, props=device_props, uuid=client_uuid, new_device=self._device is None)
        self._client.jid = self._device
        self._gate = FfiGate()
        self._handlers: TransportHandlers | None = None
        self._neonize_execute: Callable[[bytes, int | None, int, int], None] | None = None
        self._lock = threading.Lock()
        self._dial_thread: threading.Thread | None = None
        self._dial_settled = threading.Event()  # the dial failed at once, or Go answered
        self._dial_ended = False
        self._dial_error: BaseException | None = None
        self._connect_returned = False
        self._stop_requested = False

    # -- introspection ---------------------------------------------------------------------------

    @property
    def device_jid(self) -> str | None:
        """The full device JID this transport resumes, None when pairing a new device."""
        return device_jid_of(self._device) if self._device is not None else None

    @property
    def neonize_client(self) -> NewClient:
        """The underlying neonize client (diagnostics and the offline tests; do not call into it)."""
        return self._client

    def has_session(self) -> bool:
        """Whether the store holds this transport's device; raises TransportError if unreadable."""
        device_jid = self.device_jid
        return device_jid is not None and find_stored_device(self.store, device_jid) is not None

    # -- lifecycle -------------------------------------------------------------------------------

    def register_handlers(self, handlers: TransportHandlers) -> None:
        """Register every event handler, the QR hooks and the Go callback wrapper on the client.

        :meth:`connect` calls it first; the offline tests call it to drive events without dialing.
        Calling it again replaces the handlers (neonize keeps one per event type).
        """
        self._handlers = handlers
        client = self._client
        client.event(MessageEv)(self._on_message_event)
        client.event(UndecryptableMessageEv)(self._on_undecryptable_event)
        for event_type in LIFECYCLE_EVENT_TYPES:
            client.event(event_type)(self._on_lifecycle_event)
        client.event.qr(self._on_qr)
        # neonize only prints the QR channel's outcome; connect() hands Go this name-mangled method.
        client._NewClient__onLoginStatus = self._on_login_status
        if self._neonize_execute is None:
            # connect() builds Go's event callback from client.event.execute: ours wraps neonize's.
            self._neonize_execute = client.event.execute
            client.event.execute = self._on_go_event

    def connect(self, handlers: TransportHandlers) -> None:
        """Register handlers, start neonize's blocking ``connect()`` on its own thread, and return.

        Raises :class:`ConnectFailed`: not retryable when the store has no session for the device
        (pair again), retryable when the store is unreadable or the first dial fails within
        ``first_dial_grace`` seconds. A dial that fails later, or the event loop ending while
        nobody stopped it, arrives as a ``connect_failure`` event with ``code`` None.
        """
        with self._lock:
            if self._dial_thread is not None or self._stop_requested:
                raise ConnectFailed(
                    "a NeonizeTransport connects once: make a new one per term", retryable=False
                )
        if self._device is not None:
            self._resolve_device()
        self.register_handlers(handlers)
        thread = threading.Thread(target=self._run_dial, name=f"neonize-{self.account_id}", daemon=True)
        with self._lock:
            self._dial_thread = thread
        thread.start()
        self._dial_settled.wait(self._first_dial_grace)
        with self._lock:
            self._connect_returned = True
            failed_at_once = self._dial_ended and not self._stop_requested
            error = self._dial_error
        if failed_at_once:
            detail = f"the first dial failed: {error}" if error else "neonize connect() returned at once"
            raise ConnectFailed(detail, retryable=True) from error

    def _resolve_device(self) -> None:
        """Make sure the store holds the device neonize will open (raises :class:`ConnectFailed`)."""
        wanted = device_jid_of(self._device)
        try:
            stored = find_stored_device(self.store, wanted)
        except TransportError as exc:
            raise ConnectFailed(str(exc), retryable=True) from exc
        if stored is None:
            # whatsmeow.NewClient(nil) would abort the whole process: never let neonize try.
            raise ConnectFailed(f"no session for device {wanted} in the store: pair again", retryable=False)
        if stored != wanted:
            log.warning("account %s: resuming stored device %s for %s", self.account_id, stored, wanted)
            self._device = parse_jid(stored)
            self._client.jid = self._device

    def stop(self) -> None:
        """Refuse further calls, then run neonize's ``stop()`` (it can block ~a minute mid-dial).

        Safe before :meth:`connect`, after :class:`ConnectFailed`, and a second time (a no-op). Never
        call it from a handler: those run on Go's callback thread, which neonize's stop() may wait on.
        """
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        if not self._gate.close(self._stop_drain_timeout):
            log.warning("account %s: stopping with neonize calls still in flight", self.account_id)
        try:
            self._client.stop()
        except Exception:
            log.exception("account %s: neonize stop() failed", self.account_id)

    def _run_dial(self) -> None:
        """The connect thread: neonize's ``connect()`` blocks here until stop() or a failure."""
        error: BaseException | None = None
        try:
            self._client.connect(self._proxy)
        except NeonizeError as exc:
            error = exc
        except Exception as exc:
            log.exception("account %s: neonize connect() raised", self.account_id)
            error = exc
        with self._lock:
            self._dial_ended = True
            self._dial_error = error
            report = self._connect_returned and not self._stop_requested
        self._dial_settled.set()
        if report:
            self._report_dial_end(error)
        else:
            log.info("account %s: neonize connect() ended (%s)", self.account_id, error or "stopped")

    def _report_dial_end(self, error: BaseException | None) -> None:
        """The event loop ended under a running term: the runtime must end the term."""
        log.error("account %s: neonize event loop ended: %s", self.account_id, error or "no error")
        if error is not None and "required field" in str(error):
            # Go's proto.Marshal refused an event (a whatsmeow code neonize's enums lack) and quit the loop.
            self._report_malformed("neonize event loop", f"Go could not encode an event: {error}")
        reason = f"neonize event loop ended: {error}" if error else "neonize event loop ended"
        self._emit_connection(ConnectionEvent(kind="connect_failure", reason=reason))

    # -- sending ---------------------------------------------------------------------------------

    def send_text(self, to: str, text: str) -> SendResult:
        """Send ``text`` as a plain conversation message to the bare JID ``to``.

        The message is built here, not from a str by neonize: its str path turns ``@digits`` into
        mentions and looks up any ``…@g.us`` in the text over the network.
        """
        try:
            recipient = parse_jid(to)
        except ValueError as exc:
            raise NotOnWhatsApp(f"invalid recipient JID {to!r}") from exc
        with self._gate.admit("send_text"):
            try:
                response = self._client.send_message(recipient, WAMessage(conversation=text))
            except NeonizeError as exc:
                raise classify_send_error(str(exc)) from exc
            except Exception as exc:  # a reply neonize could not parse: the send's outcome is unknown
                raise TransportError(f"send_text: {exc!r}", retryable=True) from exc
        if not response.ID:
            raise TransportError("WhatsApp returned no message id for the send", retryable=True)
        return SendResult(message_id=response.ID, timestamp=datetime_from_seconds(response.Timestamp))

    def mark_read(self, chat: str, sender: str, message_ids: list[str]) -> None:
        """Send read receipts for ``message_ids`` of ``sender`` in ``chat`` (one receipt stanza)."""
        if not message_ids:
            return  # whatsmeow refuses an empty list
        chat_jid, sender_jid = self._jid_or_error(chat), self._jid_or_error(sender)
        with self._gate.admit("mark_read"):
            try:
                self._client.mark_read(
                    *message_ids, chat=chat_jid, sender=sender_jid, receipt=ReceiptType.READ
                )
            except Exception as exc:  # NeonizeError subclasses, or a reply that does not parse
                raise TransportError(f"mark_read: {exc}", retryable=True) from exc

    def set_typing(self, chat: str, typing: bool) -> None:
        """Show (``typing``) or clear "typing…" in ``chat``."""
        chat_jid = self._jid_or_error(chat)
        state = ChatPresence.CHAT_PRESENCE_COMPOSING if typing else ChatPresence.CHAT_PRESENCE_PAUSED
        with self._gate.admit("set_typing"):
            try:
                self._client.send_chat_presence(chat_jid, state, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
            except Exception as exc:  # NeonizeError subclasses, or a reply that does not parse
                raise TransportError(f"set_typing: {exc}", retryable=True) from exc

    def pair_phone(self, phone: str) -> str:
        """A pairing code for ``phone`` (digits of the international number) from WhatsApp.

        Only after :meth:`connect` started: whatsmeow needs the socket, so this waits up to
        ``pair_wait`` seconds for it (the first QR code), then raises a retryable TransportError.
        """
        digits = "".join(ch for ch in phone if ch.isdigit())
        if not digits:
            raise TransportError(f"not a phone number: {phone!r}", retryable=False)
        if not self._gate.wait_open(self._pair_wait):
            raise TransportError(
                "pair_phone: the connection did not come up (no QR code yet)", retryable=True
            )
        with self._gate.admit("pair_phone"):
            try:
                return self._client.PairPhone(digits, True)
            except NeonizeError as exc:
                bad_number = any(marker in str(exc).lower() for marker in BAD_PHONE_MARKERS)
                raise TransportError(f"pair_phone: {exc}", retryable=not bad_number) from exc
            except Exception as exc:
                raise TransportError(f"pair_phone: {exc!r}", retryable=True) from exc

    # -- identity --------------------------------------------------------------------------------

    def own_jids(self) -> tuple[str, ...]:
        """This device's phone JID and LID, bare; from Go when it is up, else from its first event."""
        device = self._client.me  # neonize keeps the Device event Go sends first
        try:
            with self._gate.admit("own_jids"):
                device = self._client.get_me()
        except TransportError:
            pass
        except Exception:
            log.warning("account %s: get_me failed", self.account_id, exc_info=True)
        if device is None:
            return ()
        return tuple(bare_jid_of(jid) for jid in (device.JID, device.LID) if not jid_is_empty(jid))

    def phone_for_lid(self, lid: str) -> str | None:
        """The phone JID whatsmeow's LID map has for ``lid``; None if unknown, not a LID, or on error."""
        return self._lookup(lid, "lid", self._client.get_pn_from_lid)

    def lid_for_phone(self, phone: str) -> str | None:
        """The LID whatsmeow's LID map has for the phone JID; None if unknown, not a phone JID, on error."""
        return self._lookup(phone, "s.whatsapp.net", self._client.get_lid_from_pn)

    def _lookup(self, value: str, server: str, fetch: Callable[[npb.JID], npb.JID]) -> str | None:
        try:
            jid = parse_jid(value)
        except ValueError:
            return None
        if jid.Server != server:
            return None
        jid.Device, jid.RawAgent = 0, 0  # the map is keyed on users, not devices
        try:
            with self._gate.admit("LID map lookup"):
                found = fetch(jid)
        except Exception as exc:
            log.debug("account %s: LID map lookup for %s failed: %s", self.account_id, value, exc)
            return None
        return None if jid_is_empty(found) else bare_jid_of(found)

    @staticmethod
    def _jid_or_error(value: str) -> npb.JID:
        try:
            return parse_jid(value)
        except ValueError as exc:
            raise TransportError(f"invalid JID {value!r}", retryable=False) from exc

    # -- events (all on Go's callback thread; none may raise) ------------------------------------

    def _on_go_event(self, uuid: bytes, binary: int | None, size: int, code: int) -> None:
        """The callback Go calls for every event; runs neonize's ``execute`` and reports its failures."""
        self._go_client_seen()
        event_type = INT_TO_EVENT.get(code)
        try:
            if event_type is None:
                # neonize's execute would raise UnsupportedEvent into ctypes, which only prints it.
                self._report_malformed(event_name(None, code), "not an event code of neonize 0.5.2")
                return
            self._neonize_execute(uuid, binary, size, code)
        except DecodeError as exc:
            self._report_malformed(event_name(event_type, code), f"payload does not parse: {exc}")
            fallback = fallback_connection_event(event_type)
            if fallback is not None:
                self._emit_connection(fallback)
        except Exception as exc:
            log.exception("account %s: neonize could not dispatch event code %s", self.account_id, code)
            self._report_malformed(event_name(event_type, code), f"neonize could not dispatch it: {exc!r}")

    def _on_message_event(self, _client: NewClient, ev: npb.Message) -> None:
        try:
            message = incoming_message_from(ev)
        except Exception as exc:
            self._report_malformed(f"message {_message_id(ev)}", str(exc) or repr(exc))
            return
        handlers = self._handlers
        if handlers is not None:
            _call_runtime(handlers.on_message, message, f"on_message({message.message_id})")

    def _on_undecryptable_event(self, _client: NewClient, ev: npb.UndecryptableMessage) -> None:
        try:
            what, why = undecryptable_summary(ev)
        except Exception as exc:
            what, why = "undecryptable message", f"could not summarise it: {exc!r}"
        self._report_malformed(what, why)

    def _on_lifecycle_event(self, _client: NewClient, ev: ProtoMessage) -> None:
        try:
            event = connection_event_from(ev)
        except Exception as exc:
            self._report_malformed(f"{type(ev).__name__} event", str(exc) or repr(exc))
            return
        self._emit_connection(event)

    def _on_qr(self, _client: NewClient, data: bytes) -> None:
        self._go_client_seen()
        try:
            event = qr_event(data)
        except Exception as exc:
            self._report_malformed("QR code", repr(exc))
            return
        self._emit_connection(event)

    def _on_login_status(self, _uuid: int | None, status: int | None) -> None:
        """Replaces neonize's ``__onLoginStatus`` (a print): the QR channel's outcome, as a C string."""
        self._go_client_seen()
        try:
            text = ctypes.string_at(status).decode("utf-8", "replace") if status else ""
            event = login_status_event(text)
        except Exception as exc:
            self._report_malformed("QR login status", repr(exc))
            return
        if event is not None:
            self._emit_connection(event)

    def _current_device_jid(self) -> str | None:
        me = self._client.me  # the Device event Go sends before any other
        if me is not None and not jid_is_empty(me.JID):
            return device_jid_of(me.JID)
        return self.device_jid

    def _go_client_seen(self) -> None:
        """Go has called us, so its client map holds ours: FFI calls are safe from now on."""
        if self._gate.open():
            log.info("account %s: neonize client is up", self.account_id)
        self._dial_settled.set()

    def _emit_connection(self, event: ConnectionEvent) -> None:
        if event.kind == "connected" and event.jid is None:
            # The runtime records the device JID it connected as: give it the full one neonize got first.
            event = replace(event, jid=self._current_device_jid())
        handlers = self._handlers
        log.info("account %s: connection event %s", self.account_id, event.kind)
        if handlers is not None:
            _call_runtime(handlers.on_connection, event, f"on_connection({event.kind})")

    def _report_malformed(self, what: str, why: str) -> None:
        log.warning("account %s: malformed %s: %s", self.account_id, what, why)
        handlers = self._handlers
        if handlers is None:
            return
        try:
            handlers.on_malformed(what, why)
        except Exception:
            log.exception("account %s: on_malformed raised", self.account_id)


def _call_runtime(handler: Callable[[object], None], value: object, label: str) -> None:
    """Call a runtime callback; its failure is logged, never raised into Go's callback thread."""
    try:
        handler(value)
    except Exception:
        log.exception("runtime handler %s raised", label)


def _message_id(ev: npb.Message) -> str:
    try:
        return ev.Info.ID or "?"
    except Exception:
        return "?"
