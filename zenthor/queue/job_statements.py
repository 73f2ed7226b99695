"""Every SQL statement of :mod:`zenthor.queue.jobs`, in one place: the lease statements on
``agent_job`` (claim, hand-over, heartbeat, completion, failure, release, the sweep's requeue and
re-publish), the inserts of new jobs, and an operator's retry.

Statements only: when and how each runs (one statement or one short transaction, fenced by a
lease token) is :mod:`zenthor.queue.jobs`'s business. Partial-index predicates stay literals
(``status = 'pending'``), so the generic plans of the prepared statements still use those indexes
(``tests/queue/test_round_trips.py``, ``tests/queue/test_chain.py``).
"""

from __future__ import annotations

from zenthor.db import Prepared

# A lease counts as expired when locked_until has passed; a legacy row (no lease columns) counts
# as expired once its newest timestamp is older than the legacy window.
EXPIRED = """(
    (j.locked_until IS NOT NULL AND j.locked_until < now())
 OR (j.locked_until IS NULL
     AND coalesce(j.last_heartbeat_at, j.started_at, j.created_at)
         < now() - %(legacy_ms)s * interval '1 millisecond')
)"""


# "Something in this conversation is ahead of job j": an older pending job (FIFO, answered from the
# partial index agent_job_pending_fifo) or another job processing now (from the partial unique
# index). Kept as two probes that match those index predicates exactly; one probe over both
# statuses matches neither index and scans every older job of the table. A job awaiting approval
# is not ahead of anyone (issue 11): only its asker can move it, and the others must not wait.
AHEAD_OF_J = """(
    EXISTS (SELECT 1 FROM agent_job AS older
             WHERE older.conversation_id = j.conversation_id AND older.id < j.id
               AND older.status = 'pending')
 OR EXISTS (SELECT 1 FROM agent_job AS busy
             WHERE busy.conversation_id = j.conversation_id AND busy.status = 'processing'
               AND busy.id <> j.id)
)"""


# What every claim writes: the lease, for the worker, under its fresh token.
TAKE_LEASE = """status = 'processing',
       processor_id = %(worker)s,
       lease_token = %(token)s::uuid,
       locked_until = now() + %(lock_ms)s * interval '1 millisecond',
       started_at = now(),
       last_heartbeat_at = now(),
       finished_at = NULL,
       merged_into = NULL"""


