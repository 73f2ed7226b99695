"""``zenthor gateway``: the HTTP webhook ingress with /healthz, /metrics and /openapi.json.

The command wires the gateway to this process's broker (the channel module imports no actor):
:func:`build_app` is also the factory each uvicorn process calls with ``--workers`` > 1.
"""

from __future__ import annotations

import sys

import click
from starlette.applications import Starlette

from zenthor.cli.common import bootstrap
from zenthor.cli.webhook import check_secret_key_or_exit


def build_app() -> Starlette:
    """The gateway application on the real broker, in a process set up for it."""
    bootstrap("gateway", require_database=False, long_running=True)
    import zenthor.actors  # noqa: F401 - declares the actors on the broker, so publishing works
    from zenthor.actors.publish import publish_dispatch
    from zenthor.broker import broker
    from zenthor.channels.webhook.gateway import create_app

    return create_app(publish=publish_dispatch, broker=broker)


@click.command("gateway")
@click.option("--host", default=None, help="Listen address (default: GATEWAY_HOST).")
@click.option("--port", type=int, default=None, help="Listen port (default: GATEWAY_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="uvicorn processes (default: GATEWAY_WORKERS, 1 unless set).",
)
def gateway_command(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve POST /v1/webhook/{account_id}/messages, GET /healthz, GET /metrics and GET /openapi.json."""
    settings = bootstrap("gateway", long_running=True)
    workers = workers or settings.GATEWAY_WORKERS
    accounts = check_secret_key_or_exit(settings)
    if not settings.WEBHOOK_SECRET and not accounts:
        # Both unset (one alone is refused by the settings) and no account: nothing to verify with.
        sys.stderr.write(
            "zenthor: missing settings WEBHOOK_SECRET and WEBHOOK_CALLBACK_URL: the gateway verifies "
            "each request with the secret, and the workers POST its replies to the callback URL "
            "(or add accounts with `zenthor webhook add-account`)\n"
        )
        raise SystemExit(2)
    import uvicorn

    where = {"host": host or settings.GATEWAY_HOST, "port": port or settings.GATEWAY_PORT}
    # log_config=None: uvicorn's lines go through the root handler (JSON with LOG_FORMAT=json).
    if workers > 1:
        uvicorn.run(
            f"{__name__}:build_app", factory=True, workers=workers, log_config=None, access_log=False, **where
        )
    else:
        uvicorn.run(build_app(), log_config=None, access_log=False, **where)
