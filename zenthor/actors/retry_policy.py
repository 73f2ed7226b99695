"""Which failures Dramatiq retries a message for: only the database's or the broker's.

A bug or bad input is not retried by Dramatiq (the rows and the sweep own recovery); a database
or broker that was away for a moment is, a few times.
"""

from __future__ import annotations

from dramatiq.errors import BrokerConnectionError
from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded

# MaxConnectionsExceeded: no pooled connection came free within the pool's wait (DATABASE_POOL_SIZE
# too small for the load): the database is as good as away, not the turn at fault.
INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, BrokerConnectionError, MaxConnectionsExceeded)


def is_infrastructure_error(retries: int, exception: BaseException) -> bool:
    """Dramatiq retries a message only when the database or broker failed, a few times."""
    return retries < 10 and isinstance(exception, INFRASTRUCTURE_ERRORS)
