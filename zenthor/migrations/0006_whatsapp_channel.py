"""The WhatsApp channel (issue 9): the account lease's columns, the routes and identities of chats.

``channel_account`` gains what the runtime records about its account (device JID, connection
state, ban, counters flushed with the heartbeat); ``lease_term`` counts acquisitions so events can
tell terms apart. ``outbound_message.resends`` counts sends repeated after an unknown outcome (a
crash between WhatsApp taking a send and the row recording it). ``whatsapp_identity`` is our own
LID ↔ phone map (learned from SenderAlt and whatsmeow's map; it survives a failover in local auth
mode), ``whatsapp_chat`` the JID a person last wrote from, where their replies go.
Every column is nullable or has a default: rows written before this migration stay valid.
"""

STATEMENTS = [
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS device_jid TEXT",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS lease_term BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS client_version TEXT",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS last_error TEXT",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS ban_code INTEGER",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS banned_until TIMESTAMPTZ",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS hold_until TIMESTAMPTZ",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS connected_at TIMESTAMPTZ",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS last_inbound_at TIMESTAMPTZ",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS last_outbound_at TIMESTAMPTZ",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS resends_total BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE channel_account ADD COLUMN IF NOT EXISTS rate_limited_total BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE outbound_message ADD COLUMN IF NOT EXISTS resends INTEGER NOT NULL DEFAULT 0",
    # The owner's claim: the oldest open rows of one account, per channel.
    """
    CREATE INDEX IF NOT EXISTS outbound_message_owner_open ON outbound_message (channel, account_id, id)
        WHERE status IN ('pending', 'sending')
    """,
    # The rate limiter's memory after a takeover: what the account sent in the last minute.
    """
    CREATE INDEX IF NOT EXISTS outbound_message_owner_sent ON outbound_message (channel, account_id, sent_at)
        WHERE status = 'sent'
    """,
    """
    CREATE TABLE IF NOT EXISTS whatsapp_identity (
        account_id TEXT NOT NULL,
        lid        TEXT NOT NULL,
        phone      TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, lid)
    )
    """,
    "CREATE INDEX IF NOT EXISTS whatsapp_identity_phone ON whatsapp_identity (account_id, phone)",
    """
    CREATE TABLE IF NOT EXISTS whatsapp_chat (
        account_id TEXT NOT NULL,
        chat_id    TEXT NOT NULL,
        reply_jid  TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, chat_id)
    )
    """,
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    db.execute_sql("DROP TABLE IF EXISTS whatsapp_chat")
    db.execute_sql("DROP TABLE IF EXISTS whatsapp_identity")
    db.execute_sql("DROP INDEX IF EXISTS outbound_message_owner_sent")
    db.execute_sql("DROP INDEX IF EXISTS outbound_message_owner_open")
    db.execute_sql("ALTER TABLE outbound_message DROP COLUMN IF EXISTS resends")
    for column in (
        "device_jid", "lease_term", "client_version", "last_error", "ban_code", "banned_until",
        "hold_until", "connected_at", "last_inbound_at", "last_outbound_at", "resends_total",
        "rate_limited_total",
    ):
        db.execute_sql(f"ALTER TABLE channel_account DROP COLUMN IF EXISTS {column}")
