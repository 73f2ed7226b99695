"""Publisher connections that stay honest while idle.

Dramatiq's RabbitMQ broker keeps one blocking pika connection per publishing thread. A blocking
connection only services its AMQP heartbeats while the thread uses it, so a thread that published
once and then sat idle (a gateway request thread, a worker thread between turns) has its
connection closed by RabbitMQ after two missed heartbeats; the next publish then found the dead
socket and pika logged three ERROR lines with tracebacks before Dramatiq reconnected. Those were
false alarms: nothing was wrong.

:class:`IdleAwareRabbitmqBroker` closes a thread's connection on purpose, quietly, before it reuses
one that sat idle for longer than half the heartbeat timeout, and opens a fresh one; at shutdown
it closes the connections RabbitMQ already dropped without the same noise. A real broker outage
still fails the publish (and is logged as one clear event by the caller).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from dramatiq.brokers.rabbitmq import RabbitmqBroker

_PIKA_LOGGERS = (
    "pika.adapters.utils.io_services_utils",
    "pika.adapters.base_connection",
    "pika.adapters.blocking_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.connection",
    "pika.channel",
)
_closing = threading.local()


class _QuietWhileClosing(logging.Filter):
    """Drops pika's records on the thread that is closing a connection it knows is stale."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_closing, "active", False)


_filter = _QuietWhileClosing()


@contextmanager
def quiet_pika() -> Iterator[None]:
    """Drop pika's (and the broker's) log records on this thread while inside the block.

    For a caller that expects the broker to be away and reports the outcome itself: the owed
    nudges' retry loop probes a broker that is down every few seconds, and pika would log five
    ERROR lines with tracebacks for every refused connection attempt. Only takes effect once an
    :class:`IdleAwareRabbitmqBroker` exists (it installs the filter).
    """
    was = getattr(_closing, "active", False)
    _closing.active = True
    try:
        yield
    finally:
        _closing.active = was


def quiet_pika_on_this_thread() -> None:
    """Drop pika's log records on the calling thread for the rest of its life (a Dramatiq consumer
    thread: its own CRITICAL line reports a lost connection, pika's ERROR lines add nothing)."""
    _closing.active = True


class IdleAwareRabbitmqBroker(RabbitmqBroker):
    """A RabbitMQ broker whose per-thread publisher connections never go stale silently."""

    def __init__(self, *args, max_idle_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_idle_s = max_idle_s
        self._last_used = threading.local()
        # (thread, connection) for every publisher connection: Dramatiq keeps one per thread in a
        # thread-local, but also in a set, so the connection of a thread that ended (a gateway's
        # short-lived request threads) stayed open forever: its sockets and pika's ioloop fds leaked.
        self._owners: list[tuple[weakref.ref, object]] = []
        self._owners_lock = threading.Lock()
        # pika's loggers and Dramatiq's own ("Encountered exception while closing Channel.").
        for logger in [logging.getLogger(name) for name in _PIKA_LOGGERS] + [self.logger]:
            if _filter not in logger.filters:
                logger.addFilter(_filter)

    @property
    def connection(self):
        """This thread's connection; opening one first closes those of threads that ended."""
        had = getattr(self.state, "connection", None)
        connection = RabbitmqBroker.connection.fget(self)
        if had is None:
            self.close_connections_of_ended_threads()
            with self._owners_lock:
                self._owners.append((weakref.ref(threading.current_thread()), connection))
        return connection

    @connection.deleter
    def connection(self):
        RabbitmqBroker.connection.fdel(self)

    def close_connections_of_ended_threads(self) -> int:
        """Close (quietly) the publisher connections whose thread is gone; returns how many."""
        with self._owners_lock:
            keep, dead = [], []
            for owner, connection in self._owners:
                thread = owner()
                if connection not in self.connections:
                    continue  # closed the ordinary way
                (keep if thread is not None and thread.is_alive() else dead).append((owner, connection))
            self._owners = keep
        for _owner, connection in dead:
            self.connections.discard(connection)
            for channel in [c for c in self.channels if getattr(c, "_connection", None) is connection]:
                self.channels.discard(channel)
            with quiet_pika():
                try:
                    if connection.is_open:
                        connection.close()  # its thread is gone: nobody else uses it
                except Exception:  # noqa: BLE001 - a stale socket refusing a clean close
                    pass
        return len(dead)

    @property
    def channel(self):
        """This thread's channel; a connection that sat idle too long is replaced first.

        Every use of the thread's connection (publish, queue declarations, message counts) goes
        through here, so every use counts as activity and none finds a stale socket.
        """
        if self.max_idle_s > 0:
            now = time.monotonic()
            last = getattr(self._last_used, "at", None)
            if last is not None and now - last > self.max_idle_s:
                self.drop_thread_connection()
            self._last_used.at = now
        return RabbitmqBroker.channel.fget(self)

    @channel.deleter
    def channel(self):
        RabbitmqBroker.channel.fdel(self)

    def drop_thread_connection(self) -> None:
        """Close this thread's publisher connection (if any) without a word: it is known stale."""
        with quiet_pika():
            try:
                del self.connection  # closes the channel and the connection; a failure is expected
            except Exception:  # noqa: BLE001 - a dead socket refusing a clean close is the point
                pass

    def close(self) -> None:
        """Close every connection at shutdown; the idle ones RabbitMQ already dropped go quietly."""
        with quiet_pika():
            super().close()