# Collect (issue 14): the turn jobs queued behind the job a claim just took (CTE ``head``: its
# id, conversation, message, kind, attempts, error_reason, previous_status and the mark it had,
# was_merged_into), merged into it. ``mode`` is the conversation's; ``room`` is the batch's size:
# ``collect_max`` when the head is a turn and its conversation collects (its own mode, else its
# channel's from the ``modes`` jsonb, else ``mode``), else 0. ``behind`` is that many pending jobs
# behind the head, in id order (read through agent_job_pending_fifo, so a flooded conversation
# costs a claim no more than the cap), locked in id order as ENQUEUE_DEBOUNCED locks them (the two
# cannot deadlock); the batch is those before the first one that is not a turn (a resume is
# never merged) or not from the head's sender (in a group, each member's messages keep their own
# turn and their own approvals).
# A head merges on its first attempt, and again after one lost lease (a crash or a pause: the turn
# need not be at fault). After a failed attempt, a second lost lease, or when it was itself left
# behind by a batch that failed for good (``was_merged_into``), it is answered alone: a message
# that breaks its turn is isolated, and every other message of the burst is still answered. A
# job an operator retried (``retry_of``) stops a batch too: it was asked for on its own.
# Merged jobs stay pending, marked with the head's id and lease token: the head is processing, so
# every claim of them is refused, and the head's completion (COMPLETE_AND_HOLD's ``answered``)
# finishes exactly the ones its token still marks. A retry, a release, a lost lease: the next
# claim of the head marks them again under its own token, and a stale holder matches nothing.
MERGE_BEHIND = """
mode AS (
    SELECT h.*, coalesce(c.queue_mode, %(modes)s::jsonb ->> c.channel, %(mode)s) AS name
      FROM head AS h JOIN conversation AS c ON c.id = h.conversation_id
), room AS (
    SELECT mode.id, mode.conversation_id, mode.name,
           CASE WHEN merging.collects THEN %(collect_max)s::int ELSE 0 END AS n,
           CASE WHEN merging.collects
                THEN (SELECT m.sender_id FROM message AS m WHERE m.id = mode.message_id) END AS sender
      FROM mode, LATERAL (
           SELECT mode.kind = 'turn' AND mode.name = 'collect'
                  AND (mode.attempts = 0
                       OR (mode.attempts = 1
                           AND (mode.error_reason = 'stale_lease' OR mode.previous_status = 'processing')))
                  AND NOT EXISTS (SELECT 1 FROM agent_job AS f
                                   WHERE f.id = mode.was_merged_into AND f.status = 'failed') AS collects
      ) AS merging
), behind AS (
    SELECT p.id, p.kind, p.retry_of, (SELECT m.sender_id FROM message AS m WHERE m.id = p.message_id) AS sender
      FROM agent_job AS p, room
     WHERE room.n > 0 AND p.conversation_id = room.conversation_id AND p.status = 'pending'
       AND p.id > room.id
     ORDER BY p.id
     LIMIT (SELECT room.n FROM room)
       FOR NO KEY UPDATE OF p
), batch AS (
    SELECT b.id FROM behind AS b
     WHERE b.id < coalesce((SELECT min(s.id) FROM behind AS s, room
                             WHERE s.kind <> 'turn' OR s.retry_of IS NOT NULL
                                OR s.sender IS DISTINCT FROM room.sender),
                           9223372036854775807)
), merged AS (
    UPDATE agent_job AS p SET merged_into = (SELECT room.id FROM room), lease_token = %(token)s::uuid
      FROM batch
     WHERE p.id = batch.id AND p.status = 'pending'
    RETURNING p.id, p.message_id
)"""


# The merged jobs' ids and messages, in order, as two arrays (NULL: none), and the mode applied. A
# resume merges nothing, but the batch its first turn answered joined its job at completion: its
# messages are the resumed turn's too (its reply answers the newest; an answer to the question,
# kind approval_answer, is not one of them).
MERGED_ARRAYS = """(SELECT array_agg(merged.id ORDER BY merged.id) FROM merged),
       coalesce((SELECT array_agg(merged.message_id ORDER BY merged.id) FROM merged),
                CASE WHEN (SELECT head.kind FROM head) = 'resume'
                     THEN (SELECT array_agg(m.id ORDER BY m.id) FROM message AS m, head
                            WHERE m.job_id = head.id AND m.role = 'user' AND m.kind IS NULL
                              AND m.id IS DISTINCT FROM head.message_id) END),
       (SELECT room.name FROM room)"""


# How long the claimed job could not be claimed after it was accepted: the debounce's hold (or a
# retry's backoff, a release's, a re-publish's reset of available_at).
WAITED_MS = (
    """greatest(0, ceil(extract(epoch FROM j.available_at - j.created_at) * 1000))::bigint AS waited_ms"""
)


CLAIM = f"""
WITH head AS (
    UPDATE agent_job AS j
       SET {TAKE_LEASE},
           attempts = CASE WHEN j.status = 'processing' THEN j.attempts + 1 ELSE j.attempts END
     WHERE j.id = %(job_id)s
       AND (   (j.status = 'pending' AND j.available_at <= now())
            OR (j.status = 'processing' AND j.attempts + 1 < j.max_attempts AND {EXPIRED}))
       AND NOT {AHEAD_OF_J}
    RETURNING j.id, j.conversation_id, j.message_id, j.kind, j.payload, j.attempts, j.max_attempts,
              j.locked_until, {WAITED_MS}, j.error_reason,
              (SELECT prev.status FROM agent_job AS prev WHERE prev.id = j.id) AS previous_status,
              (SELECT prev.merged_into FROM agent_job AS prev WHERE prev.id = j.id) AS was_merged_into
), {MERGE_BEHIND}
SELECT head.id, head.conversation_id, head.message_id, head.kind, head.payload, head.attempts,
       head.max_attempts, head.locked_until,
       {MERGED_ARRAYS}, head.waited_ms, head.previous_status
  FROM head
"""

