"""The ``agent_job`` lease table: one row per turn the assistant owes a conversation.

Read it freely; write its lease columns only through :mod:`zenthor.queue` (I1).
"""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, IntegerField, TextField, UUIDField
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField

JOB_STATUSES = ("pending", "processing", "awaiting_approval", "done", "failed")
JOB_KINDS = ("turn", "resume")


class AgentJob(BaseModel):
    """A job and its lease: who holds it (processor_id, lease_token) and until when."""

    id = BigAutoField()
    conversation_id = BigIntegerField()
    message_id = BigIntegerField(null=True)
    kind = TextField(default="turn")
    status = TextField(default="pending")
    payload = BinaryJSONField(null=True)
    attempts = IntegerField(default=0)
    max_attempts = IntegerField(default=3)
    available_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    processor_id = TextField(null=True)
    lease_token = UUIDField(null=True)
    locked_until = DateTimeTZField(null=True)
    started_at = DateTimeTZField(null=True)
    last_heartbeat_at = DateTimeTZField(null=True)
    finished_at = DateTimeTZField(null=True)
    error_reason = TextField(null=True)
    error_message = TextField(null=True)
    retry_of = BigIntegerField(null=True)  # the failed job an operator retried as this one (0011)
    # The job whose turn answers this one with its own (collect mode, 0016): pending under that
    # job's lease token while the turn runs, done with it.
    merged_into = BigIntegerField(null=True)
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "agent_job"
