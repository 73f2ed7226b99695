"""``zenthor ops dead-letters``: look at what Dramatiq dead-lettered, and take inbounds back out.

Nudges in ``dispatch.XQ``, ``outbound.XQ`` and ``sweep.XQ`` point at rows that are still in Postgres
(the sweep handles those rows), so they only need a look and a purge. ``ingest.XQ`` is different:
it holds inbound messages the ingest actor refused, and nothing else has them. ``--export`` writes
each one, in ``zenthor replay``'s format, to a file that is flushed to disk before the messages are
acknowledged, so a crash in between leaves them in the queue (at worst written twice, and replay
skips a repeat), never lost.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import pika

from zenthor.cli.common import bootstrap

QUEUES = ("ingest", "dispatch", "outbound", "sweep")


@dataclass
class DeadLetter:
    """One dead-lettered message: its delivery tag and Dramatiq's envelope (None: undecodable)."""

    tag: int
    envelope: dict[str, Any] | None

    @property
    def inbound(self) -> dict[str, Any] | None:
        """The inbound an ``ingest`` message carried (its first argument), if it is one."""
        args = (self.envelope or {}).get("args")
        if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict):
            return args[0]
        return None

    def describe(self) -> str:
        """One line for people: id, actor, age and what the message names (never its text)."""
        if self.envelope is None:
            return f"#{self.tag}  undecodable body"
        envelope = self.envelope
        age_s = max(0, int(time.time() - envelope.get("message_timestamp", 0) / 1000))
        inbound = self.inbound
        reason = ""
        if inbound is not None:
            keys = (
                "channel",
                "account_id",
                "chat_id",
                "sender_id",
                "provider_message_id",
                "message_id",
                "sent_at",
            )
            named = " ".join(f"{key}={inbound[key]}" for key in keys if inbound.get(key) not in (None, ""))
            reason = refusal(inbound)
        else:
            named = f"args={json.dumps(envelope.get('args'))[:80]}"
        line = f"{envelope.get('message_id', '?')}  {envelope.get('actor_name', '?')}  {age_s}s ago  {named}"
        return f"{line}  (refused: {reason})" if reason else line


def refusal(inbound: dict[str, Any]) -> str:
    """Why ingress refuses ``inbound`` today, naming the field ('' when it would be accepted)."""
    # Imported here: `zenthor worker` imports the CLI, and its main process must not import
    # prometheus_client (which zenthor.ingress pulls in) before the metrics directory is set.
    from zenthor.ingress.message import InboundMessage, InvalidInbound

    try:
        InboundMessage.from_dict(inbound)
    except InvalidInbound as error:
        return str(error)
    return ""


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    return envelope if isinstance(envelope, dict) else None


@contextmanager
def _channel(url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()  # messages taken and not acked go back to the queue


def _take(channel: Any, queue: str, limit: int) -> list[DeadLetter]:
    """Take up to ``limit`` messages without acknowledging them (they stay the queue's)."""
    taken = []
    while len(taken) < limit:
        method, _properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        taken.append(DeadLetter(method.delivery_tag, _decode(body)))
    return taken


def _write_durably(path: str, lines: list[str]) -> None:
    """Append ``lines`` to ``path`` and return only once they are on disk."""
    with open(path, "a", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)
        out.flush()
        os.fsync(out.fileno())


@click.command("dead-letters")
@click.argument("queue", type=click.Choice(QUEUES))
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, writable=True),
    help="ingest only: append each refused inbound to this JSONL file (zenthor replay's format), "
    "then remove it from ingest.XQ.",
)
def dead_letters_command(queue: str, limit: int, export_path: str | None) -> None:
    """List the messages in QUEUE's dead-letter queue (QUEUE.XQ), leaving them there; with
    --export (ingest only), move the refused inbounds into a file to fix and replay."""
    settings = bootstrap("ops", require_database=False)
    if export_path and queue != "ingest":
        raise click.UsageError(
            f"--export is for ingest only: {queue}.XQ holds nudges whose rows are still in Postgres"
        )
    name = f"{queue}.XQ"
    try:
        with _channel(settings.RABBITMQ_URL) as channel:
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                click.echo(f"{name} does not exist yet: nothing was ever dead-lettered there")
                return
            letters = _take(channel, name, limit)
            if not export_path:
                for letter in letters:
                    click.echo(letter.describe())
                click.echo(f"{len(letters)} message(s) in {name} (left there)")
                return
            exportable = [letter for letter in letters if letter.inbound is not None]
            lines = [json.dumps(letter.inbound, ensure_ascii=False) for letter in exportable]
            try:
                _write_durably(export_path, lines)
            except OSError as error:
                raise click.ClickException(
                    f"cannot write {export_path}: {error.strerror}; nothing was removed"
                ) from None
            for letter in exportable:
                channel.basic_ack(letter.tag)
    except pika.exceptions.AMQPError as error:
        raise click.ClickException(f"cannot reach RabbitMQ (RABBITMQ_URL): {error!r}") from None
    kept = len(letters) - len(exportable)
    click.echo(
        f"exported {len(exportable)} inbound(s) from {name} to {export_path}"
        + (f"; {kept} undecodable message(s) left in {name}" if kept else "")
    )
    if exportable:
        click.echo(
            f"add the missing fields (each line names what was refused), then: zenthor replay {export_path}"
        )
