"""An operator's retry is a new job at the back of the line (issue 11, item 11).

``agent_job.retry_of`` names the failed job a job retries (``zenthor ops retry-job``; NULL for
every job that came from an inbound message). No foreign key: a retry is a record of what
happened, and the failed job may be deleted by retention later. The unique partial index
``agent_job_retry_of_uq`` lets a failed job be retried once: a second retry is refused, naming
the first.

Not atomic (see ``zenthor.migrations``): the column only touches the catalogue, the index is
built concurrently, and each statement can be run again.
"""

from zenthor.migrations import create_index_concurrently

atomic = False


def up(migrator, db):
    db.execute_sql("ALTER TABLE agent_job ADD COLUMN IF NOT EXISTS retry_of BIGINT")
    create_index_concurrently(
        db,
        "agent_job_retry_of_uq",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS agent_job_retry_of_uq "
        "ON agent_job (retry_of) WHERE retry_of IS NOT NULL",
    )


def down(migrator, db):
    db.execute_sql("DROP INDEX CONCURRENTLY IF EXISTS agent_job_retry_of_uq")
    db.execute_sql("ALTER TABLE agent_job DROP COLUMN IF EXISTS retry_of")