# What the claims of a batch (CLAIM, CLAIM_NEXT) add to their parameters: the mode of a
# conversation that chose none, by channel (jsonb) and over all, and the batch's size.
COLLECT_TYPES = {"modes": "text", "mode": "text", "collect_max": "int"}


# The claim, planned once per connection (issue 13 item 1): the partial-index predicates of
# AHEAD_OF_J are literals, so the generic plan Postgres keeps after five executions still probes
# agent_job_pending_fifo and the processing-only indexes (tests/queue/test_round_trips.py). Planning
# cost ~0.25 ms of Postgres CPU per claim; an EXECUTE of the generic plan ~0.01 ms.
CLAIM_PREPARED = Prepared(
    "zenthor_claim",
    CLAIM,
    {
        "job_id": "bigint",
        "worker": "text",
        "token": "text",
        "lock_ms": "bigint",
        "legacy_ms": "bigint",
        **COLLECT_TYPES,
    },
)


WHY_REFUSED = f"""
SELECT j.status, j.available_at <= now() AS available, {EXPIRED} AS expired,
       greatest(0, ceil(extract(epoch FROM j.available_at - now()) * 1000))::bigint AS available_in_ms,
       j.attempts + 1 < j.max_attempts AS attempts_left, j.processor_id, j.conversation_id,
       {AHEAD_OF_J} AS older_open
  FROM agent_job AS j WHERE j.id = %(job_id)s
"""


HEARTBEAT = """
UPDATE agent_job AS j
   SET locked_until = now() + %s * interval '1 millisecond', last_heartbeat_at = now()
  FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::uuid[]) AS token) AS held
 WHERE j.id = held.id AND j.lease_token = held.token AND j.status = 'processing'
RETURNING j.id
"""


FENCE = "j.id = %(job_id)s AND j.lease_token = %(token)s::uuid AND j.status = 'processing'"


# The completion's first statement (with or without rows of the turn): the fenced update, then the
# conversation's row lock and the route its replies need, in one round trip. ``held`` finds the
# conversation through ``done`` only, so Postgres must run the update (and lock the job row)
# before it can look the conversation up: the lock order job -> conversation holds (I5). A lost
# lease updates nothing, so nothing is locked and no row comes back. ``answered`` (collect, issue
# 14) finishes the jobs the turn answered with the head's (merged into it under the same token;
# looked up by the ids the claim returned, so a turn that merged nothing reads no other row),
# after the conversation's lock: job -> conversation -> the jobs behind, the order accept's
# debounce keeps too (it holds the conversation before it moves them). Also when the turn asks a
# question (awaiting_approval): it read those messages. Their user messages join the head's job
# (``moved``), so every later history reads them before the reply that answered them.
COMPLETE_AND_HOLD = f"""
WITH done AS (
    UPDATE agent_job AS j
       SET status = %(status)s, finished_at = CASE WHEN %(status)s = 'done' THEN now() END,
           locked_until = NULL, error_reason = NULL, error_message = NULL
     WHERE {FENCE}
    RETURNING j.conversation_id
), held AS (
    SELECT c.id, c.channel, c.account_id, c.chat_id FROM conversation AS c
     WHERE c.id = (SELECT done.conversation_id FROM done)
       FOR NO KEY UPDATE
), answered AS (
    UPDATE agent_job AS m
       SET status = 'done', finished_at = now(), locked_until = NULL
     WHERE m.id = ANY(%(merged)s::bigint[]) AND m.conversation_id = (SELECT held.id FROM held)
       AND m.status = 'pending' AND m.merged_into = %(job_id)s AND m.lease_token = %(token)s::uuid
    RETURNING m.id, m.message_id
), moved AS (
    UPDATE message AS um SET job_id = %(job_id)s
      FROM answered WHERE um.id = answered.message_id
)
SELECT done.conversation_id, held.channel, held.account_id, held.chat_id,
       (SELECT count(*) FROM answered)
  FROM done LEFT JOIN held ON held.id = done.conversation_id
"""


