"""Only the asker answers; an awaiting job no longer holds the line (issue 11, items 2 and 3).

``tool_approval.asked_sender_id`` is the sender of the message whose turn asked: only that
sender's yes or no resolves the approval (NULL, for rows from before, lets anyone answer as
before). Pending rows are backfilled from their job's message. ``agent_job_pending_fifo`` serves
the claim's "an older pending job is ahead" probe, now that a job awaiting approval does not hold
its conversation's line; ``agent_job_open_fifo`` stays (``queue.stats`` counts
``awaiting_approval`` through it).

Not atomic (see ``zenthor.migrations``): the index is built concurrently; each statement can be
run again.
"""

from zenthor.migrations import create_index_concurrently

atomic = False

STATEMENTS = [
    "ALTER TABLE tool_approval ADD COLUMN IF NOT EXISTS asked_sender_id TEXT",
    # Only open questions matter; a rerun finds nothing left to fill.
    """
    UPDATE tool_approval AS a SET asked_sender_id = m.sender_id
      FROM agent_job AS j JOIN message AS m ON m.id = j.message_id
     WHERE j.id = a.job_id AND a.status = 'pending' AND a.asked_sender_id IS NULL
    """,
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
    create_index_concurrently(
        db,
        "agent_job_pending_fifo",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS agent_job_pending_fifo ON agent_job (conversation_id, id) "
        "WHERE status = 'pending'",
    )


def down(migrator, db):
    db.execute_sql("DROP INDEX CONCURRENTLY IF EXISTS agent_job_pending_fifo")
    db.execute_sql("ALTER TABLE tool_approval DROP COLUMN IF EXISTS asked_sender_id")
