"""Tool approvals without holding a worker: ask, end the job, resume it when the user answers.

A turn that wants a tool which requires approval stores a ``tool_approval`` row naming the sender
it asks (``asked_sender_id``) and ends its job as ``awaiting_approval`` (the lease is released; the
job does not hold its conversation's line, so other members of a group are answered meanwhile).
:func:`handle_reply`, called by ingress inside its transaction, reads the user's next message:

- only the asker's message counts; anyone else's is an ordinary turn and the question stays open;
- an unambiguous yes or no (:func:`parse_answer`) resolves the approval (as ``expired`` when it
  comes after ``expires_at``) and puts the same job back in line as a ``resume``; the answer
  becomes part of that job (``message.kind = 'approval_answer'``), after the question it answers;
- anything else closes the question unanswered (``superseded``): the call gets a "not run" result,
  the waiting job is closed, and the message starts a normal turn that reads all of it.

:func:`expire_due_approvals`, a sweep step, resumes the job with ``expired`` once
``APPROVAL_TTL_S`` has passed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from zenthor.db import execute
from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.queue import close_awaiting, resume_job

APPROVED, REJECTED, EXPIRED, SUPERSEDED = "approved", "rejected", "expired", "superseded"

# --- the answer grammar ---------------------------------------------------------------------------
# Only an unambiguous answer counts: a false approval (a reminder at the wrong time, a message the
# user did not want sent) costs far more than one more round trip, where the model reads the reply
# and asks again. Entries are folded (lower case, no accents, no apostrophes). Single letters
# ("y", "n", "k", "s") and words that often start other sentences ("go", "nem") are left out.
_YES_PHRASES = (
    # English
    "yes", "yeah", "yep", "yup", "sure", "sure thing", "ok", "okay", "okey", "alright", "all right",
    "approve", "approved", "i approve", "confirm", "confirmed", "go ahead", "do it", "please do",
    "of course", "absolutely", "definitely", "sounds good",
    # Portuguese
    "sim", "pode", "pode sim", "sim pode", "ok pode", "pode fazer", "pode ser", "claro",
    "claro que sim", "com certeza", "isso", "isso mesmo", "confirmo", "confirma", "confirmado",
    "aprovo", "aprovado", "manda", "manda ver", "bora", "beleza", "fechado", "certo", "perfeito",
    "ta bom", "esta bem",
)  # fmt: skip
_NO_PHRASES = (
    # English
    "no", "nope", "nah", "no thanks", "no thank you", "dont", "do not", "reject", "rejected", "deny",
    "denied", "cancel", "cancel it", "stop", "not now", "no way", "never mind", "nevermind",
    # Portuguese
    "nao", "nao pode", "nao quero", "negativo", "cancela", "cancelar", "cancelado", "rejeito",
    "recuso", "de jeito nenhum", "agora nao", "melhor nao", "deixa pra la", "nem pensar",
)  # fmt: skip
# Politeness that may follow an answer ("yes please", "não, obrigado") but is no answer itself.
_TAIL_PHRASES = (
    "please", "pls", "thanks", "thank you", "thx", "por favor", "pfv", "obrigado", "obrigada", "valeu",
)  # fmt: skip
_YES_EMOJI = frozenset("\U0001f44d\u2705\u2714\u2611\U0001f44c\U0001f197")  # 👍 ✅ ✔ ☑ 👌 🆗
_NO_EMOJI = frozenset("\U0001f44e\u274c\u2716\U0001f6ab\u26d4\U0001f645")  # 👎 ❌ ✖ 🚫 ⛔ 🙅

_YES, _NO, _TAIL = "yes", "no", "tail"
# Phrases as tuples of tokens; an emoji is a token of its own, so it is a one-token phrase.
_PHRASES: dict[tuple[str, ...], str] = {
    **{tuple(p.split()): _TAIL for p in _TAIL_PHRASES},
    **{tuple(p.split()): _YES for p in _YES_PHRASES},
    **{tuple(p.split()): _NO for p in _NO_PHRASES},
    **{(e,): _YES for e in _YES_EMOJI},
    **{(e,): _NO for e in _NO_EMOJI},
}
_LONGEST_PHRASE = max(len(words) for words in _PHRASES)
# Emoji presentation and variation selectors, joiners, skin tones and gender signs change how an
# emoji looks, not what it says: "👍🏽" is "👍". Apostrophes go too: "don't" is "dont".
_IGNORED = frozenset("\ufe0e\ufe0f\u200d\u2640\u2642'\u2019") | frozenset(
    chr(c) for c in range(0x1F3FB, 0x1F400)
)
MAX_ANSWER_CHARS = 60
MAX_ANSWER_TOKENS = 8


def _fold(text: str) -> str:
    """Compatibility forms, case and accents folded away: "NÃO" and "nao" read the same."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c for c in text if c not in _IGNORED).strip()


