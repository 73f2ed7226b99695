"""Retention: finished rows leave their tables ``RETENTION_DAYS`` after they finished (issue 11, item 10).

What goes: jobs that are ``done`` or ``failed`` (by ``finished_at``), outbox rows that are ``sent``
or ``failed``, text included (by ``created_at``), approvals that are resolved (by
``resolved_at``; never one whose job is still open), reminders that were delivered or cancelled.
Messages are the conversation's memory: they go only when ``MESSAGE_RETENTION_DAYS`` is set, and
only below the *floor*, the oldest message an open job or an unsent reply still needs. What never
goes: an open job (pending, processing, awaiting_approval), an unsent reply (pending, sending), a
pending approval or reminder.

Each batch is one short statement in its own transaction: it picks the oldest rows through the
table's finder index (migration 0012), ``FOR UPDATE SKIP LOCKED`` so it never waits for a worker,
and deletes them. The tables go in foreign-key order, so no ``ON DELETE SET NULL`` rewrites a row
that is about to be deleted anyway: reminders (they point at outbox rows and jobs), outbox rows,
approvals (they point at jobs), jobs, then messages (jobs and outbox rows point at them).
``message.job_id`` is not a foreign key (0012): a message keeps its turn after the job is gone.

What a delete still sets to NULL, on purpose: ``outbound_message.job_id`` and ``reminder.job_id``
of an unsent reply or a pending reminder whose job was pruned (nothing reads them to deliver);
``agent_job.message_id`` of a finished job whose message was pruned.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from psycopg2.extras import Json

from zenthor.db import database, execute
from zenthor.observability import emit
from zenthor.observability import events as ev

# The sweep runs every few seconds: it deletes at most this many batches per table per run
# (10k rows at the default batch), and the next run goes on.
SWEEP_MAX_BATCHES = 10
# ... and starts no batch after this long, so lease recovery and the next re-check (scheduled
# when the sweep ends) never wait long behind a backlog on a slow database.
SWEEP_BUDGET_S = 2.0
# The sweep_state row that remembers the last run that deleted something (``zenthor ops status``).
STATE_NAME = "retention"
_NO_FLOOR = 2**63 - 1  # no open job and no unsent reply: every message id is below it


@dataclass(frozen=True)
class RetentionPolicy:
    """How old a finished row must be to go (days), and how many rows one batch deletes."""

    days: int
    message_days: int | None
    batch: int

    @classmethod
    def from_settings(cls, *, batch: int | None = None) -> RetentionPolicy:
        """``RETENTION_DAYS``, ``MESSAGE_RETENTION_DAYS`` and ``RETENTION_BATCH`` (or ``batch``)."""
        from zenthor.settings import get_settings

        settings = get_settings()
        return cls(
            settings.RETENTION_DAYS, settings.MESSAGE_RETENTION_DAYS, batch or settings.RETENTION_BATCH
        )


@dataclass
class PruneCounts:
    """Rows deleted (or, for a dry run, that would be) per table."""

    jobs: int = 0
    outbox: int = 0
    approvals: int = 0
    reminders: int = 0
    messages: int = 0

    @property
    def total(self) -> int:
        """All rows, every table."""
        return self.jobs + self.outbox + self.approvals + self.reminders + self.messages

    def as_dict(self) -> dict[str, int]:
        """The counts by table name."""
        return asdict(self)


@dataclass(frozen=True)
class _Finder:
    """A table's finished rows: the predicate and the order that match its finder index, and
    ``final``, the status the delete checks again on the row it removes."""

    table: str
    alias: str
    finished: str
    order: str
    final: str
    before_delete: str = ""  # a data-modifying CTE run on the doomed rows before they go


_CUTOFF = "now() - %(days)s * interval '1 day'"

# Deletion order (see the module docstring): nothing deleted later points at a row deleted earlier.
FINDERS: dict[str, _Finder] = {
    # ▸ reminder_finished_at
    "reminders": _Finder(
        "reminder",
        "r",
        "(r.delivered_at IS NOT NULL OR r.cancelled_at IS NOT NULL) "
        f"AND coalesce(r.delivered_at, r.cancelled_at) < {_CUTOFF}",
        "coalesce(r.delivered_at, r.cancelled_at)",
        "(r.delivered_at IS NOT NULL OR r.cancelled_at IS NOT NULL)",
    ),
    # ▸ outbound_message_finished_created_at; pending and sending rows are never in it.
    "outbox": _Finder(
        "outbound_message",
        "o",
        f"o.status IN ('sent', 'failed') AND o.created_at < {_CUTOFF}",
        "o.created_at",
        "o.status IN ('sent', 'failed')",
    ),
    # ▸ tool_approval_resolved_at. A resumed job reads its approval row, and an operator's retry
    # of a failed resume moves it to the new job: the row stays until its job is itself old enough
    # to go (or gone). A scalar subquery (one agent_job_pkey probe per candidate), not NOT EXISTS,
    # which the planner may turn into a hash anti-join over all of agent_job.
    "approvals": _Finder(
        "tool_approval",
        "a",
        f"a.status <> 'pending' AND a.resolved_at < {_CUTOFF} "
        "AND coalesce((SELECT j.status IN ('done', 'failed') AND j.finished_at < "
        f"{_CUTOFF} FROM agent_job AS j WHERE j.id = a.job_id), true)",
        "a.resolved_at",
        "a.status <> 'pending'",
    ),
    # ▸ agent_job_finished_at; open jobs are never in it.
    "jobs": _Finder(
        "agent_job",
        "j",
        f"j.status IN ('done', 'failed') AND j.finished_at < {_CUTOFF}",
        "j.finished_at",
        "j.status IN ('done', 'failed')",
        # A user message written before 0007 names no job: the history finds its turn through
        # agent_job.message_id. Write the turn on the message before the job goes, or the history
        # would keep the replies and lose the questions.
        """
     keep_turn AS (
    UPDATE message AS m SET job_id = d.id
      FROM agent_job AS d
     WHERE d.id = ANY (ARRAY(SELECT id FROM doomed)) AND m.id = d.message_id AND m.job_id IS NULL
    RETURNING 1),""",
    ),
}

# The rows are locked as they are found, so a worker's update waits for this short
# transaction, or this one skips its row. The delete takes them by primary key (``= ANY`` of the
# found ids): a join back to the CTE could hash every old row of the table instead.
_DELETE_BATCH = """
WITH doomed AS (
    SELECT {alias}.id FROM {table} AS {alias}
     WHERE {finished}
     ORDER BY {order}
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED),{before_delete}
     gone AS (
    DELETE FROM {table} AS {alias}
     WHERE {alias}.id = ANY (ARRAY(SELECT id FROM doomed)) AND {final}
    RETURNING 1)
