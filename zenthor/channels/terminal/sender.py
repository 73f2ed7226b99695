"""The terminal's replies are delivered by the chat process itself, not by workers.

The chat process owns the terminal conversation: it polls its pending outbox rows, claims each
with the outbox lease, shows it, then marks it sent. So "sent" means "shown to the person", a
reply written while no chat runs waits in the outbox and is shown at the next ``zenthor chat``,
and a row is never shown twice (the claim refuses a sent row). Workers publish no nudge for it.
"""

from __future__ import annotations

from zenthor.channels import register_sender
from zenthor.channels.terminal import CHANNEL


def register() -> None:
    """Register the terminal channel as polled by its owning process (no delivery queue)."""
    register_sender(CHANNEL, None, queue_name=None)
