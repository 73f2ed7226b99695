"""Logging set-up, the catalogue of typed events, and metrics."""

from zenthor.observability.events import emit
from zenthor.observability.logging import configure_logging, get_logger

__all__ = ["configure_logging", "emit", "get_logger"]
