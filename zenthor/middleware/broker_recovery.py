"""Let a worker process pick its work up again quickly once RabbitMQ is back.

Dramatiq restarts a consumer that lost its connection every 3 s, and a worker thread that finished
a message while the connection was down retries the ack every 5 s, holding the thread (its
message is redelivered on the new connection anyway, and its ack then finds an unknown tag and
gives up). Together that kept a worker idle for up to 8 s after the broker came back; this
middleware sets both waits to ``retry_s``. While the broker is away, each consumer's failed restart
is reported by Dramatiq's own CRITICAL line, at most once per consumer every
``REPEAT_EVERY_S`` (a restart every second would write one per queue per process per second);
pika's five ERROR lines per refused connection are dropped on consumer threads.
"""

from __future__ import annotations

import logging
import os
import time

import dramatiq.worker
from dramatiq.middleware import Middleware

from zenthor.middleware.idle_publisher import quiet_pika_on_this_thread

REPEAT_EVERY_S = 30.0


class _OncePerInterval(logging.Filter):
    """Lets a consumer's "connection error" and "restarting" lines through once per interval; the
    next one that passes says how many were held back."""

    def __init__(self, interval_s: float = REPEAT_EVERY_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval_s:.0f} s)"
        return True


class FastBrokerRecovery(Middleware):
    """Shortens Dramatiq's consumer restart and ack retry delays to ``retry_s`` in worker processes."""

    def __init__(self, retry_s: float = 1.0) -> None:
        self.retry_s = retry_s

    def before_worker_boot(self, broker, worker) -> None:
        # Module globals, read by Dramatiq each time it waits (dramatiq 2.x worker.py); an
        # operator's dramatiq_restart_delay still wins.
        if "dramatiq_restart_delay" not in os.environ:
            dramatiq.worker.CONSUMER_RESTART_DELAY_SECS = self.retry_s
        dramatiq.worker.POST_PROCESS_MESSAGE_RETRY_DELAY_SECS = self.retry_s

    def after_consumer_thread_boot(self, broker, thread) -> None:
        quiet_pika_on_this_thread()  # runs on the consumer thread
        consumer_logger = getattr(thread, "logger", None)  # one logger per consumer thread
        if isinstance(consumer_logger, logging.Logger) and not any(
            isinstance(f, _OncePerInterval) for f in consumer_logger.filters
        ):
            consumer_logger.addFilter(_OncePerInterval())
