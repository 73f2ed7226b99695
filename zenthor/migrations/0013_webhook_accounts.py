"""Webhook accounts with their own secrets, and a cost limit per sender (issue 12).

``webhook_account``: one row per account (``zenthor webhook add-account``): its secrets, a JSON
list of ``{"secret": <Fernet token>, "created_at": <ISO time>, "expires_at": <ISO time or
null>}``, newest first (each encrypted with ``ZENTHOR_SECRET_KEY``, so a dump alone reveals no
secret), its callback URL and its contact policy. ``webhook_sender_bucket``: the token bucket of
one (account, sender), updated in the transaction that accepts the sender's message, so the limit
holds across every gateway process.

Depends on no other migration (0011 and 0012 were written at the same time). Not atomic (see
``zenthor.migrations``): new tables only, each statement idempotent, so a rerun is harmless.
"""

atomic = False

STATEMENTS = [
    """
    CREATE TABLE IF NOT EXISTS webhook_account (
        account_id TEXT PRIMARY KEY CHECK (length(account_id) BETWEEN 1 AND 128),
        secrets JSONB NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(secrets) = 'array'),
        callback_url TEXT,
        contact_policy TEXT NOT NULL DEFAULT 'open'
            CHECK (contact_policy IN ('open', 'allowlist', 'disabled')),
        allow_from TEXT NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS webhook_sender_bucket (
        account_id TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        tokens DOUBLE PRECISION NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, sender_id)
    )
    """,
]


def up(migrator, db):
    for statement in STATEMENTS:
        db.execute_sql(statement)


def down(migrator, db):
    db.execute_sql("DROP TABLE IF EXISTS webhook_sender_bucket")
    db.execute_sql("DROP TABLE IF EXISTS webhook_account")
