"""``zenthor gateway``: the HTTP webhook ingress with /healthz and /metrics."""

from __future__ import annotations

import click

from zenthor.cli.common import bootstrap


@click.command("gateway")
@click.option("--host", default=None, help="Listen address (default: GATEWAY_HOST).")
@click.option("--port", type=int, default=None, help="Listen port (default: GATEWAY_PORT).")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="uvicorn processes."
)
def gateway_command(host: str | None, port: int | None, workers: int) -> None:
    """Serve POST /v1/webhook/{account_id}/messages, GET /healthz and GET /metrics."""
    settings = bootstrap("gateway")
    if not settings.WEBHOOK_SECRET:
        raise click.ClickException("missing setting WEBHOOK_SECRET: the gateway refuses unsigned traffic")
    from zenthor.channels.webhook.gateway import serve

    serve(host or settings.GATEWAY_HOST, port or settings.GATEWAY_PORT, workers=workers)
