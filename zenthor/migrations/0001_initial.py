"""The initial schema: every table of docs/architecture.md and the indexes that carry invariants I1-I3.

Written as SQL so the partial indexes read exactly as the invariants they enforce. Every lease
column has a default (or is nullable), so a row inserted without them, as an older version
would, stays valid.
"""

STATEMENTS = [
    """
    CREATE TABLE conversation (
        id          BIGSERIAL PRIMARY KEY,
        channel     TEXT NOT NULL,
        account_id  TEXT NOT NULL,
        chat_id     TEXT NOT NULL,
        title       TEXT,
        created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
        CONSTRAINT conversation_channel_account_chat_key UNIQUE (channel, account_id, chat_id)
    )
    """,
    """
    CREATE TABLE contact (
        id            BIGSERIAL PRIMARY KEY,
        channel       TEXT NOT NULL,
        account_id    TEXT NOT NULL,
        sender_id     TEXT NOT NULL,
        display_name  TEXT,
        allowed       BOOLEAN NOT NULL DEFAULT false,
        first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
        CONSTRAINT contact_channel_account_sender_key UNIQUE (channel, account_id, sender_id)
    )
    """,
    """
    CREATE TABLE message (
        id                  BIGSERIAL PRIMARY KEY,
        conversation_id     BIGINT NOT NULL REFERENCES conversation (id) ON DELETE CASCADE,
        role                TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
        content             TEXT NOT NULL DEFAULT '',
        sender_id           TEXT,
        provider_message_id TEXT,
        job_id              BIGINT,
        tool_calls          JSONB,
        tool_call_id        TEXT,
        created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX message_conversation_id_idx ON message (conversation_id, id)",
    """
    CREATE TABLE agent_job (
        id                BIGSERIAL PRIMARY KEY,
        conversation_id   BIGINT NOT NULL REFERENCES conversation (id) ON DELETE CASCADE,
        message_id        BIGINT REFERENCES message (id) ON DELETE SET NULL,
        kind              TEXT NOT NULL DEFAULT 'turn' CHECK (kind IN ('turn', 'resume')),
        status            TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'processing', 'awaiting_approval', 'done', 'failed')),
        payload           JSONB,
        attempts          INTEGER NOT NULL DEFAULT 0,
        max_attempts      INTEGER NOT NULL DEFAULT 3,
        available_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        processor_id      TEXT,
        lease_token       UUID,
        locked_until      TIMESTAMPTZ,
        started_at        TIMESTAMPTZ,
        last_heartbeat_at TIMESTAMPTZ,
        finished_at       TIMESTAMPTZ,
        error_reason      TEXT,
        error_message     TEXT,
        created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # I2: at most one processing job per conversation, enforced by the database itself.
    """
    CREATE UNIQUE INDEX agent_job_one_processing_per_conversation
        ON agent_job (conversation_id) WHERE status = 'processing'
    """,
    # The sweep finds expired leases through this index.
    "CREATE INDEX agent_job_processing_locked_until ON agent_job (locked_until) WHERE status = 'processing'",
    # FIFO: the oldest open job of a conversation; awaiting_approval also holds the line.
    """
    CREATE INDEX agent_job_open_fifo ON agent_job (conversation_id, id)
        WHERE status IN ('pending', 'awaiting_approval')
    """,
    "CREATE INDEX agent_job_pending_available_at ON agent_job (available_at) WHERE status = 'pending'",
    "ALTER TABLE message ADD CONSTRAINT message_job_id_fkey "
    "FOREIGN KEY (job_id) REFERENCES agent_job (id) ON DELETE SET NULL",
    """
    CREATE TABLE inbound_dedupe (
        id                  BIGSERIAL PRIMARY KEY,
        channel             TEXT NOT NULL,
        account_id          TEXT NOT NULL,
        provider_message_id TEXT NOT NULL,
        created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
        CONSTRAINT inbound_dedupe_key UNIQUE (channel, account_id, provider_message_id)
    )
    """,
    "CREATE INDEX inbound_dedupe_created_at_idx ON inbound_dedupe (created_at)",
    """
    CREATE TABLE outbound_message (
        id                  BIGSERIAL PRIMARY KEY,
        conversation_id     BIGINT NOT NULL REFERENCES conversation (id) ON DELETE CASCADE,
        job_id              BIGINT REFERENCES agent_job (id) ON DELETE SET NULL,
        in_reply_to         BIGINT REFERENCES message (id) ON DELETE SET NULL,
        channel             TEXT NOT NULL,
        account_id          TEXT NOT NULL,
        chat_id             TEXT NOT NULL,
        text                TEXT NOT NULL,
        status              TEXT NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
        attempts            INTEGER NOT NULL DEFAULT 0,
        available_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
        processor_id        TEXT,
        lease_token         UUID,
        locked_until        TIMESTAMPTZ,
        provider_message_id TEXT,
        last_error          TEXT,
        created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
        sent_at             TIMESTAMPTZ
    )
    """,
    "CREATE INDEX outbound_message_status_channel_account ON outbound_message (status, channel, account_id)",
    """
    CREATE TABLE tool_approval (
        id              BIGSERIAL PRIMARY KEY,
        conversation_id BIGINT NOT NULL REFERENCES conversation (id) ON DELETE CASCADE,
        job_id          BIGINT REFERENCES agent_job (id) ON DELETE SET NULL,
        tool_name       TEXT NOT NULL,
        tool_input      JSONB NOT NULL DEFAULT '{}'::jsonb,
        tool_call_id    TEXT,
        status          TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
        created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at      TIMESTAMPTZ,
        resolved_at     TIMESTAMPTZ
    )
    """,
    "CREATE INDEX tool_approval_pending_idx ON tool_approval (conversation_id) WHERE status = 'pending'",
    """
    CREATE TABLE channel_account (
        id           BIGSERIAL PRIMARY KEY,
        channel      TEXT NOT NULL,
        account_id   TEXT NOT NULL,
        owner_id     TEXT,
        lease_token  UUID,
        expires_at   TIMESTAMPTZ,
        heartbeat_at TIMESTAMPTZ,
        auth_mode    TEXT NOT NULL DEFAULT 'local',
        state        TEXT NOT NULL DEFAULT 'idle',
        updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        CONSTRAINT channel_account_channel_account_key UNIQUE (channel, account_id)
    )
    """,
    """
    CREATE TABLE plugin_status (
        id          BIGSERIAL PRIMARY KEY,
        plugin_id   TEXT NOT NULL UNIQUE,
        source      TEXT NOT NULL,
        version     TEXT,
        status      TEXT NOT NULL CHECK (status IN ('activated', 'conflict', 'invalid', 'disabled')),
        diagnostics JSONB NOT NULL DEFAULT '[]'::jsonb,
        load_cycle  BIGINT NOT NULL DEFAULT 0,
        updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # One row per periodic task: when it last ran and when its next sub-minute re-check is due.
    """
    CREATE TABLE sweep_state (
        name             TEXT PRIMARY KEY,
        last_started_at  TIMESTAMPTZ,
        last_finished_at TIMESTAMPTZ,
        last_trigger     TEXT,
        last_result      JSONB,
        next_check_at    TIMESTAMPTZ
    )
    """,
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    for table in (
        "sweep_state",
        "plugin_status",
        "channel_account",
        "tool_approval",
        "outbound_message",
        "inbound_dedupe",
    ):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    db.execute_sql("ALTER TABLE message DROP CONSTRAINT IF EXISTS message_job_id_fkey")
    for table in ("agent_job", "message", "contact", "conversation"):
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
