"""Tables of the built-in plugins: per-contact memory notes (core-memory) and reminders (core-schedule).

A reminder has no status column: ``delivered_at`` and ``cancelled_at`` say what happened to it, so
pending means both are NULL. The partial index is what the reminders sweep step scans.
"""

STATEMENTS = [
    """
    CREATE TABLE memory_note (
        id          BIGSERIAL PRIMARY KEY,
        channel     TEXT NOT NULL,
        account_id  TEXT NOT NULL,
        sender_id   TEXT NOT NULL,
        text        TEXT NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX memory_note_contact_idx ON memory_note (channel, account_id, sender_id, id)",
    """
    CREATE TABLE reminder (
        id              BIGSERIAL PRIMARY KEY,
        conversation_id BIGINT NOT NULL REFERENCES conversation (id) ON DELETE CASCADE,
        channel         TEXT NOT NULL,
        account_id      TEXT NOT NULL,
        chat_id         TEXT NOT NULL,
        sender_id       TEXT,
        job_id          BIGINT REFERENCES agent_job (id) ON DELETE SET NULL,
        text            TEXT NOT NULL,
        due_at          TIMESTAMPTZ NOT NULL,
        timezone        TEXT NOT NULL DEFAULT 'UTC',
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        delivered_at    TIMESTAMPTZ,
        cancelled_at    TIMESTAMPTZ,
        outbound_id     BIGINT REFERENCES outbound_message (id) ON DELETE SET NULL
    )
    """,
    """
    CREATE INDEX reminder_due_idx ON reminder (due_at, id)
        WHERE delivered_at IS NULL AND cancelled_at IS NULL
    """,
    "CREATE INDEX reminder_conversation_idx ON reminder (conversation_id, id)",
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    for table in ("reminder", "memory_note"):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
