"""The ``zenthor`` command: migrations, operations, and the runtimes of the channels."""

from __future__ import annotations

import click

from zenthor.cli.chat import chat_command
from zenthor.cli.dead_letters import dead_letters_command
from zenthor.cli.gateway import gateway_command
from zenthor.cli.migrate import migrate_command
from zenthor.cli.ops import ops
from zenthor.cli.plugins import plugins
from zenthor.cli.replay import replay_command
from zenthor.cli.webhook import webhook
from zenthor.cli.whatsapp import whatsapp
from zenthor.cli.worker import scheduler_command, worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Zenthor Assist: the crash-safe AI assistant runtime."""


cli.add_command(migrate_command)
ops.add_command(dead_letters_command)
cli.add_command(ops)
cli.add_command(plugins)
cli.add_command(gateway_command)
cli.add_command(chat_command)
cli.add_command(replay_command)
cli.add_command(whatsapp)
cli.add_command(webhook)
cli.add_command(worker_command)
cli.add_command(scheduler_command)


def main() -> None:
    """Console-script entry point."""
    cli()
