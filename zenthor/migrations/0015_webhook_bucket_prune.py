"""The sweep's prune of idle webhook sender buckets (``zenthor.actors.webhook_buckets``) finds them
through an index on ``updated_at``: without it each sweep run, every few seconds, would read the
whole table, which holds a row per (account, sender) that posted recently.

Depends only on 0013 (its table). Not atomic (see ``zenthor.migrations``): the index is built
concurrently, so accepts are not blocked meanwhile; the statement can be run again.
"""

from zenthor.migrations import create_index_concurrently

atomic = False

INDEX = "webhook_sender_bucket_updated_at"


def up(migrator, db):
    create_index_concurrently(
        db,
        INDEX,
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON webhook_sender_bucket (updated_at)",
    )


def down(migrator, db):
    db.execute_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
