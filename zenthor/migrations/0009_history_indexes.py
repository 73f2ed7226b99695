"""History that scales; every foreign key a delete would check gets an index (issue 11, item 9).

``agent_job_message_id`` serves the history's "which job is this user message's" lookup and the
approval answer's join (each was a full scan of ``agent_job``). The others serve the checks a
delete of a job, a message or an outbound row runs on the referencing tables (deleting 100 jobs
without them took 12.7 s at 200k jobs; see docs/plans/issue-11.md S3). All are partial: the
columns are mostly NULL, and ``col = x`` implies ``col IS NOT NULL``, so the lookups still match.
``message_job_id`` (0007) already covers ``message.job_id``; the ``conversation_id`` foreign keys
lead an index each (conversations are never deleted, so their partial ones are enough).

Not atomic (see ``zenthor.migrations``): the indexes are built concurrently; each statement can
be run again.
"""

from zenthor.migrations import create_index_concurrently

atomic = False

# (index, table, column)
INDEXES = [
    ("agent_job_message_id", "agent_job", "message_id"),
    ("tool_approval_job_id", "tool_approval", "job_id"),
    ("outbound_message_job_id", "outbound_message", "job_id"),
    ("outbound_message_in_reply_to", "outbound_message", "in_reply_to"),
    ("reminder_job_id", "reminder", "job_id"),
    ("reminder_outbound_id", "reminder", "outbound_id"),
]


def up(migrator, db):
    for name, table, column in INDEXES:
        create_index_concurrently(
            db,
            name,
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column}) WHERE {column} IS NOT NULL",
        )


def down(migrator, db):
    for name, _, _ in INDEXES:
        db.execute_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
