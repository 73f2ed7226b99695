"""Wiring of the webhook sender-bucket prune into the sweep (imported by ``zenthor.actors``).

Each ``webhook_sender_bucket`` row is one (account, sender)'s cost-limit bucket; without a prune
the table keeps a row for every sender ever seen. A row untouched for ``WEBHOOK_SENDER_BURST /
WEBHOOK_SENDER_RATE_PER_MIN`` minutes is full again, and a full bucket is what a missing row means,
so every sweep deletes such rows (a bounded number of batches; the next run goes on). The
statement lives in :mod:`zenthor.channels.webhook.sender_limit`, beside the one that fills the rows.
"""

from __future__ import annotations

from zenthor.actors.sweep import register_step
from zenthor.channels.webhook.sender_limit import prune_buckets
from zenthor.settings import get_settings

# Per sweep run (every few seconds): at most this many batches of RETENTION_BATCH rows.
MAX_BATCHES = 10


def webhook_buckets_step() -> dict[str, int]:
    """The sweep step: delete idle sender buckets; returns ``pruned_webhook_buckets``."""
    settings = get_settings()
    deleted = prune_buckets(
        settings.WEBHOOK_SENDER_RATE_PER_MIN,
        settings.WEBHOOK_SENDER_BURST,
        batch=settings.RETENTION_BATCH,
        max_batches=MAX_BATCHES,
    )
    return {"pruned_webhook_buckets": deleted}


register_step("webhook_buckets", webhook_buckets_step)
