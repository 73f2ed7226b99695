"""``zenthor ops dead-letters``: what the ingest actor refused is listed, then moved into a file that
``zenthor replay`` takes once fixed, against the real broker and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.workers import wait_for
from zenthor.db import execute


def run(*args: str) -> subprocess.CompletedProcess:
    """The command as an operator runs it: its own process (the test's worker threads keep logging)."""
    result = subprocess.run(
        [sys.executable, "-m", "zenthor.cli", *args], capture_output=True, text=True, timeout=60
    )
    result.output = result.stdout + result.stderr
    return result


def waiting(queue: str) -> int:
    from zenthor.broker import broker

    return broker.channel.queue_declare(queue, passive=True).method.message_count


def test_refused_inbounds_are_listed_then_exported_for_replay_and_nothing_is_lost(worker, tmp_path):
    from zenthor.actors.ingest import ingest
    from zenthor.broker import broker

    worker.broker.join("ingest", timeout=10_000)
    broker.channel.queue_purge("ingest.XQ")  # the vhost is the run's: start from an empty queue
    refused = [
        {"channel": "webhook", "account_id": "acct", "chat_id": f"c{i}", "sender_id": "u", "text": f"hi {i}"}
        for i in range(3)
    ]
    for payload in refused:
        ingest.send(payload)  # no message id and no sent_at: refused and dead-lettered
    worker.broker.join("ingest", timeout=10_000)
    wait_for(lambda: waiting("ingest.XQ") == 3, 15, message="three inbounds in ingest.XQ")

    listed = run("ops", "dead-letters", "ingest")
    assert listed.returncode == 0, listed.output
    assert "3 message(s) in ingest.XQ (left there)" in listed.output
    assert "chat_id=c0" in listed.output and "sent_at: is required" in listed.output
    assert "hi 0" not in listed.output  # a person's words are not printed
    wait_for(lambda: waiting("ingest.XQ") == 3, 10, message="listing leaves them in the queue")

    refused_export = run("ops", "dead-letters", "dispatch", "--export", str(tmp_path / "x.jsonl"))
    assert refused_export.returncode == 2 and "--export is for ingest only" in refused_export.output

    path = tmp_path / "ingest.jsonl"
    exported = run("ops", "dead-letters", "ingest", "--export", str(path))
    assert exported.returncode == 0, exported.output
    assert f"exported 3 inbound(s) from ingest.XQ to {path}" in exported.output
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["chat_id"] for line in lines) == ["c0", "c1", "c2"]
    wait_for(lambda: waiting("ingest.XQ") == 0, 10, message="exported messages acknowledged")

    # The operator adds what was missing; replay accepts each once.
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(
        "".join(json.dumps({**line, "message_id": f"fixed-{line['chat_id']}"}) + "\n" for line in lines)
    )
    replayed = run("replay", str(fixed))
    assert "accepted 3" in replayed.output, replayed.output
    assert execute("SELECT count(*) FROM message WHERE role = 'user'")[0][0] >= 3


def test_an_empty_or_missing_dead_letter_queue_is_said_plainly(worker):
    from zenthor.broker import broker

    broker.channel.queue_purge("outbound.XQ")
    empty = run("ops", "dead-letters", "outbound")
    assert empty.returncode == 0 and "0 message(s) in outbound.XQ (left there)" in empty.output
