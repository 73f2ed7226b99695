"""Workers for tests: Dramatiq in this process, or real ``zenthor worker`` (``dramatiq zenthor.actors``)
subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq


class InProcessWorker:
    """A Dramatiq worker with 8 threads on the real broker, plus our process-boot hooks."""

    def __init__(self, threads: int = 8) -> None:
        import zenthor.actors  # noqa: F401
        from zenthor.broker import broker

        self.broker = broker
        self.worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop(timeout=10_000)
        detach(self.worker)


def detach(worker: dramatiq.Worker) -> None:
    """Take a stopped worker's hook off its broker. ``Worker.start`` adds a ``_WorkerMiddleware``
    to the broker and ``stop`` leaves it there: the next worker on the same broker would log
    "adding a middleware of the same type twice", and a queue declared later would get a consumer
    on the stopped worker."""
    worker.broker.middleware[:] = [m for m in worker.broker.middleware if getattr(m, "worker", None) is not worker]


class WorkerProcess:
    """A real ``zenthor worker`` process (Dramatiq's CLI on ``zenthor.actors``); its JSON log lines
    are kept for assertions."""

    def __init__(
        self,
        name: str,
        *,
        threads: int = 4,
        processes: int = 1,
        env: dict[str, str] | None = None,
        queues: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"zenthor-{name}-", suffix=".log")[1])
        # Metrics off unless a test asks (with a free port): many workers run at once here.
        full_env = {**os.environ, "WORKER_ID": name, "WORKER_METRICS_PORT": "0", **(env or {})}
        command = [
            sys.executable,
            "-m",
            "zenthor.cli",
            "worker",  # dramatiq zenthor.actors, with our logging from the first line
            "-p",
            str(processes),
            "-t",
            str(threads),
        ]
        if queues:
            command += ["-Q", *queues]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def child_pids(self) -> list[int]:
        """The worker processes under dramatiq's main process."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (main process and its workers)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        """``kill -9`` every process of this worker, as a crashed host would."""
        self.signal_all(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (warm shutdown); SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.signal_all(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()

    def events(self, name: str | None = None) -> list[dict]:
        """The JSON log records this worker wrote (optionally only event ``name``)."""
        return log_events(self.log_path, name)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def log_events(path: Path, name: str | None = None) -> list[dict]:
    """The JSON log records in a process's log file (optionally only event ``name``)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if name is None or record.get("event") == name:
            records.append(record)
    return records


def wait_for(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, message: str = ""
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


class DbThread(threading.Thread):
    """A thread that hands its database connection back to the pool when it ends.

    Peewee gives every thread its own pooled connection; a test thread that touched the database
    and exited without closing it would hold that connection for the rest of the run.
    """

    def run(self) -> None:
        from zenthor.db import database

        try:
            super().run()
        finally:
            if not database.is_closed():
                database.close()
