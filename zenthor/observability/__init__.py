"""Logging set-up, the catalogue of typed events, and metrics.

``emit`` is resolved on first use so that a process which only sets up logging (the master of
``zenthor worker``, which forks Dramatiq's worker processes) does not import prometheus_client
before those processes choose how their metrics are stored.
"""

from typing import TYPE_CHECKING, Any

from zenthor.observability.logging import configure_logging, get_logger

if TYPE_CHECKING:
    from zenthor.observability.events import emit

__all__ = ["configure_logging", "emit", "get_logger"]


def __getattr__(name: str) -> Any:
    if name == "emit":
        from zenthor.observability.events import emit

        return emit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
