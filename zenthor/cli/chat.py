"""``zenthor chat``: talk to the assistant from a terminal, through the same ingress and outbox."""

from __future__ import annotations

import getpass
import threading

import click

from zenthor.cli.common import bootstrap


@click.command("chat")
@click.option("--account", "account_id", default="local", show_default=True, help="Terminal account id.")
@click.option("--chat", "chat_id", default=None, help="Conversation name (default: your user name).")
@click.option("--name", "sender_name", default=None, help="Your display name.")
def chat_command(account_id: str, chat_id: str | None, sender_name: str | None) -> None:
    """Type a message and press Enter; replies appear as they come. /quit or Ctrl-D ends."""
    # Warnings only, and for people: a log line must not split the conversation on screen.
    bootstrap("chat", log_level="WARNING")
    import zenthor.actors  # noqa: F401 - declares the actors, so accept can publish dispatch
    from zenthor.channels.terminal.chat import TerminalChat

    user = getpass.getuser()
    chat = TerminalChat(
        account_id,
        chat_id or user,
        user,
        lambda text: click.echo(f"\nassistant> {text}\nyou> ", nl=False),
        sender_name=sender_name or user,
    )
    stop = threading.Event()
    poller = threading.Thread(target=chat.poll_forever, args=(stop,), name="chat-poller", daemon=True)
    poller.start()
    click.echo("Connected. Type a message; /quit to leave.")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            result = chat.send(line)
            if result.status == "ignored":
                click.echo("(the terminal channel does not accept your messages)")
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        poller.join(timeout=2)
        click.echo("")
