"""Data that does not grow forever (issue 11, item 10).

``message.job_id`` stops being a foreign key: it is the turn a message belongs to, and stays so
after retention deletes that job. With ``ON DELETE SET NULL`` a pruned job would have cleared it,
and the history would then drop the job's user messages and lose its grouping (see
docs/plans/issue-11.md S8). Only our code writes the column; ``message_job_id`` (0007) still
indexes it.

The finder indexes serve :mod:`zenthor.queue.retention`: each one holds only the finished rows of
its table, ordered by when they finished, so a batch reads the oldest ones and nothing else.

Not atomic (see ``zenthor.migrations``): the indexes are built concurrently; dropping the
constraint takes a short lock on ``message`` and ``agent_job`` (with a lock timeout, retried);
each statement can be run again.
"""



from zenthor.migrations import alter_giving_way, create_index_concurrently

atomic = False

# (index, table, indexed expression, which rows)
INDEXES = [
    ("agent_job_finished_at", "agent_job", "finished_at", "status IN ('done', 'failed')"),
    (
        "outbound_message_finished_created_at",
        "outbound_message",
        "created_at",
        "status IN ('sent', 'failed')",
    ),
    ("tool_approval_resolved_at", "tool_approval", "resolved_at", "status <> 'pending'"),
    (
        "reminder_finished_at",
        "reminder",
        "(coalesce(delivered_at, cancelled_at))",
        "delivered_at IS NOT NULL OR cancelled_at IS NOT NULL",
    ),
]


# Dropping the constraint takes ACCESS EXCLUSIVE on message and agent_job for an instant: it
# gives way to a long reader rather than queue every claim behind it (alter_giving_way).
def _drop_job_fkey(db) -> None:
    alter_giving_way(db, "ALTER TABLE message DROP CONSTRAINT IF EXISTS message_job_id_fkey")


def up(migrator, db):
    _drop_job_fkey(db)
    for name, table, expression, rows in INDEXES:
        create_index_concurrently(
            db,
            name,
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({expression}) WHERE {rows}",
        )


def down(migrator, db):
    for name, _, _, _ in INDEXES:
        db.execute_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    # Jobs pruned meanwhile left their messages' job_id behind: clear those, or the constraint
    # could not be added back. NOT VALID, then VALIDATE, so no long lock is held on message.
    db.execute_sql(
        "UPDATE message AS m SET job_id = NULL WHERE m.job_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM agent_job AS j WHERE j.id = m.job_id)"
    )
    db.execute_sql(
        "ALTER TABLE message DROP CONSTRAINT IF EXISTS message_job_id_fkey, "
        "ADD CONSTRAINT message_job_id_fkey FOREIGN KEY (job_id) REFERENCES agent_job (id) "
        "ON DELETE SET NULL NOT VALID"
    )
    db.execute_sql("ALTER TABLE message VALIDATE CONSTRAINT message_job_id_fkey")
