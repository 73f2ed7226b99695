"""The outcome of the last plugin load cycle, one row per plugin id."""

from __future__ import annotations

from peewee import SQL, BigAutoField, BigIntegerField, TextField
from playhouse.postgres_ext import BinaryJSONField

from zenthor.models.base import BaseModel, DateTimeTZField

PLUGIN_STATUSES = ("activated", "conflict", "invalid", "disabled")


class PluginStatus(BaseModel):
    """Whether a plugin runs, and the diagnostics that say why not."""

    id = BigAutoField()
    plugin_id = TextField(unique=True)
    source = TextField()
    version = TextField(null=True)
    status = TextField()
    diagnostics = BinaryJSONField(default=list)
    load_cycle = BigIntegerField(default=0)
    updated_at = DateTimeTZField(constraints=[SQL("DEFAULT now()")])

    class Meta:
        table_name = "plugin_status"
