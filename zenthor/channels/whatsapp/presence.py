"""Read marks and "typing…" while the account's turns run.

Turns run in Dramatiq workers, which have no WhatsApp connection; the owner watches the account's
``processing`` jobs (a handful of rows, found through the partial index on processing jobs) and,
for each job that starts, marks its messages read (its own, and those merged into it in collect
mode) and shows "typing…" in its chat; when the job is no longer processing, clears it. Best effort: a failed mark or presence is logged at DEBUG and
never affects a reply.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from zenthor.channels.whatsapp.identity import IdentityBook
from zenthor.channels.whatsapp.term import Term
from zenthor.channels.whatsapp.transport import Transport
from zenthor.db import database, execute
from zenthor.observability import emit
from zenthor.observability import events as ev

# Each running turn with every message it answers: its own, and in collect mode the ones merged
# into it under its token (issue 14; the same sender's, so one receipt names them all).
_RUNNING_TURNS = """
SELECT j.id, c.chat_id, m.sender_id,
       array_remove(ARRAY[m.provider_message_id]
                    || ARRAY(SELECT bm.provider_message_id
                               FROM agent_job AS b JOIN message AS bm ON bm.id = b.message_id
                              WHERE b.conversation_id = j.conversation_id AND b.status = 'pending'
                                AND b.merged_into = j.id AND b.lease_token = j.lease_token
                              ORDER BY b.id), NULL)
  FROM agent_job AS j
  JOIN conversation AS c ON c.id = j.conversation_id
  LEFT JOIN message AS m ON m.id = j.message_id
 WHERE j.status = 'processing' AND c.channel = %s AND c.account_id = %s
"""


def reader_of(chat: str, sender_id: str | None) -> str:
    """The sender a read receipt names: the chat itself in a direct chat (the form the person
    wrote from), the participant in a group."""
    return sender_id or chat if chat.endswith("@g.us") else chat


class ReadMarks:
    """Which messages this term already marked read (bounded): the presence loop marks a turn's
    message when the turn starts; the outbox sender marks it before the reply if the turn was too
    quick for the loop to see it running. Either way once."""

    def __init__(self, capacity: int = 4096) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def first_time(self, message_id: str) -> bool:
        """Record ``message_id``; True when it was not marked before."""
        with self._lock:
            if message_id in self._seen:
                return False
            self._seen[message_id] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True


class PresenceLoop(threading.Thread):
    """Marks read and shows typing for the account's running turns."""

    def __init__(
        self,
        term: Term,
        transport: Transport,
        identities: IdentityBook,
        *,
        poll_s: float,
        read_marks: ReadMarks,
    ) -> None:
        super().__init__(name=f"wa-presence-{term.lease.account_id}", daemon=True)
        self.read_marks = read_marks
        self.term = term
        self.transport = transport
        self.identities = identities
        self.poll_s = poll_s
        self._stopping = threading.Event()
        self._typing: dict[int, str] = {}  # job id -> chat JID showing "typing…"

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set() and not self.term.ended:
                try:
                    self.poll_once()
                except Exception as error:  # noqa: BLE001 - best effort; the next poll tries again
                    emit(
                        ev.WA_PRESENCE_FAILED,
                        account_id=self.term.lease.account_id,
                        operation="poll",
                        error=f"{type(error).__name__}: {str(error)[:200]}",
                    )
                    if not database.is_closed():
                        database.close()
                self._stopping.wait(self.poll_s)
        finally:
            if not database.is_closed():
                database.close()

    def poll_once(self) -> None:
        """One look at the running turns."""
        rows = execute(_RUNNING_TURNS, ("whatsapp", self.term.lease.account_id))
        running = {row[0] for row in rows}
        for job_id, chat_id, sender_id, message_ids in rows:
            if job_id in self._typing or not self.term.may_send():
                continue
            chat = self.identities.reply_jid(chat_id)
            self._typing[job_id] = chat
            unread = [message_id for message_id in message_ids if self.read_marks.first_time(message_id)]
            if unread:
                sender = reader_of(chat, sender_id)
                self._best_effort("mark_read", self.transport.mark_read, chat, sender, unread)
            self._best_effort("typing_on", self.transport.set_typing, chat, True)
        for job_id in [j for j in self._typing if j not in running]:
            chat = self._typing.pop(job_id)
            if self.term.may_send():
                self._best_effort("typing_off", self.transport.set_typing, chat, False)

    def _best_effort(self, operation: str, call, *args) -> None:
        try:
            call(*args)
        except Exception as error:  # noqa: BLE001 - a read mark is never worth a reply
            emit(
                ev.WA_PRESENCE_FAILED,
                account_id=self.term.lease.account_id,
                operation=operation,
                error=f"{type(error).__name__}: {str(error)[:200]}",
            )
