"""Persisting each load cycle's outcome in ``plugin_status``, and reading it back.

Every load cycle replaces the previous cycle's rows in one transaction, with ``load_cycle`` one
more than the last; an advisory lock keeps two processes loading at once from interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zenthor.db import database, execute
from zenthor.models.plugin_status import PluginStatus
from zenthor.plugins.manifest import Diagnostic

_LOCK_KEY = 0x5A504C47  # "ZPLG": serialises load-cycle writes


@dataclass
class PluginRecord:
    """One plugin's outcome in a load cycle (one ``plugin_status`` row)."""

    plugin_id: str
    source: str
    location: str
    version: str | None
    status: str  # activated | conflict | invalid | disabled
    enabled: bool
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``zenthor plugins list --json``)."""
        return {
            "id": self.plugin_id,
            "version": self.version,
            "source": self.source,
            "location": self.location,
            "status": self.status,
            "enabled": self.enabled,
            "diagnostics": [d.as_dict() for d in self.diagnostics],
        }


def persist_load_cycle(records: list[PluginRecord]) -> int:
    """Replace ``plugin_status`` with ``records`` in one transaction; returns the new load cycle."""
    with database.atomic():
        execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cycle = execute("SELECT COALESCE(MAX(load_cycle), 0) + 1 FROM plugin_status")[0][0]
        execute("DELETE FROM plugin_status")
        if records:
            PluginStatus.insert_many(
                [
                    {
                        "plugin_id": record.plugin_id,
                        "source": record.source,
                        "version": record.version,
                        "status": record.status,
                        "diagnostics": stored_diagnostics(record),
                        "load_cycle": cycle,
                    }
                    for record in records
                ]
            ).execute()
    return int(cycle)


def stored_diagnostics(record: PluginRecord) -> list[dict[str, Any]]:
    """The diagnostics column: where the plugin was found (there is no location column), then its problems."""
    found = Diagnostic("$", f"found at {record.location}", severity="info")
    return [found.as_dict(), *(d.as_dict() for d in record.diagnostics)]


def read_statuses() -> list[dict[str, Any]]:
    """The rows of the last load cycle, in load order (oldest row id first)."""
    rows = PluginStatus.select().order_by(PluginStatus.id)
    return [
        {
            "id": row.plugin_id,
            "version": row.version,
            "source": row.source,
            "status": row.status,
            "diagnostics": row.diagnostics,
            "load_cycle": row.load_cycle,
            "updated_at": row.updated_at.isoformat() if row.updated_at else None,
        }
        for row in rows
    ]