SELECT count(*) FROM gone
"""

_COUNT = "SELECT count(*) FROM {table} AS {alias} WHERE {finished}"

# The oldest message an open job or an unsent reply may still read. Every row of an open job has
# an id at or above its job's message_id (the user message is written first; resumes and retries
# keep it); an unsent reply quotes its in_reply_to. Each min() reads a partial index of open rows
# only (agent_job_open_fifo, agent_job_processing_locked_until, an open-outbox index).
# least() skips NULLs; with nothing open at all, every id is below the floor.
_MESSAGE_FLOOR = f"""
coalesce(least(
    (SELECT min(message_id) FROM agent_job WHERE status IN ('pending', 'awaiting_approval')),
    (SELECT min(message_id) FROM agent_job WHERE status = 'processing'),
    (SELECT min(in_reply_to) FROM outbound_message WHERE status IN ('pending', 'sending'))
), {_NO_FLOOR})
"""

# Messages, oldest ids first, below the floor (computed in the statement itself, so a job opened a
# moment ago counts). Only the table's first ``batch`` ids are looked at (a message_pkey range), so
# a table whose oldest messages are still recent costs a short index read, not a walk through
# every row below the floor. A batch shorter than ``batch`` ends the run.
_DELETE_MESSAGES = f"""
WITH doomed AS (
    SELECT m.id FROM message AS m
     WHERE m.id < least({_MESSAGE_FLOOR},
                         (SELECT max(w.id) + 1 FROM (SELECT id FROM message ORDER BY id LIMIT %(batch)s) AS w))
       AND m.created_at < now() - %(message_days)s * interval '1 day'
     ORDER BY m.id
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED),
     gone AS (
    DELETE FROM message AS m
     WHERE m.id = ANY (ARRAY(SELECT id FROM doomed))
       AND m.created_at < now() - %(message_days)s * interval '1 day'
    RETURNING 1)
