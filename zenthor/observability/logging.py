"""JSON (or console) logging for every Zenthor process.

Each line carries ``service`` and ``worker_id`` so logs from many workers can be told apart.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from zenthor.settings import worker_id

_configured = False


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
    """``time level event key=value …`` for people reading a terminal."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "service", "worker_id", "event", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "event", None) == record.getMessage():
            # A typed event's message is its name: print it once.
            record = logging.makeLogRecord({**record.__dict__, "msg": "", "args": None})
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in self._skip)
        return f"{base} {extras}".rstrip()


def configure_logging(service: str | None = None, *, force: bool = False) -> None:
    """Install the root handler once per process, in the format the settings ask for."""
    global _configured
    if _configured and not force:
        return
    from zenthor.settings import get_settings

    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service or settings.SERVICE_NAME))
    if settings.LOG_FORMAT == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(event)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)-7s %(event)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    # pika is chatty at INFO about every connection step.
    logging.getLogger("pika").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> logging.Logger:
    """The project's logger for a module (use typed events for reliability transitions)."""
    return logging.getLogger(name)
