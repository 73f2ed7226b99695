"""All actors. ``dramatiq zenthor.actors`` and ``periodiq zenthor.actors`` import this package.

Order matters: the broker (with its middleware) is set before any actor is declared.
"""

from zenthor.settings import settings_or_exit

settings_or_exit()

from zenthor.observability import configure_logging  # noqa: E402

configure_logging()

from zenthor.broker import broker, lease_heartbeat  # noqa: E402
from zenthor.db import init_database  # noqa: E402

init_database()

import zenthor.actors.approvals  # noqa: E402, F401 - approval answers and expiry
import zenthor.actors.reminders  # noqa: E402, F401 - due reminders
from zenthor.actors.deliver import deliver  # noqa: E402, F401
from zenthor.actors.dispatch import dispatch, hand_over  # noqa: E402
from zenthor.actors.ingest import ingest  # noqa: E402, F401
from zenthor.actors.publish import publish_delivery, publish_dispatch  # noqa: E402
from zenthor.actors.sweep import sweep, sweep_if_overdue, sweep_recheck  # noqa: E402
from zenthor.ingress import set_default_publisher  # noqa: E402
from zenthor.middleware.boot_sweep import KickSweepOnBoot  # noqa: E402
from zenthor.middleware.broker_recovery import FastBrokerRecovery  # noqa: E402

# A lease released at warm shutdown is re-published at once so another worker takes it.
lease_heartbeat.on_released = hand_over
# If the sweep's re-check messages stall (a paused worker's prefetch, a broker outage), the
# heartbeat thread of some worker runs the sweep itself.
lease_heartbeat.on_tick = sweep_if_overdue
# accept() nudges dispatch through this unless a caller passes its own publisher, and delivery of a
# chat command's reply (/queue, /debounce) through publish_delivery.
set_default_publisher(publish_dispatch, deliver=publish_delivery)
# A worker that starts kicks the sweep, so recovery never waits for the next periodiq tick.
broker.add_middleware(KickSweepOnBoot(lambda: sweep_recheck.send("boot")))
# Once RabbitMQ is back, consumers reconnect and blocked acks give up within a second, not 3-8 s.
broker.add_middleware(FastBrokerRecovery())

# Idle cost-limit buckets of webhook senders leave (housekeeping, before retention stays last).
import zenthor.actors.webhook_buckets  # noqa: E402, F401, I001 - registered before retention

# Finished rows leave after RETENTION_DAYS. Imported last, so its sweep step runs after every step
# users wait on (approvals, reminders, stuck replies).
import zenthor.actors.retention  # noqa: E402, F401

__all__ = ["broker", "dispatch", "sweep", "sweep_recheck"]