# Inside the completion's transaction, as its first statement: a statement the server lost
# aborts the transaction, and complete() runs it again (zenthor.db.PreparedStatementLost).
COMPLETE_AND_HOLD_PREPARED = Prepared(
    "zenthor_complete_and_hold",
    COMPLETE_AND_HOLD,
    {"job_id": "bigint", "token": "text", "status": "text", "merged": "bigint[]"},
)


RETRY = f"""
UPDATE agent_job AS j
   SET status = 'pending', attempts = j.attempts + 1, locked_until = NULL, lease_token = NULL,
       available_at = now() + %(delay_ms)s * interval '1 millisecond',
       error_reason = %(reason)s, error_message = %(message)s
 WHERE {FENCE} AND j.attempts + 1 < j.max_attempts
RETURNING j.attempts
"""


FAIL = f"""
UPDATE agent_job AS j
   SET status = 'failed', attempts = j.attempts + 1, locked_until = NULL, finished_at = now(),
       error_reason = %(reason)s, error_message = %(message)s
 WHERE {FENCE}
RETURNING j.attempts
"""


RELEASE = f"""
UPDATE agent_job AS j
   SET status = 'pending', locked_until = NULL, lease_token = NULL, available_at = now()
 WHERE {FENCE}
RETURNING j.id
"""


# The free release after a cut session, once per job in a row: a job released this way before
# (error_reason still 'session_lost') keeps its lease until it expires, and the sweep's requeue
# counts an attempt, so a turn that itself kills its session cannot loop for free.
RELEASE_SESSION_LOST = f"""
UPDATE agent_job AS j
   SET status = 'pending', locked_until = NULL, lease_token = NULL, available_at = now(),
       error_reason = 'session_lost'
 WHERE {FENCE} AND j.error_reason IS DISTINCT FROM 'session_lost'
RETURNING j.id
"""


REQUEUE_STALE = f"""
WITH stale AS (
    SELECT j.id FROM agent_job AS j
     WHERE j.status = 'processing' AND {EXPIRED}
     ORDER BY j.id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE agent_job AS j
   SET status = CASE WHEN j.attempts + 1 >= j.max_attempts THEN 'failed' ELSE 'pending' END,
       attempts = j.attempts + 1,
       available_at = now(),
       locked_until = NULL,
       lease_token = NULL,
       finished_at = CASE WHEN j.attempts + 1 >= j.max_attempts THEN now() END,
       error_reason = 'stale_lease',
       error_message = 'lease of ' || coalesce(j.processor_id, 'an unknown worker') || ' expired'
  FROM stale
 WHERE j.id = stale.id
RETURNING j.id, j.conversation_id, j.status, j.attempts, j.message_id
"""


# The head of each conversation's line that nobody claimed within the grace period: a lost or
# refused publish. Its available_at moves to now so it is re-published once per grace period.
REPUBLISH_CANDIDATES = f"""
WITH heads AS (
    SELECT j.id FROM agent_job AS j
     WHERE j.status = 'pending'
       AND j.available_at < now() - %(grace_ms)s * interval '1 millisecond'
       AND NOT {AHEAD_OF_J}
     ORDER BY j.available_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE agent_job AS j SET available_at = now()
  FROM heads WHERE j.id = heads.id
RETURNING j.id, j.conversation_id
"""


RESUME = """
UPDATE agent_job AS j
   SET status = 'pending', kind = 'resume', payload = %(payload)s, attempts = 0,
       available_at = now(), locked_until = NULL, lease_token = NULL, finished_at = NULL,
       error_reason = NULL, error_message = NULL
 WHERE j.id = %(job_id)s AND j.status = 'awaiting_approval'
RETURNING j.id, j.conversation_id
"""


# A job that waits for an answer that will not come (the user wrote something else) is closed as
# done: it holds no lease, so only its status fences this write; the reason says why it ended.
CLOSE_AWAITING = """
UPDATE agent_job AS j
   SET status = 'done', finished_at = now(), locked_until = NULL, lease_token = NULL,
       error_reason = %(reason)s, error_message = NULL
 WHERE j.id = %(job_id)s AND j.status = 'awaiting_approval'
RETURNING j.id, j.conversation_id
"""


