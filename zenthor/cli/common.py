"""What every command needs before it touches the database: settings, logging, the pool."""

from __future__ import annotations

from zenthor.settings import Settings, settings_or_exit


def bootstrap(service: str = "cli") -> Settings:
    """Load settings (exit with one line naming a bad variable), set up logging and the DB."""
    settings = settings_or_exit()
    from zenthor.db import init_database
    from zenthor.observability import configure_logging

    configure_logging(service)
    init_database()
    return settings
