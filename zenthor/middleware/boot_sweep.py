"""Kick the sweep when a worker boots, so a fresh deploy recovers expired leases at once."""

from __future__ import annotations

import logging
from collections.abc import Callable

from dramatiq.middleware import Middleware

_logger = logging.getLogger(__name__)


class KickSweepOnBoot(Middleware):
    """Calls ``kick`` once a worker process has booted (the sweep's re-check chain is unique)."""

    def __init__(self, kick: Callable[[], object]) -> None:
        self.kick = kick

    def after_worker_boot(self, broker, worker) -> None:
        try:
            self.kick()
        except Exception:  # noqa: BLE001 - the periodic tick starts the chain anyway
            _logger.warning("could not kick the sweep at boot", exc_info=True)
