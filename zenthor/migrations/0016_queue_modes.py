"""Queue modes (issue 14): how a conversation's burst of messages is answered.

- ``conversation.queue_mode``: ``collect`` (one turn answers the messages queued behind the one
  it claims) or ``followup`` (a turn per message); NULL: the channel's or the global default
  (``QUEUE_MODE_<CHANNEL>``, ``QUEUE_MODE``). Set by the user's ``/queue`` command.
- ``conversation.debounce_ms``: the conversation's own debounce (``/debounce``); NULL: the
  global ``QUEUE_DEBOUNCE_MS``.
- ``agent_job.merged_into``: the job whose turn answered (``done``) or is answering (``pending``,
  under that job's lease token) this one. A job claimed as the head of a batch has it NULL.

Not atomic (see ``zenthor.migrations``): every statement only touches the catalogue (columns
without a default; the checks are added ``NOT VALID``, so adding them takes its lock only for
the catalogue, then validated under a lock that lets writers on), and each can be run again.
"""

from zenthor.migrations import alter_giving_way

atomic = False


def up(migrator, db):
    # Each takes ACCESS EXCLUSIVE for an instant; it gives way to a long reader rather than queue
    # every claim, heartbeat and accept behind it.
    alter_giving_way(db, "ALTER TABLE conversation ADD COLUMN IF NOT EXISTS queue_mode TEXT")
    alter_giving_way(db, "ALTER TABLE conversation ADD COLUMN IF NOT EXISTS debounce_ms INTEGER")
    alter_giving_way(db, "ALTER TABLE agent_job ADD COLUMN IF NOT EXISTS merged_into BIGINT")
    for name, check in (
        ("conversation_queue_mode_check", "queue_mode IN ('collect', 'followup')"),
        ("conversation_debounce_ms_check", "debounce_ms BETWEEN 0 AND 600000"),
    ):
        alter_giving_way(
            db,
            f"DO $$ BEGIN ALTER TABLE conversation ADD CONSTRAINT {name} CHECK ({check}) NOT VALID; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        # Validation scans the table under a lock that lets writers on (SHARE UPDATE EXCLUSIVE).
        db.execute_sql(f"ALTER TABLE conversation VALIDATE CONSTRAINT {name}")


def down(migrator, db):
    db.execute_sql("ALTER TABLE agent_job DROP COLUMN IF EXISTS merged_into")
    db.execute_sql("ALTER TABLE conversation DROP COLUMN IF EXISTS debounce_ms")
    db.execute_sql("ALTER TABLE conversation DROP COLUMN IF EXISTS queue_mode")
