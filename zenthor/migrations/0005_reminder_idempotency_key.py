"""Reminders remember the tool call that made them (idempotency across retried turns).

``idempotency_key`` names the logical tool call (``tool_approval:<id>`` for an approved
``remind``): a retried resume job runs the tool again with the same key, and the unique index makes
``INSERT ... ON CONFLICT DO NOTHING`` create one row, even for two concurrent runs. The column is
nullable and Postgres treats NULLs as distinct, so rows written without a key (older versions, calls
with no key) stay valid and never conflict.
"""

STATEMENTS = [
    "ALTER TABLE reminder ADD COLUMN IF NOT EXISTS idempotency_key TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS reminder_idempotency_key_uq ON reminder (idempotency_key)",
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    db.execute_sql("DROP INDEX IF EXISTS reminder_idempotency_key_uq")
    db.execute_sql("ALTER TABLE reminder DROP COLUMN IF EXISTS idempotency_key")
