"""Wiring of core-schedule's due reminders into the sweep (imported by ``zenthor.actors``).

Lives with the actors because it joins layers the plugin must not import: it hands the plugin's
delivery step the reply writer and the publisher, so
:mod:`zenthor.plugins.builtin.core_schedule.delivery` imports nothing above the plugins.
"""

from __future__ import annotations

from functools import partial

from zenthor.actors.publish import publish_deliveries
from zenthor.actors.sweep import register_step
from zenthor.agent.replies import write_replies
from zenthor.plugins.builtin.core_schedule.delivery import deliver_due_reminders


def deliver_reminders_step() -> dict[str, int]:
    """The sweep step: deliver due reminders."""
    # The reminder's assistant message is marked message.kind = 'reminder'.
    return deliver_due_reminders(partial(write_replies, kind="reminder"), publish_deliveries)


register_step("reminders", deliver_reminders_step)
