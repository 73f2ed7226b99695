"""One identity per person, and where their replies go.

WhatsApp now sends many senders as a LID (``…@lid``) instead of their phone JID, sometimes with
``SenderAlt`` empty, and the same person (even the same message) can arrive under both. Our
conversations, contacts and the allowlist key on one identity: the phone JID when we can learn
it, else the LID. We learn LID ↔ phone pairs from ``SenderAlt`` and whatsmeow's own LID map
(through the transport) and keep them in ``whatsapp_identity`` so they survive a failover.

Replies go to the chat the person wrote from (``whatsapp_chat.reply_jid``): sending to a phone
JID when they wrote as a LID can open a second chat on their phone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from zenthor.db import execute
from zenthor.observability import emit
from zenthor.observability import events as ev

PHONE_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"

_UPSERT_IDENTITY = """
INSERT INTO whatsapp_identity (account_id, lid, phone) VALUES (%s, %s, %s)
ON CONFLICT (account_id, lid) DO UPDATE SET phone = EXCLUDED.phone, updated_at = now()
 WHERE whatsapp_identity.phone IS DISTINCT FROM EXCLUDED.phone
"""

_UPSERT_ROUTE = """
INSERT INTO whatsapp_chat (account_id, chat_id, reply_jid) VALUES (%s, %s, %s)
ON CONFLICT (account_id, chat_id) DO UPDATE SET reply_jid = EXCLUDED.reply_jid, updated_at = now()
 WHERE whatsapp_chat.reply_jid IS DISTINCT FROM EXCLUDED.reply_jid
"""


def server_of(jid: str) -> str:
    """The server part of ``user@server`` ('' when there is none)."""
    return jid.rpartition("@")[2] if "@" in jid else ""


def is_lid(jid: str) -> bool:
    """True for a LID (``…@lid``)."""
    return server_of(jid) == LID_SERVER


def is_phone(jid: str) -> bool:
    """True for a phone JID (``…@s.whatsapp.net``)."""
    return server_of(jid) == PHONE_SERVER


def strip_device(jid: str) -> str:
    """``user:device@server`` → ``user@server`` (and ``user.agent:device`` forms)."""
    user, at, server = jid.partition("@")
    return f"{user.split(':', 1)[0]}{at}{server}"


class IdentityBook:
    """The account's LID ↔ phone map and reply routes: memory in front of two small tables.

    Used from the transport's event thread and the delivery thread; a lock keeps the caches sane.
    Writes happen only when something changed, so a busy chat costs no extra statement.
    """

    def __init__(self, account_id: str, lookup_phone: Callable[[str], str | None] | None = None) -> None:
        self.account_id = account_id
        self._lookup_phone = lookup_phone
        self._phone_of: dict[str, str] = {}
        self._routes: dict[str, str] = {}
        self._lock = threading.Lock()

    def learn(self, lid: str, phone: str, *, source: str = "sender_alt") -> bool:
        """Remember that ``lid`` is ``phone``; True when it was new."""
        lid, phone = strip_device(lid), strip_device(phone)
        if not (is_lid(lid) and is_phone(phone)):
            return False
        with self._lock:
            if self._phone_of.get(lid) == phone:
                return False
            self._phone_of[lid] = phone
        execute(_UPSERT_IDENTITY, (self.account_id, lid, phone))
        emit(ev.WA_IDENTITY_LEARNED, account_id=self.account_id, source=source)
        return True

    def phone_for(self, lid: str) -> str | None:
        """The phone JID of ``lid``: memory, then our table, then whatsmeow's map."""
        with self._lock:
            known = self._phone_of.get(lid)
        if known:
            return known
        rows = execute(
            "SELECT phone FROM whatsapp_identity WHERE account_id = %s AND lid = %s", (self.account_id, lid)
        )
        if rows:
            with self._lock:
                self._phone_of[lid] = rows[0][0]
            return rows[0][0]
        phone = self._lookup_phone(lid) if self._lookup_phone else None
        if phone and self.learn(lid, phone, source="lid_map"):
            return strip_device(phone)
        return None

    def canonical(self, sender: str, sender_alt: str | None) -> tuple[str, str | None]:
        """The one identity of a sender, and how it was found (``alt``, ``map`` or None)."""
        sender = strip_device(sender)
        alt = strip_device(sender_alt) if sender_alt else None
        if is_phone(sender):
            if alt and is_lid(alt):
                self.learn(alt, sender)
            return sender, None
        if is_lid(sender):
            if alt and is_phone(alt):
                self.learn(sender, alt)
                return alt, "alt"
            phone = self.phone_for(sender)
            if phone:
                return phone, "map"
        return sender, None

    def remember_route(self, chat_id: str, reply_jid: str) -> None:
        """Replies for conversation ``chat_id`` go to ``reply_jid`` (the chat the person used last)."""
        with self._lock:
            if self._routes.get(chat_id) == reply_jid:
                return
            self._routes[chat_id] = reply_jid
        execute(_UPSERT_ROUTE, (self.account_id, chat_id, reply_jid))

    def reply_jid(self, chat_id: str) -> str:
        """Where a reply for conversation ``chat_id`` goes (itself when nothing else is known)."""
        with self._lock:
            known = self._routes.get(chat_id)
        if known:
            return known
        rows = execute(
            "SELECT reply_jid FROM whatsapp_chat WHERE account_id = %s AND chat_id = %s",
            (self.account_id, chat_id),
        )
        route = rows[0][0] if rows else chat_id
        with self._lock:
            self._routes[chat_id] = route
        return route
