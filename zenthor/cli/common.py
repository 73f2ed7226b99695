"""What every command needs before it touches the database: settings, logging, the pool."""

from __future__ import annotations

import sys

from zenthor.settings import Settings, settings_or_exit


def bootstrap(
    service: str = "cli",
    *,
    require_database: bool = True,
    long_running: bool = False,
    log_level: str | None = None,
) -> Settings:
    """Load settings (exit with one line naming a bad variable), set up logging and the DB.

    With ``require_database`` an unreachable Postgres ends the command with one line naming it
    and exit status 2 (no traceback); a long-running process that waits for the database itself
    passes False. A command a person runs logs for people when stderr is a terminal; a
    ``long_running`` one (gateway, WhatsApp runtime) always logs in ``LOG_FORMAT``.
    """
    settings = settings_or_exit()
    from zenthor.db import connect_kwargs, database, init_database
    from zenthor.observability import configure_logging

    configure_logging(service, interactive=not long_running, level=log_level)
    init_database()
    if require_database:
        try:
            with database.connection_context():
                database.execute_sql("SELECT 1")
        except Exception as error:  # noqa: BLE001 - any failure to connect is reported the same way
            where = connect_kwargs(settings.DATABASE_URL)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            sys.stderr.write(
                f"zenthor: cannot reach Postgres at {where['host']}:{where['port']}/{where['database']} "
                f"(DATABASE_URL): {first_line}\n"
            )
            raise SystemExit(2) from None
    return settings
