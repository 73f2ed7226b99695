"""Ingress: :class:`InboundMessage` and :func:`accept`, used by every channel (invariant I3)."""

from zenthor.ingress.answers import AnswerHandler, AnswerOutcome, AnswerRequest, register_answer_handler
from zenthor.ingress.dedupe import prune_dedupe_keys
from zenthor.ingress.message import InboundMessage, InvalidInbound, parse_sent_at
from zenthor.ingress.pipeline import (
    ACCEPTED,
    ANSWER,
    COMMAND,
    DUPLICATE,
    IGNORED,
    NOTICE,
    AcceptResult,
    accept,
    accept_notice,
    set_default_publisher,
)

__all__ = [
    "ACCEPTED",
    "ANSWER",
    "COMMAND",
    "DUPLICATE",
    "IGNORED",
    "NOTICE",
    "AcceptResult",
    "AnswerHandler",
    "AnswerOutcome",
    "AnswerRequest",
    "InboundMessage",
    "InvalidInbound",
    "accept",
    "accept_notice",
    "parse_sent_at",
    "prune_dedupe_keys",
    "register_answer_handler",
    "set_default_publisher",
]
