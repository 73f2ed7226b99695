"""JSON (or console) logging for every Zenthor process.

Each line carries ``service`` and ``worker_id`` so logs from many workers can be told apart. With
``LOG_FORMAT=json`` every line is one JSON object: ours, Dramatiq's, periodiq's and pika's alike,
because they all go through the one root handler installed here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType

from pythonjsonlogger.json import JsonFormatter

from zenthor.settings import worker_id

# The process that installed the handler: a forked child (a Dramatiq worker process) installs its
# own, on the stderr Dramatiq gave it, instead of writing through the parent's.
_configured_pid: int | None = None
# The service name last installed: a forked child that re-installs the handler keeps it.
_service: str | None = None

# Record attributes that describe a line rather than carry one of its fields.
SAID_FIELDS = "said_fields"


class _ContextFilter(logging.Filter):
    """Stamps every record with the service name and this process's worker id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = self.service
        if not hasattr(record, "worker_id"):
            record.worker_id = worker_id()
        if not hasattr(record, "event"):
            record.event = "log"
        return True


class _ConsoleFormatter(logging.Formatter):
    """``time level event message key=value …`` for people reading a terminal; a field the message
    already says is not repeated."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {
        "message",
        "service",
        "worker_id",
        "event",
        "asctime",
        SAID_FIELDS,
    }

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        said = getattr(record, SAID_FIELDS, ())
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in self._skip and k not in said
        )
        return f"{base} {extras}".rstrip()


def _json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(event)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        reserved_attrs=[*JsonFormatter().reserved_attrs, SAID_FIELDS],
        timestamp=False,
    )


def configure_logging(
    service: str | None = None,
    *,
    force: bool = False,
    interactive: bool = False,
    level: str | int | None = None,
) -> None:
    """Install the root handler once per process, in the format the settings ask for.

    Every line's ``service`` is ``SERVICE_NAME`` when set, else ``service`` (the command's name:
    worker, scheduler, gateway, whatsapp, ops, …).

    ``interactive`` is for commands a person runs: their log lines use the console format when
    stderr is a terminal (``LOG_FORMAT`` still decides when it is a file or a pipe). ``level``
    overrides ``LOG_LEVEL`` (``zenthor chat`` shows only warnings, so no line splits a reply).
    """
    global _configured_pid, _service
    if _configured_pid == os.getpid() and not force:
        return
    from zenthor.settings import get_settings

    settings = get_settings()
    _service = settings.SERVICE_NAME or service or _service or "zenthor"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(_service))
    console = settings.LOG_FORMAT == "console" or (interactive and sys.stderr.isatty())
    if console:
        handler.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)-7s %(event)s %(message)s"))
    else:
        handler.setFormatter(_json_formatter())
    # The handler keeps the level too: periodiq resets the root logger's level from its -v.
    handler.setLevel(level or settings.LOG_LEVEL)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.LOG_LEVEL)
    # pika is chatty at INFO about every connection step.
    logging.getLogger("pika").setLevel(logging.WARNING)
    # Python's warnings and uncaught exceptions would print plain text past the handler.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    _configured_pid = os.getpid()


def _log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("zenthor").critical(
        "uncaught exception", exc_info=(kind, error, tb), extra={"event": "process.uncaught_exception"}
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("zenthor").error(
        "uncaught exception in thread %s",
        getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"event": "thread.uncaught_exception"},
    )


def get_logger(name: str) -> logging.Logger:
    """The project's logger for a module (use typed events for reliability transitions)."""
    return logging.getLogger(name)
