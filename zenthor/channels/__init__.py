"""Channels and the sender registry: channel name ▸ how its outbox rows are delivered.

Delivery happens "in the process that owns the channel account" (docs/architecture.md). A sender names the
Dramatiq queue its delivery nudges go to:

- ``outbound`` (the default): any worker may deliver (webhook: an HTTP POST from anywhere);
- a channel's own queue, consumed only by the processes that may send for it;
- ``None``: no nudge at all; the owning process polls its outbox rows itself. The terminal chat
  shows replies as it claims them ("sent" means "shown to the person"); the WhatsApp runtime that
  holds an account's lease claims that account's rows, fenced by the account lease (a shared
  ``outbound.whatsapp`` queue would hand account A's reply to account B's process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_OUTBOUND_QUEUE = "outbound"


class SendError(Exception):
    """A send that did not go through; ``retryable`` says whether another try may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


SendFunction = Callable[[Any], None]  # takes a zenthor.queue.outbox.OutboundLease; raises SendError


@dataclass(frozen=True)
class ChannelSender:
    """How one channel's outbox rows leave the system."""

    channel: str
    send: SendFunction | None  # None: the owning process polls and shows rows itself
    queue_name: str | None = DEFAULT_OUTBOUND_QUEUE


_senders: dict[str, ChannelSender] = {}
# Where each channel's delivery nudges go, known to EVERY process (a dispatch worker publishes
# the nudge for a WhatsApp reply although only the WhatsApp runtime has that channel's sender).
# A channel without an entry goes to the shared ``outbound`` queue; None means "polled by its
# owning process". register_sender updates this map too.
_routes: dict[str, str | None] = {"terminal": None, "whatsapp": None}
_lock = threading.Lock()
_builtins_loaded = False


def register_sender(
    channel: str, send: SendFunction | None, *, queue_name: str | None = DEFAULT_OUTBOUND_QUEUE
) -> ChannelSender:
    """Register (or replace) the sender of ``channel``."""
    if send is None and queue_name is not None:
        raise ValueError(f"channel {channel!r}: a sender without a send function must use queue_name=None")
    sender = ChannelSender(channel, send, queue_name)
    with _lock:
        _senders[channel] = sender
        _routes[channel] = queue_name
    return sender


def queue_for(channel: str) -> str | None:
    """The queue delivery nudges for ``channel`` go to; None when its owning process polls."""
    load_builtin_senders()
    with _lock:
        return _routes.get(channel, DEFAULT_OUTBOUND_QUEUE)


def get_sender(channel: str) -> ChannelSender | None:
    """The registered sender of ``channel`` (builtin channels are loaded on first use)."""
    load_builtin_senders()
    return _senders.get(channel)


def load_builtin_senders() -> None:
    """Register the webhook and terminal senders (idempotent)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    from zenthor.channels.terminal.sender import register as register_terminal
    from zenthor.channels.webhook.sender import register as register_webhook

    with _lock:
        if _builtins_loaded:
            return
        _builtins_loaded = True
    register_webhook()
    register_terminal()
