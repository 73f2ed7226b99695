"""Worker metrics (issue 10 item 4) with real ``dramatiq zenthor.actors`` processes.

A worker group started with ``WORKER_METRICS_PORT`` serves Dramatiq's metrics and ours, summed over
its processes (prometheus_client multiprocess mode); a dead run's files never count in a new run;
the gateway's queue gauges read only open rows through the partial indexes; and the Grafana
dashboard names only metrics that a real worker or gateway serves.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import zenthor.actors  # noqa: F401 - accept() publishes dispatch through the real broker
from tests.ingress.helpers import CallbackServer, GatewayProcess, free_port, inbound
from tests.support.fake_model import FakeModel
from tests.support.workers import WorkerProcess, wait_for
from zenthor.broker import broker
from zenthor.db import database, execute
from zenthor.ingress import accept
from zenthor.queue.stats import _QUEUE_DEPTH, queue_depth

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "zenthor.json"
SECRET = "metrics-secret"
MODEL = "fake-model"

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (sample name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def dispatch_consumers() -> int:
    broker.declare_queue("dispatch", ensure=True)
    return broker.channel.queue_declare(queue="dispatch", passive=True).method.consumer_count


class MeteredStack:
    """A worker group with metrics on a free port, a fake model and a fake webhook receiver."""

    def __init__(self, name: str, base: Path, *, processes: int = 2, port: int | None = None) -> None:
        self.base = base
        self.model = FakeModel().start()
        self.callback = CallbackServer()
        self.port = port or free_port()
        self.env = {
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_CALLBACK_URL": self.callback.url,
            "WEBHOOK_DEFAULT_ACCOUNT": "acct",  # the shortcut secret serves the account inbound() uses
            "AI_BASE_URL": self.model.base_url,
            "AI_MODEL": MODEL,
            "WORKER_METRICS_PORT": str(self.port),
            "WORKER_METRICS_HOST": "127.0.0.1",
            "WORKER_METRICS_DIR": str(base),
            "LOG_LEVEL": "WARNING",
        }
        self.worker = WorkerProcess(name, threads=2, processes=processes, env=self.env)
        self._stopped = False

    def group_dir(self) -> Path:
        (directory,) = self.base.glob(f"group-{self.worker.proc.pid}-*")
        return directory

    def wait_ready(self, consumers: int) -> None:
        """Every worker process consumes ``dispatch`` and the group's server answers."""
        wait_for(lambda: dispatch_consumers() >= consumers, 60, interval=0.2, message="worker consumers")
        wait_for(self._answers, 30, interval=0.2, message=f"worker metrics on port {self.port}")

    def _answers(self) -> bool:
        try:
            scrape(self.port)
        except httpx.HTTPError:
            return False
        return True

    def chat(self, count: int, prefix: str) -> None:
        """``count`` webhook messages, each in its own chat, answered by the model and delivered."""
        for n in range(count):
            result = accept(
                inbound(f"{prefix} {n}", message_id=f"{prefix}-{n}", chat_id=f"{prefix}-chat-{n}")
            )
            assert result.status == "accepted", result
        wait_for(
            lambda: len(self.callback.ok_records()) >= count,
            60,
            interval=0.1,
            message=f"{count} replies delivered (got {len(self.callback.ok_records())})",
        )

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.worker.stop()
            self.model.stop()
            self.callback.stop()


@pytest.fixture
def metrics_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="zenthor-worker-metrics-test-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def stacks(metrics_base: Path) -> Iterator[list[MeteredStack]]:
    started: list[MeteredStack] = []
    yield started
    for stack in started:
        stack.stop()


def send_failing_message() -> None:
    """A deliver message with arguments the actor cannot take: it raises and is dead-lettered."""
    broker.enqueue(
        dramatiq.Message(queue_name="outbound", actor_name="deliver", args=(1, 2), kwargs={}, options={})
    )


