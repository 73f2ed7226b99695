"""What the logs say about themselves: the console names an event once; an idle sweep is quiet."""

from __future__ import annotations

import logging
import os
import subprocess
import sys


def test_console_lines_name_the_event_once():
    code = (
        "from zenthor.observability import configure_logging, emit\n"
        "from zenthor.observability import events as ev\n"
        "configure_logging('test')\n"
        "emit(ev.JOB_RELEASED, job_id=7, conversation_id=3, reason='shutdown')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    (line,) = [line for line in result.stderr.splitlines() if "queue.job.released" in line]
    assert line.count("queue.job.released") == 1
    assert "job_id=7" in line and "reason=shutdown" in line


def test_a_sweep_that_finds_nothing_logs_at_debug_and_one_that_works_at_info(caplog):
    from tests.support.factories import make_conversation, make_job
    from zenthor.actors.sweep import run_sweep
    from zenthor.db import execute
    from zenthor.queue import claim

    caplog.set_level(logging.DEBUG, logger="zenthor.events")
    run_sweep("manual")
    idle = [r for r in caplog.records if getattr(r, "event", None) == "queue.sweep.completed"]
    assert [r.levelno for r in idle] == [logging.DEBUG]
    claim(make_job(make_conversation("swept")), "dead-worker")
    execute("UPDATE agent_job SET locked_until = now() - interval '1 second'")
    caplog.clear()
    run_sweep("manual")
    busy = [r for r in caplog.records if getattr(r, "event", None) == "queue.sweep.completed"]
    assert [r.levelno for r in busy] == [logging.INFO] and busy[0].requeued == 1
