"""When each periodic task last ran, and when its next sub-minute re-check is due."""

from __future__ import annotations

from peewee import TextField
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField


class SweepState(BaseModel):
    """One row per periodic task (``sweep``)."""

    name = TextField(primary_key=True)
    last_started_at = DateTimeTZField(null=True)
    last_finished_at = DateTimeTZField(null=True)
    last_trigger = TextField(null=True)
    last_result = BinaryJSONField(null=True)
    next_check_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "sweep_state"
