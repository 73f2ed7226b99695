"""Approvals that understand the answer (issue 11, items 1 and 4).

``message.kind`` says what a message is besides its role: the approval question and its answer
(both stay in the history the next turn reads), the failure reply, a reminder; NULL for every
other message, so rows written before stay valid. ``tool_approval`` gains the status
``superseded`` (the user wrote something other than yes or no; the tool did not run) and
``answer_message_id``, the user message that answered or superseded it (no foreign key, on
purpose: a message's lifetime is not the approval's). ``message_job_id`` finds a job's messages
(the not-run results written when a question is superseded, the history's grouping by job).

Not atomic (see ``zenthor.migrations``): the index is built concurrently, the CHECKs are added
``NOT VALID`` and validated after, so no statement holds a long lock; each can be run again.
"""

from zenthor.migrations import create_index_concurrently

atomic = False

MESSAGE_KINDS = ("approval_question", "approval_answer", "failure", "reminder")
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "superseded")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


STATEMENTS = [
    "ALTER TABLE message ADD COLUMN IF NOT EXISTS kind TEXT",
    # Drop and add in one statement: there is never a moment without the constraint.
    f"""
    ALTER TABLE message DROP CONSTRAINT IF EXISTS message_kind_check,
        ADD CONSTRAINT message_kind_check CHECK (kind IN ({_in(MESSAGE_KINDS)})) NOT VALID
    """,
    "ALTER TABLE message VALIDATE CONSTRAINT message_kind_check",
    f"""
    ALTER TABLE tool_approval DROP CONSTRAINT IF EXISTS tool_approval_status_check,
        ADD CONSTRAINT tool_approval_status_check CHECK (status IN ({_in(APPROVAL_STATUSES)})) NOT VALID
    """,
    "ALTER TABLE tool_approval VALIDATE CONSTRAINT tool_approval_status_check",
    "ALTER TABLE tool_approval ADD COLUMN IF NOT EXISTS answer_message_id BIGINT",
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
    create_index_concurrently(
        db,
        "message_job_id",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS message_job_id ON message (job_id) WHERE job_id IS NOT NULL",
    )


def down(migrator, db):
    db.execute_sql("DROP INDEX CONCURRENTLY IF EXISTS message_job_id")
    db.execute_sql("ALTER TABLE tool_approval DROP COLUMN IF EXISTS answer_message_id")
    db.execute_sql("UPDATE tool_approval SET status = 'expired' WHERE status = 'superseded'")
    db.execute_sql(
        "ALTER TABLE tool_approval DROP CONSTRAINT IF EXISTS tool_approval_status_check, "
        "ADD CONSTRAINT tool_approval_status_check "
        "CHECK (status IN ('pending', 'approved', 'rejected', 'expired'))"
    )
    db.execute_sql("ALTER TABLE message DROP CONSTRAINT IF EXISTS message_kind_check")
    db.execute_sql("ALTER TABLE message DROP COLUMN IF EXISTS kind")
