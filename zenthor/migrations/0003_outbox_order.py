"""Indexes for the outbox (issue: ingress): per-conversation delivery order and the stuck-row sweep.

A claim checks that no older row of the same conversation is still unsent; the partial index keeps
that check (and the sweep's search for stuck rows) cheap however large the table of sent rows grows.
"""

STATEMENTS = [
    """
    CREATE INDEX IF NOT EXISTS outbound_message_open_fifo ON outbound_message (conversation_id, id)
        WHERE status IN ('pending', 'sending')
    """,
    """
    CREATE INDEX IF NOT EXISTS outbound_message_pending_available_at ON outbound_message (available_at)
        WHERE status = 'pending'
    """,
    """
    CREATE INDEX IF NOT EXISTS outbound_message_sending_locked_until ON outbound_message (locked_until)
        WHERE status = 'sending'
    """,
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    for name in (
        "outbound_message_open_fifo",
        "outbound_message_pending_available_at",
        "outbound_message_sending_locked_until",
    ):
        db.execute_sql(f"DROP INDEX IF EXISTS {name}")
