"""The hook where an inbound can be the answer to a pending question instead of a new turn.

The agent registers a handler (tool approvals: "YES" resumes the waiting job). :func:`accept`
calls the handlers inside its transaction, after the user message is stored and before a turn
job would be created; the first handler that returns an :class:`AnswerOutcome` wins. Then no
turn job is created (``outcome.job_id``, if set, is published after commit), unless the outcome
says ``start_turn``: the handler settled a question the message did not answer (it closed it as
superseded), and the message is still an ordinary turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AnswerRequest:
    """The stored user message a handler may take as an answer: who wrote it matters (in a group,
    only the member who was asked can answer)."""

    conversation_id: int
    message_id: int
    sender_id: str
    text: str


@dataclass(frozen=True)
class AnswerOutcome:
    """What a handler did with the message."""

    job_id: int | None  # a job to publish dispatch for after commit (e.g. the resumed job), or None
    reason: str  # short label for the event/log, e.g. "approval_approved"
    start_turn: bool = False  # the message still starts its own turn (its job is published)

    def __post_init__(self) -> None:
        if self.start_turn and self.job_id is not None:
            # accept publishes the new turn's job; a second job to publish has no place here.
            raise ValueError("an AnswerOutcome that starts a turn names no job of its own")


AnswerHandler = Callable[[AnswerRequest], AnswerOutcome | None]

_handlers: list[AnswerHandler] = []
_lock = threading.Lock()


def register_answer_handler(handler: AnswerHandler) -> None:
    """Add ``handler`` (called in registration order); registering the same one twice is a no-op."""
    with _lock:
        if handler not in _handlers:
            _handlers.append(handler)


def unregister_answer_handler(handler: AnswerHandler) -> None:
    """Remove ``handler`` (tests, plugin unload)."""
    with _lock:
        if handler in _handlers:
            _handlers.remove(handler)


def find_answer(request: AnswerRequest) -> AnswerOutcome | None:
    """The first handler's outcome, or None when the message is not an answer (caller's txn)."""
    with _lock:
        handlers = list(_handlers)
    for handler in handlers:
        outcome = handler(request)
        if outcome is not None:
            if not isinstance(outcome, AnswerOutcome):
                raise TypeError(f"answer handler {handler!r} returned {type(outcome).__name__}")
            return outcome
    return None