def _tokens(text: str) -> list[str]:
    """Words (runs of letters and digits) and symbols (one token each: 👍, but also 😂 or $, which
    match no phrase); punctuation and spaces only separate."""
    tokens: list[str] = []
    word: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category[0] in "LN":
            word.append(char)
            continue
        if word:
            tokens.append("".join(word))
            word = []
        if category[0] not in "PZ" and not char.isspace():
            tokens.append(char)
    if word:
        tokens.append("".join(word))
    return tokens


def _phrases(tokens: list[str]) -> list[str] | None:
    """Cover ``tokens`` left to right with the longest known phrases and return their kinds;
    None when a token is left over."""
    kinds: list[str] = []
    index = 0
    while index < len(tokens):
        for length in range(min(_LONGEST_PHRASE, len(tokens) - index), 0, -1):
            kind = _PHRASES.get(tuple(tokens[index : index + length]))
            if kind is not None:
                kinds.append(kind)
                index += length
                break
        else:
            return None
    return kinds


def parse_answer(text: str | None) -> str | None:
    """``approved`` or ``rejected`` when ``text`` is an unambiguous yes or no (English or
    Portuguese words, their plain synonyms, 👍/👎-like emoji, with punctuation and politeness such as
    "yes please" or "não, obrigado"); None for anything else ("yes but at 6pm", "y", "ok 👎").
    """
    if not text:
        return None
    stripped = text.strip()
    if "?" in stripped or "¿" in stripped or stripped.endswith(("...", "…")):
        return None  # "sim?", "ok?", "certo?", "ok…": a question back or hesitation, not consent
    folded = _fold(text)
    if not folded or len(folded) > MAX_ANSWER_CHARS:
        return None
    tokens = _tokens(folded)
    if not tokens or len(tokens) > MAX_ANSWER_TOKENS:
        return None
    kinds = _phrases(tokens)
    if not kinds or kinds[0] == _TAIL:
        return None  # "thanks, yes" / "please" alone: not a plain answer
    answers = {kind for kind in kinds if kind != _TAIL}
    if answers == {_YES}:
        return APPROVED
    if answers == {_NO}:
        return REJECTED
    return None  # "yes no", "👍👎": both


def idempotency_key(approval_id: int) -> str:
    """The key an approved call runs with: the same on every retry of its resume job."""
    return f"tool_approval:{approval_id}"


@dataclass(frozen=True)
class ResolvedApproval:
    """An approval the user (or the clock) resolved, and what became of its job: back in line
    (approved, rejected, expired) or closed (superseded)."""

    approval_id: int
    job_id: int
    conversation_id: int
    decision: str


# What the model reads as the result of a call the user did not approve, when they wrote something
# else instead of yes or no (the message itself follows in the history).
NOT_APPROVED_RESULT = (
    "Not run: the user did not approve this call. Instead of answering yes or no they wrote the "
    "next message; read it before calling the tool again (a new call needs a new approval)."
)
NOT_REACHED_RESULT = (
    "Not run: an earlier call of this step waited for the user's approval, which they did not "
    "give. Call it again if it is still needed."
)

# Newest first: the question this sender has just read (only the member who was asked can answer;
# a row from before 0008 names nobody and anyone may). Locked, so a second reply of the same
# conversation (serialised by accept's conversation lock anyway) or the sweep cannot resolve it
# too. ``late``: past expires_at, though the sweep has not expired it yet. ``overtaken``: since the
# question, the assistant answered another message of the same person (their next message ran
# while this one waited): a "yes" now most likely answers that newer reply, not this question.
_PENDING_FOR_SENDER = """
SELECT a.id, a.job_id, a.tool_call_id, a.expires_at <= now() AS late,
       EXISTS (
           SELECT 1 FROM message AS later
             JOIN agent_job AS lj ON lj.id = later.job_id
             JOIN message AS theirs ON theirs.id = lj.message_id
            WHERE later.conversation_id = a.conversation_id AND later.role = 'assistant'
              AND later.job_id <> a.job_id
              AND later.id > (SELECT max(q.id) FROM message AS q WHERE q.job_id = a.job_id)
              AND (a.asked_sender_id IS NULL OR theirs.sender_id = a.asked_sender_id)
       ) AS overtaken
  FROM tool_approval AS a
  JOIN agent_job AS j ON j.id = a.job_id AND j.status = 'awaiting_approval'
 WHERE a.conversation_id = %(conversation)s AND a.status = 'pending'
   AND (a.asked_sender_id = %(sender)s OR a.asked_sender_id IS NULL)
 ORDER BY a.id DESC LIMIT 1
   FOR UPDATE OF a
"""

