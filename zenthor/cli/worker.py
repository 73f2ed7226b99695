"""``zenthor worker`` and ``zenthor scheduler``: ``dramatiq zenthor.actors`` and
``periodiq zenthor.actors`` with Zenthor's logging installed first.

Run bare, Dramatiq's main process and periodiq log their own start and stop lines in their own
text format before any Zenthor code runs. These commands install the one root handler first
(``LOG_FORMAT``: every line JSON, or console) and then hand over to the libraries' own command
lines, with the same arguments, signals and exit codes.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from zenthor.observability import configure_logging
from zenthor.settings import Settings, settings_or_exit

_logger = logging.getLogger(__name__)

ACTORS_MODULE = "zenthor.actors"
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command("worker", context_settings=_PASS_THROUGH)
@click.argument("dramatiq_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(dramatiq_args: tuple[str, ...]) -> None:
    """Run the workers: ``dramatiq zenthor.actors [DRAMATIQ_ARGS]`` (e.g. ``--processes 2
    --threads 8``; see ``dramatiq --help``)."""
    settings = settings_or_exit()
    configure_logging("worker")
    _check_webhook_secrets(settings)
    from dramatiq import cli as dramatiq_cli

    # --skip-logging: Dramatiq's processes keep the handler installed above (each worker process
    # re-installs it on the pipe Dramatiq gives it, see configure_logging).
    args = dramatiq_cli.make_argument_parser().parse_args([ACTORS_MODULE, *dramatiq_args, "--skip-logging"])
    raise SystemExit(dramatiq_cli.main(args))


def _check_webhook_secrets(settings: Settings) -> None:
    """Refuse to start (exit 2, one line naming ZENTHOR_SECRET_KEY) when webhook accounts exist
    and the key cannot read their secrets: such a worker would run turns whose replies it can
    never sign. The gateway's own check. Postgres down or not migrated yet: the worker starts
    anyway (it waits for the database like before) and the sender names the key if it is wrong."""
    from peewee import InterfaceError, OperationalError, ProgrammingError

    from zenthor.cli.webhook import check_secret_key_or_exit
    from zenthor.db import close_database, init_database

    init_database()
    try:
        check_secret_key_or_exit(settings)
    except (OperationalError, InterfaceError, ProgrammingError) as error:
        _logger.warning(
            "ZENTHOR_SECRET_KEY not checked at start (Postgres: %s)",
            str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__,
            extra={"event": "worker.secret_key_unchecked"},
        )
    finally:
        close_database()  # no pooled connection crosses Dramatiq's fork into its processes


@click.command("scheduler", context_settings=_PASS_THROUGH)
@click.argument("periodiq_args", nargs=-1, type=click.UNPROCESSED)
def scheduler_command(periodiq_args: tuple[str, ...]) -> None:
    """Run the scheduler: ``periodiq zenthor.actors [PERIODIQ_ARGS]`` (one is enough; two are
    harmless)."""
    settings = settings_or_exit()
    configure_logging("scheduler")
    import periodiq

    # periodiq sets the root level from -v itself; keep LOG_LEVEL's.
    verbose = ["-v"] if settings.LOG_LEVEL == "DEBUG" else []
    args = periodiq.make_argument_parser().parse_args([ACTORS_MODULE, *periodiq_args, *verbose])
    # periodiq stops only on Ctrl-C; SIGTERM (systemd, docker stop) ends it the same way, logged.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = periodiq.main(args)
    except KeyboardInterrupt:
        logging.getLogger("periodiq").info("Periodiq stopped.")
        code = 0
    raise SystemExit(code)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
