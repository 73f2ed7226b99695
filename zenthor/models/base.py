"""The base model every table model derives from."""

from __future__ import annotations

from peewee import Model
from playhouse.postgres_ext import DateTimeTZField

from zenthor.db import database


class BaseModel(Model):
    """Binds models to the database proxy; tables are created by migrations, never by models."""

    class Meta:
        database = database
        legacy_table_names = False


__all__ = ["BaseModel", "DateTimeTZField"]
