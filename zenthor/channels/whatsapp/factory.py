"""Which transport a runtime uses: neonize in production, the file-driven fake in tests.

The fake is selected by ``WHATSAPP_TRANSPORT=fake`` and refuses to start unless ``ZENTHOR_ENV`` is
``test`` or ``dev``, so a production host cannot run on it by a stray setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata

from zenthor.channels.whatsapp.auth_store import ensure_store, list_devices, store_location
from zenthor.channels.whatsapp.fake_transport import FakeRefused, FakeTransport
from zenthor.channels.whatsapp.term import Term
from zenthor.channels.whatsapp.transport import Transport
from zenthor.settings import Settings, SettingsError


def client_version(settings: Settings) -> str:
    """The WhatsApp client this process runs (recorded on the account; 'outdated' is per version)."""
    if settings.WHATSAPP_TRANSPORT == "fake":
        return "fake"
    try:
        return f"neonize {metadata.version('neonize')}"
    except metadata.PackageNotFoundError:
        return "neonize ?"


def check_transport(settings: Settings) -> None:
    """Refuse a transport this process may not use (raises :class:`SettingsError`)."""
    if settings.WHATSAPP_TRANSPORT != "fake":
        return
    if settings.ZENTHOR_ENV not in ("test", "dev"):
        raise SettingsError(
            "invalid setting WHATSAPP_TRANSPORT: 'fake' is for tests and rehearsals; it needs "
            f"ZENTHOR_ENV=test or dev (got {settings.ZENTHOR_ENV!r})"
        )
    if not settings.WHATSAPP_FAKE_DIR:
        raise SettingsError("missing setting WHATSAPP_FAKE_DIR: the fake transport's directory")


def transport_factory(settings: Settings, account_id: str) -> Callable[[Term | None], Transport]:
    """A function that builds a fresh transport for each term (or for pairing, with no term)."""
    check_transport(settings)
    if settings.WHATSAPP_TRANSPORT == "fake":

        def make_fake(term: Term | None) -> Transport:
            try:
                return FakeTransport(
                    account_id,
                    settings.WHATSAPP_FAKE_DIR or "",
                    owner_id=term.lease.owner_id if term else "pairing",
                    token=(lambda: term.token) if term else (lambda: None),
                    zenthor_env=settings.ZENTHOR_ENV,
                )
            except FakeRefused as error:
                raise SettingsError(str(error)) from None

        return make_fake

    from zenthor.channels.whatsapp.neonize_transport import NeonizeTransport

    location = store_location(
        account_id,
        mode=settings.WHATSAPP_AUTH_MODE,
        auth_dir=settings.WHATSAPP_AUTH_DIR,
        database_url=settings.DATABASE_URL,
    )

    def make_neonize(term: Term | None) -> Transport:
        ensure_store(location)  # once per term: cheap when it exists, safe from many hosts
        device_jid = None
        if term is not None:
            # The account's own device, never "the first in the store"; a store that holds exactly
            # one device (a session migrated before any runtime recorded its JID) names it.
            stored = list_devices(location)
            device_jid = term.lease.device_jid or (stored[0] if len(stored) == 1 else None)
        suffix = f"t{term.lease.term}" if term else "pair"
        return NeonizeTransport(
            account_id, location.name, device_jid, client_uuid=f"{account_id}-{os.getpid()}-{suffix}"
        )

    return make_neonize


def session_check(settings: Settings, account_id: str) -> Callable[[], bool] | None:
    """A function that says whether a paired session for the account is within reach of this
    host (read-only; never creates a store), or None for the fake. A runtime without one waits
    as standby instead of dialling WhatsApp only to be shown a QR code: with local auth only the
    host that holds the session file may take the account; with Postgres auth every host sees
    the same store."""
    if settings.WHATSAPP_TRANSPORT == "fake":
        return None
    from zenthor.channels.whatsapp.neonize_transport import stored_devices

    location = store_location(
        account_id,
        mode=settings.WHATSAPP_AUTH_MODE,
        auth_dir=settings.WHATSAPP_AUTH_DIR,
        database_url=settings.DATABASE_URL,
    )
    return lambda: bool(stored_devices(location.name))