# Only read when the sender has no question of their own: is someone else's open (DEBUG event)?
# The asker's other open questions, superseded when their newer turn asks again, so each member
# has at most one question open (their next yes answers the one they read last).
_PENDING_OF_ASKER = """
SELECT a.id, a.job_id, a.tool_call_id FROM tool_approval AS a
  JOIN agent_job AS j ON j.id = a.job_id AND j.status = 'awaiting_approval'
 WHERE a.conversation_id = %(conversation)s AND a.status = 'pending'
   AND a.asked_sender_id = %(sender)s AND a.job_id <> %(job)s
 ORDER BY a.id
   FOR UPDATE OF a
"""

_RESOLVE = """
UPDATE tool_approval SET status = %s, resolved_at = now(), answer_message_id = %s
 WHERE id = %s AND status = 'pending'
RETURNING id
"""

# The answer is part of the job it answered: the next turns read it right after the question.
_ATTACH_ANSWER = "UPDATE message SET job_id = %s, kind = 'approval_answer' WHERE id = %s"

# Every call of the job's last tool-call step that has no result yet gets a "not run" result, so
# the next turn reads call, result, question, then the user's message (one statement; the job's
# rows are found through message_job_id).
_NOT_RUN_RESULTS = """
WITH last_step AS (
    SELECT m.conversation_id, m.tool_calls FROM message AS m
     WHERE m.job_id = %(job_id)s AND m.role = 'assistant' AND m.tool_calls IS NOT NULL
     ORDER BY m.id DESC LIMIT 1
)
INSERT INTO message (conversation_id, role, content, tool_call_id, job_id)
SELECT s.conversation_id, 'tool',
       CASE WHEN c.call ->> 'id' = %(asked)s THEN %(not_approved)s ELSE %(not_reached)s END,
       c.call ->> 'id', %(job_id)s
  FROM last_step AS s, jsonb_array_elements(s.tool_calls) WITH ORDINALITY AS c(call, n)
 WHERE NOT EXISTS (SELECT 1 FROM message AS r
                    WHERE r.job_id = %(job_id)s AND r.role = 'tool' AND r.tool_call_id = c.call ->> 'id')
 ORDER BY c.n
RETURNING id
"""

SUPERSEDED_REASON = "approval_superseded"
EXPIRED_REASON = "approval_expired"


def _resolved(
    approval_id: int, job_id: int, conversation_id: int, decision: str, source: str
) -> ResolvedApproval:
    emit(
        ev.APPROVAL_RESOLVED,
        job_id=job_id,
        conversation_id=conversation_id,
        approval_id=approval_id,
        decision=decision,
        source=source,
    )
    return ResolvedApproval(approval_id, job_id, conversation_id, decision)


def _resume(
    approval_id: int,
    job_id: int,
    conversation_id: int,
    decision: str,
    *,
    answer_message_id: int | None = None,
    late: bool = False,
) -> ResolvedApproval | None:
    if not execute(_RESOLVE, (decision, answer_message_id, approval_id)):
        return None  # someone else resolved it first
    payload: dict = {"approval_id": approval_id, "decision": decision}
    if late:
        payload["late"] = True  # the user answered, too late: the turn tells them so
    if not resume_job(job_id, payload):
        return None
    return _resolved(
        approval_id, job_id, conversation_id, decision, "answer" if answer_message_id is not None else "sweep"
    )


