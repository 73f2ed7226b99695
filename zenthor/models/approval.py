"""Tool approvals: a risky tool call waiting for the user's YES or NO."""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, TextField
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField

# superseded: the user wrote something other than yes or no; the tool did not run (0007).
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "superseded")


class ToolApproval(BaseModel):
    """One tool call the assistant asked permission for."""

    id = BigAutoField()
    conversation_id = BigIntegerField()
    job_id = BigIntegerField(null=True)
    tool_name = TextField()
    tool_input = BinaryJSONField(default=dict)
    tool_call_id = TextField(null=True)
    status = TextField(default="pending")
    created_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])
    expires_at = DateTimeTZField(null=True)
    resolved_at = DateTimeTZField(null=True)
    # The user message that answered or superseded it (0007). A plain column: no foreign key.
    answer_message_id = BigIntegerField(null=True)
    # The sender of the message whose turn asked (0008): only their answer counts.
    asked_sender_id = TextField(null=True)

    class Meta:
        table_name = "tool_approval"