def test_a_worker_group_serves_dramatiq_and_zenthor_metrics_summed_over_its_processes(stacks, metrics_base):
    stack = MeteredStack("metrics-worker", metrics_base)
    stacks.append(stack)
    stack.wait_ready(consumers=2)
    jobs = 16
    stack.chat(jobs, "sum")
    send_failing_message()
    wait_for(
        lambda: total(parse(scrape(stack.port)), "dramatiq_message_errors_total", actor_name="deliver") >= 1,
        30,
        message="the failing deliver message counted",
    )
    # The last delivery's counters are written right after its callback answered.
    wait_for(
        lambda: total(parse(scrape(stack.port)), "zenthor_deliveries_total", outcome="sent") >= jobs,
        30,
        message="every delivery counted",
    )
    samples = parse(scrape(stack.port))

    # Dramatiq's own middleware: messages, errors, dead letters and durations per actor.
    assert total(samples, "dramatiq_messages_total", actor_name="dispatch", queue_name="dispatch") >= jobs
    assert total(samples, "dramatiq_messages_total", actor_name="deliver", queue_name="outbound") >= jobs + 1
    assert total(samples, "dramatiq_message_errors_total", actor_name="deliver") == 1
    assert total(samples, "dramatiq_message_rejects_total", actor_name="deliver") == 1
    assert total(samples, "dramatiq_message_duration_milliseconds_count", actor_name="dispatch") >= jobs
    # (The sweep's re-check chain may be running at the scrape: only the actors of this test.)
    for actor in ("dispatch", "deliver"):
        assert total(samples, "dramatiq_messages_inprogress", actor_name=actor) == 0
    # Ours, counted in the worker processes.
    assert total(samples, "zenthor_claim_seconds_count") >= jobs
    assert total(samples, "zenthor_turn_seconds_count") == jobs
    assert total(samples, "zenthor_turn_seconds_sum") > 0
    assert total(samples, "zenthor_turns_in_progress") == 0
    model_calls = len(stack.model.requests)
    assert model_calls >= jobs
    assert total(samples, "zenthor_model_call_seconds_count", model=MODEL, outcome="ok") == model_calls
    assert total(samples, "zenthor_deliveries_total", channel="webhook", outcome="sent") == jobs
    assert total(samples, "zenthor_delivery_seconds_count", channel="webhook") == jobs
    assert ("zenthor_lease_losses_total", frozenset({("lease", "agent_job")})) in samples
    assert total(samples, "zenthor_lease_losses_total") == 0
    assert total(samples, "zenthor_events_total", event="queue.job.completed") == jobs
    assert total(samples, "zenthor_events_total", event="outbound.sent") == jobs

    # Summed over the group: each worker process wrote its own files, and the scrape is their sum.
    directory = stack.group_dir()
    per_process: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        own = parse_merged([path])
        per_process[path.stem.removeprefix("counter_")] = total(
            own, "dramatiq_messages_total", actor_name="dispatch"
        )
    workers = {str(pid) for pid in stack.worker.child_pids()}
    assert set(per_process) <= workers
    assert len([pid for pid, value in per_process.items() if value > 0]) == 2, per_process
    assert sum(per_process.values()) == total(samples, "dramatiq_messages_total", actor_name="dispatch")
    assert sum(per_process.values()) == total(
        parse(scrape(stack.port)), "dramatiq_messages_total", actor_name="dispatch"
    )

    # At a warm shutdown each process is marked dead: its live gauges drop out, counters stay.
    stack.stop()
    assert not list(directory.glob("gauge_livesum_*.db"))
    assert len(list(directory.glob("counter_*.db"))) == 2