def _supersede(
    approval_id: int,
    job_id: int,
    conversation_id: int,
    tool_call_id: str | None,
    message_id: int | None,
    source: str = "answer",
) -> ResolvedApproval | None:
    if not execute(_RESOLVE, (SUPERSEDED, message_id, approval_id)):
        return None
    execute(
        _NOT_RUN_RESULTS,
        {
            "job_id": job_id,
            "asked": tool_call_id,
            "not_approved": NOT_APPROVED_RESULT,
            "not_reached": NOT_REACHED_RESULT,
        },
    )
    # The job will not run again: it stops holding the line, and the reply's own turn is next.
    close_awaiting(job_id, SUPERSEDED_REASON)
    return _resolved(approval_id, job_id, conversation_id, SUPERSEDED, source)


def handle_reply(
    conversation_id: int, message_id: int, text: str, *, sender_id: str | None
) -> ResolvedApproval | None:
    """Settle the pending approval that asked ``sender_id`` with their message ``message_id``
    (caller's transaction, after the message is stored; the caller holds the conversation row).

    - Nothing pending for this sender: None; the message is an ordinary turn. In a group,
      another member's question stays open for them, and this message does not wait behind it.
    - Past ``expires_at`` (the sweep has not run yet): an unambiguous yes or no resolves it as
      ``expired``; the job resumes, does not run the tool, and tells the user it was too late.
    - An unambiguous yes or no (:func:`parse_answer`): the approval is resolved, its job is back
      in line as a ``resume`` and the message joins that job as its answer. The decision is
      ``approved`` or ``rejected``; no new turn is needed.
    - Anything else: the approval is ``superseded`` (the tool did not run; its call gets a "not
      run" result), the waiting job is closed, and the decision is ``superseded``: the caller
      starts a normal turn for the message, which reads the question and this reply.
    """
    rows = execute(_PENDING_FOR_SENDER, {"conversation": conversation_id, "sender": sender_id})
    if not rows:
        # No question of this sender's: an ordinary turn (another member's question, if any,
        # stays open). Not counted: that would cost every message a statement.
        return None
    approval_id, job_id, tool_call_id, late, overtaken = rows[0]
    # A yes or no counts only as the answer to the last thing the assistant said to this person.
    decision = None if overtaken else parse_answer(text)
    if decision is None:
        return _supersede(approval_id, job_id, conversation_id, tool_call_id, message_id)
    if late:
        decision = EXPIRED
    resolved = _resume(
        approval_id, job_id, conversation_id, decision, answer_message_id=message_id, late=bool(late)
    )
    if resolved is not None:
        execute(_ATTACH_ANSWER, (job_id, message_id))
    return resolved


_WAITING_CALLS = """
SELECT a.tool_call_id FROM tool_approval AS a
 WHERE a.conversation_id = %s AND a.status = 'pending' AND a.job_id <> %s AND a.tool_call_id IS NOT NULL
"""


def waiting_call_ids(conversation_id: int, job_id: int) -> set[str]:
    """The tool calls of other jobs in the conversation that still wait for their asker's answer."""
    return {row[0] for row in execute(_WAITING_CALLS, (conversation_id, job_id))}


def supersede_earlier_questions(conversation_id: int, job_id: int, asker: str | None) -> int:
    """Close ``asker``'s other open questions in the conversation as superseded (caller's
    transaction: the one that stores job ``job_id``'s new question). Their jobs are closed and
    their calls get "not run" results; returns how many were closed."""
    if asker is None:
        return 0
    closed = 0
    rows = execute(_PENDING_OF_ASKER, {"conversation": conversation_id, "sender": asker, "job": job_id})
    for approval_id, earlier_job, tool_call_id in rows:
        if _supersede(approval_id, earlier_job, conversation_id, tool_call_id, None, "new_question"):
            closed += 1
    return closed


_DUE = """
SELECT a.id, a.job_id, a.conversation_id FROM tool_approval AS a
 WHERE a.status = 'pending' AND a.expires_at < now()
 ORDER BY a.id LIMIT %s
   FOR UPDATE SKIP LOCKED
"""


def expire_due_approvals(limit: int = 500) -> list[ResolvedApproval]:
    """Expire approvals past ``expires_at`` and resume their jobs with ``expired`` (caller's txn).

    Idempotent and safe to run concurrently: rows are locked and resolved once.
    """
    resolved = []
    for approval_id, job_id, conversation_id in execute(_DUE, (limit,)):
        if job_id is None:
            execute(_RESOLVE, (EXPIRED, None, approval_id))
            continue
        done = _resume(approval_id, job_id, conversation_id, EXPIRED)
        if done is not None:
            resolved.append(done)
    return resolved
