"""Where a worker process group keeps its Prometheus metrics, and the server that exposes them.

A worker is a process group: ``dramatiq zenthor.actors`` is one master process that forks the
worker processes (``--processes``) and Dramatiq's "fork" processes. Each worker process counts in
its own files (prometheus_client's multiprocess mode) in one directory per group, and a fork
process started by :class:`zenthor.middleware.worker_metrics.WorkerMetrics` serves the sum of
every process's files on ``WORKER_METRICS_HOST:WORKER_METRICS_PORT`` (0: off).

Order matters. prometheus_client decides once per process, when ``prometheus_client.values`` is
first imported, whether values live in memory or in ``PROMETHEUS_MULTIPROC_DIR``; and Dramatiq's
``dramatiq.middleware.prometheus`` reads ``dramatiq_prom_db`` when it is imported. So
:func:`prepare_worker_metrics` sets both variables before either import: it is the first thing
:mod:`zenthor.observability.metrics` does, and that module is the first importer of
prometheus_client in a worker (a later import cannot change the choice; then metrics stay off
and the reason is logged).

The group's directory is named after the master's pid *and start time*, so a new run never finds
files of a dead run (which would inflate its counters) even when the pid comes round again, as
pid 1 does in every container; directories of groups that are gone are removed at boot. Two
groups on one host therefore never share files; they need different ports.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from zenthor.observability.logging import configure_logging
from zenthor.settings import SettingsError, get_settings

_logger = logging.getLogger("zenthor.worker_metrics")

_GROUP_DIR = re.compile(r"^group-(\d+)-(\d+)$")

# Per process (a forked child must decide again): the config, or None when metrics are off here.
_prepared: dict[int, WorkerMetricsConfig | None] = {}


@dataclass(frozen=True)
class WorkerMetricsConfig:
    """This process group's metrics directory and where the group serves them."""

    directory: Path
    host: str
    port: int


# The functions Dramatiq's CLI runs in the processes it starts (its worker and fork processes).
_DRAMATIQ_TARGETS = frozenset({"dramatiq.cli.worker_process", "dramatiq.cli.fork_process"})


def in_dramatiq_process_group() -> bool:
    """True in a process Dramatiq's command line started: a worker process or a fork process.

    The gateway (with uvicorn's ``--workers``, a multiprocessing child too), the scheduler, the
    WhatsApp runtime and the tests' in-process worker import the broker as well, and with it
    periodiq, which imports ``dramatiq.cli``; they keep their metrics in memory. Only the target
    of the multiprocessing process tells them apart (``_target``: the public API has no name for it).
    """
    target = getattr(multiprocessing.current_process(), "_target", None)
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
    return name in _DRAMATIQ_TARGETS and multiprocessing.parent_process() is not None


def prepare_worker_metrics() -> WorkerMetricsConfig | None:
    """In a worker group with ``WORKER_METRICS_PORT`` set: make the group's directory, point
    prometheus_client and Dramatiq's middleware at it, and return where to serve. None
    elsewhere, or when metrics are off. Idempotent per process."""
    pid = os.getpid()
    if pid not in _prepared:
        _prepared[pid] = _prepare() if in_dramatiq_process_group() else None
    return _prepared[pid]


def _prepare() -> WorkerMetricsConfig | None:
    try:
        settings = get_settings()
    except SettingsError:
        return None  # the entry point reports the bad setting and exits
    if settings.WORKER_METRICS_PORT == 0:
        return None
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not values.ValueClass._multiprocess:
        _logger.error(
            "worker metrics are off: prometheus_client was imported before its multiprocess "
            "directory was set, so this process's values would stay in memory",
            extra={"event": "worker.metrics_unavailable"},
        )
        return None
    base = Path(settings.WORKER_METRICS_DIR or Path(tempfile.gettempdir()) / "zenthor-worker-metrics")
    master = multiprocessing.parent_process()
    assert master is not None and master.pid is not None
    directory = base / _group_name(master.pid)
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)  # counters of this host's workers only
        directory.mkdir(mode=0o700, exist_ok=True)
        _remove_dead_groups(base, keep=directory.name)
    except OSError as error:
        _logger.error(
            "worker metrics are off: cannot use %s: %s",
            directory,
            error,
            extra={"event": "worker.metrics_unavailable"},
        )
        return None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # Dramatiq's middleware reads these when its module is imported (after this).
    os.environ["dramatiq_prom_db"] = str(directory)
    os.environ["dramatiq_prom_host"] = settings.WORKER_METRICS_HOST
    os.environ["dramatiq_prom_port"] = str(settings.WORKER_METRICS_PORT)
    return WorkerMetricsConfig(directory, settings.WORKER_METRICS_HOST, settings.WORKER_METRICS_PORT)


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


def _group_name(master_pid: int) -> str:
    return f"group-{master_pid}-{_start_ticks(master_pid) or 0}"


def _remove_dead_groups(base: Path, *, keep: str) -> None:
    """Delete the directories of groups whose master is gone (only names this module made).

    Without /proc nothing can be told alive or dead: nothing is deleted."""
    if _start_ticks(os.getpid()) is None:
        return
    for entry in base.iterdir():
        match = _GROUP_DIR.match(entry.name)
        if entry.name == keep or match is None or not entry.is_dir():
            continue
        if _start_ticks(int(match.group(1))) != match.group(2):
            # Siblings booting at once may race to delete the same directory: either wins.
            shutil.rmtree(entry, ignore_errors=True)


def serve_worker_metrics() -> int:
    """Dramatiq fork process: serve the group's metrics, every process's files summed, until
    Dramatiq stops it (its SIGTERM handler exits the process)."""
    # This fork imports nothing else of ours: give its few lines the same format as the workers'.
    configure_logging()
    config = prepare_worker_metrics()
    if config is None:
        _logger.error(
            "worker metrics are not configured in this process group",
            extra={"event": "worker.metrics_unavailable"},
        )
        return 1
    # Imported here, after prepare_worker_metrics set the directory (see the module docstring).
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(config.directory))
    try:
        start_http_server(config.port, addr=config.host, registry=registry)
    except OSError as error:
        # The workers go on without metrics; Dramatiq does not restart or watch fork processes.
        _logger.error(
            "cannot serve worker metrics on %s:%s: %s (is another worker group using WORKER_METRICS_PORT?)",
            config.host,
            config.port,
            error,
            extra={"event": "worker.metrics_unavailable"},
        )
        return 1
    _logger.info("serving worker metrics on %s:%s from %s", config.host, config.port, config.directory)
    threading.Event().wait()
    return 0