SELECT count(*) FROM gone
"""

# What the message batches delete, given time: every old message below the floor (this one may
# read the old part of the table; it is for ``zenthor ops prune --dry-run`` only).
_COUNT_MESSAGES = f"""
SELECT count(*) FROM message AS m
 WHERE m.id < {_MESSAGE_FLOOR} AND m.created_at < now() - %(message_days)s * interval '1 day'
"""

TABLES = (*FINDERS, "messages")


def delete_statement(table: str) -> str:
    """The SQL of one batch of ``table`` (one of :data:`TABLES`); params ``days``/``message_days``
    and ``batch``. It returns one row: how many rows it deleted."""
    if table == "messages":
        return _DELETE_MESSAGES
    return _DELETE_BATCH.format(**asdict(FINDERS[table]))


def count_statement(table: str) -> str:
    """The SQL that counts what :func:`delete_statement` would delete, through the same predicates."""
    if table == "messages":
        return _COUNT_MESSAGES
    return _COUNT.format(**asdict(FINDERS[table]))


def _params(policy: RetentionPolicy) -> dict[str, Any]:
    return {"days": policy.days, "message_days": policy.message_days, "batch": policy.batch}


def delete_batch(table: str, policy: RetentionPolicy) -> int:
    """Delete one batch of ``table``'s finished rows in its own short transaction; returns how many."""
    with database.atomic():
        return execute(delete_statement(table), _params(policy))[0][0]


def prune(
    policy: RetentionPolicy | None = None,
    *,
    max_batches: int | None = SWEEP_MAX_BATCHES,
    budget_s: float | None = SWEEP_BUDGET_S,
) -> PruneCounts:
    """Delete finished rows older than the policy's days, table by table, batch after batch until
    a batch comes back short, or ``max_batches`` per table ran, or ``budget_s`` has passed (None:
    no limit). Messages only when ``message_days`` is set. Returns what was deleted."""
    policy = policy or RetentionPolicy.from_settings()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    counts = PruneCounts()
    for table in TABLES:
        if table == "messages" and policy.message_days is None:
            continue
        batches = itertools.count() if max_batches is None else range(max_batches)
        for _ in batches:
            if deadline is not None and time.monotonic() > deadline:
                return counts  # the next sweep goes on
            deleted = delete_batch(table, policy)
            setattr(counts, table, getattr(counts, table) + deleted)
            if deleted < policy.batch:
                break
    return counts


def count_prunable(policy: RetentionPolicy | None = None) -> PruneCounts:
    """What :func:`prune` would delete now (no limit on batches), counted, nothing deleted."""
    policy = policy or RetentionPolicy.from_settings()
    counts = PruneCounts()
    for table in TABLES:
        if table == "messages" and policy.message_days is None:
            continue
        setattr(counts, table, execute(count_statement(table), _params(policy))[0][0])
    return counts


def finish_run(counts: PruneCounts, policy: RetentionPolicy, *, trigger: str, dry_run: bool = False) -> None:
    """Emit ``queue.retention.pruned`` (DEBUG when nothing went) and, when rows were deleted,
    remember the run for ``zenthor ops status``."""
    emit(
        ev.RETENTION_PRUNED,
        # The sweep runs every few seconds: only a run that deleted something is news.
        _level=logging.INFO if counts.total else logging.DEBUG,
        days=policy.days,
        dry_run=dry_run,
        **counts.as_dict(),
    )
    if counts.total and not dry_run:
        execute(
            "INSERT INTO sweep_state (name, last_started_at, last_finished_at, last_trigger, last_result) "
            "VALUES (%(name)s, now(), now(), %(trigger)s, %(result)s) "
            "ON CONFLICT (name) DO UPDATE SET last_finished_at = now(), last_trigger = EXCLUDED.last_trigger, "
            "last_result = EXCLUDED.last_result",
            {
                "name": STATE_NAME,
                "trigger": trigger,
                "result": Json({**counts.as_dict(), "days": policy.days}),
            },
        )


def last_run() -> dict[str, Any] | None:
    """The last run that deleted something: when, what started it, its counts (None: never)."""
    rows = execute(
        "SELECT last_finished_at, last_trigger, last_result, extract(epoch FROM now() - last_finished_at) "
        "FROM sweep_state WHERE name = %s",
        (STATE_NAME,),
    )
    if not rows or rows[0][0] is None:
        return None
    finished_at, trigger, result, age_s = rows[0]
    return {
        "finished_at": finished_at.isoformat(),
        "trigger": trigger,
        "counts": result,
        "age_s": round(float(age_s), 1),
    }