def parse_merged(paths: list[Path]) -> Samples:
    """The samples prometheus_client's collector reads from these files alone."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in MultiProcessCollector.merge([str(p) for p in paths], accumulate=True)
        for sample in family.samples
    }


def test_a_dead_runs_files_do_not_count_in_the_next_run(stacks, metrics_base):
    first = MeteredStack("metrics-crashed", metrics_base, processes=1)
    stacks.append(first)
    first.wait_ready(consumers=1)
    first.chat(3, "before")
    wait_for(lambda: total(parse(scrape(first.port)), "zenthor_deliveries_total", outcome="sent") >= 3, 30)
    dead_dir = first.group_dir()
    first.worker.kill9()  # no shutdown hook runs: every file of that run stays behind
    assert list(dead_dir.glob("counter_*.db"))
    wait_for(lambda: dispatch_consumers() == 0, 30, interval=0.2, message="the dead worker's consumers gone")

    second = MeteredStack("metrics-next", metrics_base, processes=1)
    stacks.append(second)
    second.wait_ready(consumers=1)
    assert not dead_dir.exists()
    samples = parse(scrape(second.port))
    assert total(samples, "zenthor_turn_seconds_count") == 0
    assert total(samples, "zenthor_deliveries_total") == 0
    second.chat(2, "after")
    wait_for(
        lambda: total(parse(scrape(second.port)), "zenthor_deliveries_total", outcome="sent") == 2,
        30,
        message="only this run's deliveries",
    )
    assert total(parse(scrape(second.port)), "zenthor_turn_seconds_count") == 2


def test_two_groups_on_one_host_keep_their_own_files_and_a_taken_port_only_costs_metrics(
    stacks, metrics_base
):
    first = MeteredStack("metrics-a", metrics_base, processes=1)
    stacks.append(first)  # stopped by the fixture even if the next one fails to start
    second = MeteredStack("metrics-b", metrics_base, processes=1)
    stacks.append(second)
    first.wait_ready(consumers=1)
    second.wait_ready(consumers=2)
    assert first.group_dir() != second.group_dir()
    # A third group configured with the first one's port.
    clash = MeteredStack("metrics-clash", metrics_base, processes=1, port=first.port)
    stacks.append(clash)
    wait_for(
        lambda: any(r.get("event") == "worker.metrics_unavailable" for r in clash.worker.events()),
        30,
        message="the clash logged",
    )
    wait_for(lambda: dispatch_consumers() >= 3, 60, interval=0.2, message="the clashing group consumes")

    jobs = 6
    # Any of the three groups may run each one; each group has its own fake model and callback
    # server, so count the replies across the three.
    for n in range(jobs):
        accept(inbound(f"two {n}", message_id=f"two-{n}", chat_id=f"two-chat-{n}"))
    wait_for(
        lambda: sum(len(s.callback.ok_records()) for s in (first, second, clash)) >= jobs,
        60,
        message="every reply delivered",
    )
    groups = {stack.worker.name: stack for stack in (first, second, clash)}

    def sent(stack: MeteredStack) -> float:
        return total(parse(scrape(stack.port)), "zenthor_deliveries_total", outcome="sent")

    # The clash's own deliveries are in its files but served by nobody; the first group's port
    # still serves the first group's files only.
    wait_for(
        lambda: sent(first) + sent(second) + delivered_by(clash) == jobs,
        30,
        message="each delivery counted once, by the group that made it",
    )
    for name, stack in groups.items():
        pids = {path.stem.split("_")[-1] for path in stack.group_dir().glob("*.db")}
        assert pids <= {str(pid) for pid in stack.worker.child_pids()}, name


def delivered_by(stack: MeteredStack) -> float:
    """Deliveries counted in a group's own files (read directly, not through a server)."""
    return total(parse_merged(list(stack.group_dir().glob("counter_*.db"))), "zenthor_deliveries_total")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or ranges)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors ([$__rate_interval], [5m])
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    keywords |= {"and", "or", "unless", "inf", "nan"}
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()
        if match.group() not in keywords and not following.startswith("("):
            names.add(match.group())
    return names