NEXT_PENDING = """
SELECT j.id FROM agent_job AS j
 WHERE j.conversation_id = %s AND j.status = 'pending'
 ORDER BY j.id LIMIT 1
"""


# The completion's hand-over (issue 13 item 2), sent in the COMMIT's round trip and run after the
# commit: the conversation's oldest pending job, and, when it is available and nothing is ahead
# of it, that job claimed for the same worker under a fresh token, exactly as CLAIM would claim
# it (a pending job: attempts unchanged). ``next`` is read from the snapshot the UPDATE sees; a
# concurrent claim of the same row makes the UPDATE re-check ``status = 'pending'`` and match
# nothing, and a race with another job of the conversation is refused by the partial unique
# index, as for any claim. The first column is the next job's id either way.
CLAIM_NEXT = f"""
WITH next AS (
    SELECT j.id FROM agent_job AS j
     WHERE j.conversation_id = %(conversation_id)s AND j.status = 'pending'
     ORDER BY j.id LIMIT 1
), taken AS (
    UPDATE agent_job AS j
       SET {TAKE_LEASE}
     WHERE j.id = (SELECT next.id FROM next)
       AND j.status = 'pending' AND j.available_at <= now()
       AND NOT {AHEAD_OF_J}
    RETURNING j.id, j.conversation_id, j.message_id, j.kind, j.payload, j.attempts, j.max_attempts,
              j.locked_until, {WAITED_MS}, j.error_reason, 'pending'::text AS previous_status,
              (SELECT prev.merged_into FROM agent_job AS prev WHERE prev.id = j.id) AS was_merged_into
), head AS (SELECT * FROM taken), {MERGE_BEHIND}
SELECT next.id, taken.id, taken.conversation_id, taken.message_id, taken.kind, taken.payload,
       taken.attempts, taken.max_attempts, taken.locked_until,
       {MERGED_ARRAYS}, taken.waited_ms
  FROM next LEFT JOIN taken ON taken.id = next.id
"""


# Planned once per connection like the claim (pg_stat_statements on a private cluster during
# bench.queue: planning was 0.46 ms of CLAIM_NEXT's 0.65 ms and 0.20 of COMPLETE_AND_HOLD's
# 0.34 ms). Their partial-index predicates are literals too (tests/queue/test_chain.py).
CLAIM_NEXT_PREPARED = Prepared(
    "zenthor_claim_next",
    CLAIM_NEXT,
    {"conversation_id": "bigint", "worker": "text", "token": "text", "lock_ms": "bigint", **COLLECT_TYPES},
)


# The only index a claim can collide with (I2): another job of the conversation became processing.
ONE_PROCESSING_INDEX = "agent_job_one_processing_per_conversation"


ENQUEUE = f"""
INSERT INTO agent_job AS j (conversation_id, message_id, kind, payload, max_attempts)
VALUES (%(conversation_id)s, %(message_id)s, %(kind)s, %(payload)s, %(max_attempts)s)
RETURNING j.id, {AHEAD_OF_J}, 0::bigint
"""


# A pending job merged into a turn that runs now (collect): being answered, so no part of a new burst.
IN_LIVE_BATCH = """(p.merged_into IS NOT NULL AND EXISTS (
    SELECT 1 FROM agent_job AS h
     WHERE h.id = p.merged_into AND h.status = 'processing' AND h.lease_token = p.lease_token))"""


