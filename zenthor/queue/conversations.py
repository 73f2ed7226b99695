"""The conversation row lock: what serialises the writers of one conversation (I2, I5).

Every transaction that adds a job or an outbox row to a conversation holds its row
``FOR NO KEY UPDATE`` from before its insert until commit: ``accept`` (jobs), the completion and
the final failure of a job, the stale-lease sweep's failure replies, due reminders and notices
(outbox rows), an operator's retry (a job). So ids drawn inside one conversation commit in id
order, and a claim's "no older open row" check sees every older row there will ever be.

``NO KEY UPDATE`` does not block the foreign-key checks (``FOR KEY SHARE``) of other writers to
the conversation: messages and jobs of other transactions can still reference it.

Lock order, so no two writers wait for each other (docs/architecture.md, I5): a job row, then the
conversation, then its approvals, then the jobs those approvals wait on. A transaction that holds
several conversations takes them in id order, all at once (:func:`lock_conversations`).

A transaction remembers the routes of the conversations it already holds (:func:`held_route`,
forgotten at commit or rollback), so the completion, which locks its conversation in the same
statement as the fenced update, does not lock it again to write the replies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from zenthor.db import execute, held_in_transaction

_LOCK_ONE = "SELECT 1 FROM conversation WHERE id = %s FOR NO KEY UPDATE"

# ORDER BY id: two transactions that lock overlapping sets take them in the same order.
_LOCK_MANY = "SELECT id FROM conversation WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE"

# The lock plus the route a reply needs, in one round trip.
_LOCK_ROUTE = "SELECT channel, account_id, chat_id FROM conversation WHERE id = %s FOR NO KEY UPDATE"


class Route(NamedTuple):
    """Where a conversation's replies go."""

    channel: str
    account_id: str
    chat_id: str


def lock_conversation(conversation_id: int) -> bool:
    """Hold conversation ``conversation_id`` until the caller's transaction ends; False when it
    does not exist."""
    return bool(execute(_LOCK_ONE, (conversation_id,)))


def lock_conversations(conversation_ids: Iterable[int]) -> list[int]:
    """Hold every conversation of ``conversation_ids`` until the caller's transaction ends, in id
    order; returns the ids that exist, sorted."""
    ids = sorted(set(conversation_ids))
    if not ids:
        return []
    return [row[0] for row in execute(_LOCK_MANY, (ids,))]


def lock_route(conversation_id: int) -> Route:
    """Hold the conversation (as :func:`lock_conversation`) and return its route. Raises
    ``LookupError`` when it does not exist. No round trip when the caller's transaction already
    holds it with its route (:func:`held_route`)."""
    held = held_in_transaction()
    if held is not None and ("route", conversation_id) in held:
        return held[("route", conversation_id)]
    rows = execute(_LOCK_ROUTE, (conversation_id,))
    if not rows:
        raise LookupError(f"conversation {conversation_id} does not exist")
    route = Route(*rows[0])
    held_route(conversation_id, route)
    return route


def held_route(conversation_id: int, route: Route) -> None:
    """Record that the caller's transaction holds conversation ``conversation_id`` (it locked the
    row ``FOR NO KEY UPDATE`` and read ``route``), so :func:`lock_route` answers without a round
    trip until the transaction ends. The row cannot change meanwhile: the lock keeps every other
    writer off it. Not recorded inside a savepoint, whose rollback would release the lock."""
    held = held_in_transaction(to_add=True)
    if held is not None:
        held[("route", conversation_id)] = route
