"""The sender's time on a message (issue 11, item 7).

``message.sent_at`` is the provider's send time of a user message (WhatsApp's timestamp, the
webhook's ``sent_at``), NULL when the channel gave none and for every other role. It is kept for
context and audit; a conversation's turns follow acceptance order, never this column. Older rows
stay NULL: their time was never stored.

Not atomic (see ``zenthor.migrations``): adding a nullable column without a default only touches
the catalogue, and ``IF NOT EXISTS`` makes a rerun harmless.
"""

atomic = False


def up(migrator, db):
    db.execute_sql("ALTER TABLE message ADD COLUMN IF NOT EXISTS sent_at TIMESTAMPTZ")


def down(migrator, db):
    db.execute_sql("ALTER TABLE message DROP COLUMN IF EXISTS sent_at")