# A turn with a debounce (issue 14, item 2): the conversation's burst (its pending turn jobs and
# this one) becomes available after ``debounce_ms`` of quiet, and never later than ``max_ms``
# after the oldest of them arrived. Earlier jobs of the burst are pushed to the same moment (never
# pulled earlier: a retry's backoff stays); a head whose nudge was already sent is refused as not
# yet available and asks again then. The caller holds the conversation's lock (accept), so no
# other writer moves these rows meanwhile; a claim racing the push re-checks the row after it.
# The rows are locked in id order, as a claim's batch locks them (MERGE_BEHIND): no deadlock.
# Jobs merged into the turn that runs now are left out: they are being answered, and their
# arrival must neither cap the new burst's wait nor be moved.
ENQUEUE_DEBOUNCED = f"""
WITH burst AS (
    SELECT least(now() + %(debounce_ms)s * interval '1 millisecond',
                 coalesce(min(p.created_at), now()) + %(max_ms)s * interval '1 millisecond') AS at
      FROM agent_job AS p
     WHERE p.conversation_id = %(conversation_id)s AND p.status = 'pending' AND p.kind = 'turn'
       AND NOT {IN_LIVE_BATCH}
), burst_jobs AS (
    SELECT p.id FROM agent_job AS p
     WHERE p.conversation_id = %(conversation_id)s AND p.status = 'pending' AND p.kind = 'turn'
       AND NOT {IN_LIVE_BATCH}
     ORDER BY p.id
       FOR NO KEY UPDATE
), pushed AS (
    UPDATE agent_job AS p SET available_at = greatest(p.available_at, (SELECT burst.at FROM burst))
      FROM burst_jobs
     WHERE p.id = burst_jobs.id
    RETURNING p.id
)
INSERT INTO agent_job AS j (conversation_id, message_id, kind, payload, max_attempts, available_at)
VALUES (%(conversation_id)s, %(message_id)s, %(kind)s, %(payload)s, %(max_attempts)s,
        (SELECT burst.at FROM burst))
RETURNING j.id, {AHEAD_OF_J},
          greatest(0, ceil(extract(epoch FROM j.available_at - now()) * 1000))::bigint
"""


COMMITTED = """
SELECT j.status IN ('done', 'awaiting_approval') FROM agent_job AS j
 WHERE j.id = %(job_id)s AND j.lease_token = %(token)s::uuid
"""


# A hand-over's claim given back, found by its token (through the processing-only unique index):
# pending again, no attempt counted, as a warm shutdown's release.
RELEASE_HAND_OVER = """
UPDATE agent_job AS j
   SET status = 'pending', locked_until = NULL, lease_token = NULL, available_at = now()
 WHERE j.conversation_id = %(conversation_id)s AND j.status = 'processing'
   AND j.lease_token = %(token)s::uuid
RETURNING j.id
"""


RETRY_TARGET = """
SELECT j.id, j.conversation_id, j.message_id, j.kind, j.payload, j.max_attempts, j.status
  FROM agent_job AS j WHERE j.id = %s
   FOR NO KEY UPDATE
"""


RETRIED_AS = "SELECT id, status FROM agent_job WHERE retry_of = %s"


INSERT_RETRY = """
INSERT INTO agent_job (conversation_id, message_id, kind, payload, max_attempts, retry_of)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING id
"""


# The job's conversation rows go with it to the back of the line: the user's message and any
# call, question or answer. The failure reply stays where the user saw it. A user message of
# before 0007 names no job (the history finds it through agent_job.message_id): it moves too.
MOVE_MESSAGES = """
UPDATE message SET job_id = %(new)s
 WHERE (job_id = %(old)s AND kind IS DISTINCT FROM 'failure')
    OR (id = %(message)s AND job_id IS NULL)
"""


# A failed resume keeps its approval (idempotency key tool_approval:<id>): the tool runs once.
MOVE_APPROVALS = "UPDATE tool_approval SET job_id = %(new)s WHERE job_id = %(old)s"


# What a retried job waits behind (I2): a job awaiting approval does not hold the line.
OPEN = "('pending', 'processing')"


HAS_APPROVAL = "SELECT 1 FROM tool_approval WHERE job_id = %s"


RETRY_PREVIEW = f"""
SELECT j.conversation_id, j.status, j.error_reason, j.error_message,
       (SELECT count(*) FROM agent_job AS o
         WHERE o.conversation_id = j.conversation_id AND o.status IN {OPEN}) AS open_now,
       (SELECT count(*) FROM agent_job AS n
         WHERE n.conversation_id = j.conversation_id AND n.id > j.id
           AND n.status IN ('done', 'awaiting_approval')) AS answered_since,
       r.id, r.status
  FROM agent_job AS j
  LEFT JOIN agent_job AS r ON r.retry_of = j.id
 WHERE j.id = %s
"""


OPEN_AHEAD = f"""
SELECT count(*) FROM agent_job
 WHERE conversation_id = %s AND id < %s AND status IN {OPEN}
"""
