"""What the logs say about themselves: every line of a real worker, scheduler and gateway is one
JSON object with a sentence for ``message``; the console names an event once; an idle sweep is
quiet."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.ingress.helpers import CallbackServer, GatewayProcess, count, signed_post
from tests.support.workers import WorkerProcess, wait_for

SECRET = "log-lines-secret"


def json_lines(path: str | Path) -> list[dict]:
    """Every line of a process's output, each parsed as JSON (a line that is not fails the test)."""
    records = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path}:{number} is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


def assert_events_say_a_sentence(records: list[dict]) -> None:
    typed = [r for r in records if r.get("event") not in (None, "log")]
    assert typed, "no typed event in the log"
    for record in typed:
        assert record["message"] and record["message"] != record["event"], record


def test_every_line_of_a_worker_the_scheduler_and_the_gateway_is_json(settings_env):
    """Dramatiq's and periodiq's own start and stop lines too: ``zenthor worker`` and ``zenthor
    scheduler`` install the handler before handing over to the libraries' command lines."""
    callback = CallbackServer()
    env = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_CALLBACK_URL": callback.url,
        "WEBHOOK_DEFAULT_ACCOUNT": "acct",
        "LOG_LEVEL": "INFO",
    }
    settings_env(**env)
    scheduler_log = Path(tempfile.mkstemp(prefix="zenthor-scheduler-", suffix=".log")[1])
    worker = gateway = scheduler = None
    try:
        worker = WorkerProcess("json-worker", processes=2, threads=2, env=env)
        gateway = GatewayProcess({**env})
        with scheduler_log.open("wb") as out:
            scheduler = subprocess.Popen(
                [sys.executable, "-m", "zenthor.cli", "scheduler"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: len(worker.events()) and "ready for action" in worker.log_text(), 60, message="worker"
        )
        body = json.dumps({"message_id": "json-1", "chat_id": "c", "sender_id": "s", "text": "hi"}).encode()
        with httpx.Client(timeout=10) as client:
            response = signed_post(client, f"{gateway.url}/v1/webhook/acct/messages", body, SECRET)
        assert response.status_code == 202, response.text
        wait_for(lambda: callback.ok_records(), 60, message="the reply at the callback")
        wait_for(
            lambda: "Scheduling Actor(sweep)" in scheduler_log.read_text(), 60, message="scheduler start"
        )
    finally:
        if scheduler is not None:
            if scheduler.poll() is None:
                os.killpg(scheduler.pid, signal.SIGTERM)
            scheduler.wait(timeout=20)
        for process in (gateway, worker, callback):
            if process is not None:
                process.stop()
    assert count("outbound_message", "status = 'sent'") == 1

    worker_lines = json_lines(worker.log_path)
    loggers = {r["logger"] for r in worker_lines}
    assert {"dramatiq.MainProcess", "dramatiq.WorkerProcess(0)", "dramatiq.WorkerProcess(1)"} <= loggers
    said = [r["message"] for r in worker_lines]
    assert any("is booting up" in m for m in said) and any("shut down" in m for m in said)
    assert_events_say_a_sentence(worker_lines)

    scheduler_lines = json_lines(scheduler_log)
    assert scheduler_lines[0]["message"].startswith("Starting Periodiq")
    assert scheduler_lines[-1]["message"] == "Periodiq stopped."

    gateway_lines = json_lines(gateway.log_path)
    assert any(r["logger"].startswith("uvicorn") for r in gateway_lines)
    assert_events_say_a_sentence(gateway_lines)
    for path in (worker.log_path, scheduler_log, gateway.log_path):
        Path(path).unlink(missing_ok=True)


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
    # The sentence says the job and the reason; the fields it does not say follow it.
    assert "job 7 lease released (shutdown) conversation_id=3" in line
    assert "job_id=" not in line and "reason=" not in line


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


def test_a_consumer_reconnecting_every_second_logs_once_per_interval():
    """While RabbitMQ is away each consumer retries every second; its CRITICAL line is let through
    once per interval, and the next one says how many were held back."""
    from zenthor.middleware.broker_recovery import _OncePerInterval

    held = _OncePerInterval(interval_s=0.2)

    def record() -> logging.LogRecord:
        return logging.makeLogRecord(
            {"msg": "Consumer encountered a connection error: %s", "args": ("refused",), "levelno": 50}
        )

    assert [held.filter(record()) for _ in range(5)] == [True, False, False, False, False]
    wait_for(lambda: held.filter(later := record()) and later, 5, message="the interval to pass")
    assert held.filter(record()) is False


def test_warnings_and_uncaught_thread_errors_are_json_lines():
    code = (
        "import threading, warnings\n"
        "from zenthor.observability import configure_logging\n"
        "configure_logging('test')\n"
        "warnings.warn('careful')\n"
        "t = threading.Thread(target=lambda: 1 / 0)\n"
        "t.start(); t.join()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert [line["logger"] for line in lines] == ["py.warnings", "zenthor"]
    assert lines[1]["event"] == "thread.uncaught_exception" and "ZeroDivisionError" in lines[1]["exc_info"]