def dashboard_metric_names() -> dict[str, set[str]]:
    """Each panel's title and the metric names its queries read."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.setdefault(panel["title"], set()).update(metric_names(target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.setdefault(f"variable {variable['name']}", set()).update(metric_names(variable["query"]))
    return found


def test_metric_names_are_extracted_from_promql():
    assert metric_names(
        "histogram_quantile(0.95, sum by (le, actor_name) (rate(dramatiq_message_duration_milliseconds_bucket"
        '{queue_name="dispatch"}[$__rate_interval])))'
    ) == {"dramatiq_message_duration_milliseconds_bucket"}
    assert metric_names("max by (account, state) (zenthor_whatsapp_account_state) == 1 or vector(0)") == {
        "zenthor_whatsapp_account_state"
    }


def test_every_metric_the_dashboard_names_is_served_by_a_worker_or_the_gateway(stacks, metrics_base):
    from zenthor.queue import sweep_state
    from zenthor.queue.channel_leases import acquire_account, set_account_state

    panels = dashboard_metric_names()
    named = set().union(*panels.values())
    assert len(panels) >= 15 and len(named) >= 20, panels
    assert all(name.startswith(("dramatiq_", "zenthor_")) for name in named), named

    stack = MeteredStack("metrics-dashboard", metrics_base, processes=1)
    stacks.append(stack)
    stack.wait_ready(consumers=1)
    stack.chat(2, "dash")
    send_failing_message()
    wait_for(
        lambda: total(parse(scrape(stack.port)), "dramatiq_message_rejects_total") >= 1,
        30,
        message="the failing message dead-lettered",
    )
    worker_samples = parse(scrape(stack.port))

    owned = acquire_account("whatsapp", "shop", "host-a", ttl_ms=60_000, auth_mode="postgres")
    set_account_state(owned, "connected")
    sweep_state.record_start("manual")
    sweep_state.record_finish({})
    gateway = GatewayProcess(
        {"WEBHOOK_SECRET": SECRET, "WEBHOOK_CALLBACK_URL": stack.callback.url, "WEBHOOK_DEFAULT_ACCOUNT": "acct"}
    )
    try:
        gateway_text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    finally:
        gateway.stop()
    gateway_samples = parse(gateway_text)

    served = {name for name, _ in worker_samples} | {name for name, _ in gateway_samples}
    missing = {title: names - served for title, names in panels.items() if names - served}
    assert not missing, f"the dashboard names metrics nobody serves: {missing}"
    # The gateway no longer shows worker-only histograms that could only ever be zero there.
    gateway_names = {name for name, _ in gateway_samples}
    assert not {
        n for n in gateway_names if n.startswith(("zenthor_claim_", "zenthor_turn_", "zenthor_model_"))
    }
    assert "zenthor_events_total" in gateway_names and "zenthor_jobs" in gateway_names


def _scans(plan: dict) -> Iterator[dict]:
    if "Relation Name" in plan:
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


def test_queue_gauges_read_only_open_rows_through_the_indexes():
    """With 40,000 finished jobs and sent rows, the gauges' statement reads only the open ones."""
    execute(
        "INSERT INTO conversation (channel, account_id, chat_id) "
        "SELECT 'webhook', 'acct', 'depth-' || g FROM generate_series(1, 200) g"
    )
    first = execute("SELECT min(id) FROM conversation")[0][0]
    execute(
        "INSERT INTO agent_job (conversation_id, status, finished_at) "
        "SELECT %s + mod(g, 200), CASE WHEN mod(g, 10) = 0 THEN 'failed' ELSE 'done' END, now() "
        "FROM generate_series(1, 40000) g",
        (first,),
    )
    execute(
        "INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text, status, sent_at) "
        "SELECT %s + mod(g, 200), 'webhook', 'acct', 'c', 'x', 'sent', now() FROM generate_series(1, 40000) g",
        (first,),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, status) SELECT %s + g, 'pending' FROM generate_series(0, 4) g",
        (first,),
    )
    execute(
        "INSERT INTO agent_job (conversation_id, status, locked_until) "
        "SELECT %s + g, 'processing', now() - interval '1 second' FROM generate_series(5, 7) g",
        (first,),
    )
    execute("INSERT INTO agent_job (conversation_id, status) VALUES (%s, 'awaiting_approval')", (first + 8,))
    execute(
        "INSERT INTO outbound_message (conversation_id, channel, account_id, chat_id, text, status) "
        "SELECT %s + g, 'webhook', 'acct', 'c', 'x', CASE WHEN g < 4 THEN 'pending' ELSE 'sending' END "
        "FROM generate_series(0, 5) g",
        (first,),
    )
    for table in ("agent_job", "outbound_message"):
        database.execute_sql(f"ANALYZE {table}")

    depth = queue_depth()
    assert depth["jobs"] == {"pending": 5, "processing": 3, "awaiting_approval": 1}
    assert depth["outbox"] == {"pending": 4, "sending": 2}
    assert depth["expired_leases"] == 3

    (plan,) = execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _QUEUE_DEPTH)[0]
    scans = list(_scans(plan[0]["Plan"]))
    assert scans, plan
    open_rows = 5 + 3 + 1 + 4 + 2
    for scan in scans:
        if scan["Relation Name"] not in ("agent_job", "outbound_message"):
            continue
        assert scan["Node Type"] != "Seq Scan", scan
        read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
        assert read <= open_rows, f"{scan['Node Type']} on {scan['Relation Name']} read {read} rows"
