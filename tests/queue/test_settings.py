"""A missing or malformed setting stops a process at start with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENT_JOB_LOCK_MS", "sixty"),
        ("DATABASE_URL", "mysql://root@localhost/zenthor"),
        ("RABBITMQ_URL", "http://localhost:15672"),
        ("LOG_FORMAT", "xml"),
        ("GATEWAY_PORT", "70000"),
    ],
)
def test_the_worker_refuses_a_malformed_setting_naming_it(variable, value):
    result = run([sys.executable, "-c", "import zenthor.actors"], **{variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and value in lines[0]


@pytest.mark.parametrize(
    ("named", "env"),
    [
        ("AGENT_JOB_HEARTBEAT_MS", {"AGENT_JOB_LOCK_MS": "10000", "AGENT_JOB_HEARTBEAT_MS": "9000"}),
        ("WEBHOOK_TIMEOUT_S", {"WEBHOOK_TIMEOUT_S": "40", "OUTBOUND_LOCK_MS": "30000"}),
        ("QUEUE_DEBOUNCE_MAX_MS", {"QUEUE_DEBOUNCE_MS": "5000", "QUEUE_DEBOUNCE_MAX_MS": "1000"}),
    ],
)
def test_settings_that_contradict_each_other_are_refused(named, env):
    """A heartbeat longer than half the lease, a callback timeout outliving its delivery lease."""
    result = run([sys.executable, "-m", "zenthor.cli", "ops", "status"], **env)
    assert result.returncode == 2
    assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("zenthor: invalid settings: ")  # not "invalid setting settings"


@pytest.mark.parametrize(
    "command",
    [
        ["ops", "status"],
        ["ops", "status", "--json"],
        ["whatsapp", "status"],
        ["migrate"],
        ["ops", "retry-job", "1"],
    ],
)
def test_a_command_with_postgres_unreachable_says_so_in_one_line(command):
    result = run(
        [sys.executable, "-m", "zenthor.cli", *command],
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zenthor: cannot reach Postgres at 127.0.0.1:1/nowhere (DATABASE_URL)")


def test_a_missing_required_setting_is_named():
    from zenthor.settings import SettingsError, get_settings

    with pytest.raises(SettingsError, match="missing setting WEBHOOK_SECRET"):
        get_settings().require("WEBHOOK_SECRET")


@pytest.mark.parametrize(
    ("missing", "env", "command"),
    [
        ("WEBHOOK_CALLBACK_URL", {"WEBHOOK_SECRET": "s"}, ["worker", "-p", "1", "-t", "1"]),
        ("WEBHOOK_CALLBACK_URL", {"WEBHOOK_SECRET": "s"}, ["gateway"]),
        ("WEBHOOK_SECRET", {"WEBHOOK_CALLBACK_URL": "http://127.0.0.1:9/replies"}, ["worker"]),
    ],
)
def test_a_process_that_could_never_answer_a_channel_refuses_to_start(missing, env, command):
    """A webhook channel half configured: the gateway would take messages that no worker could
    answer, and a worker would retry each reply for minutes while later replies wait behind it."""
    unset = {"WEBHOOK_SECRET": "", "WEBHOOK_CALLBACK_URL": ""}
    result = run([sys.executable, "-m", "zenthor.cli", *command], **{**unset, **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"zenthor: invalid settings: {missing} is required when"), lines[0]


def test_the_gateway_without_the_webhook_settings_refuses_to_start_naming_both():
    result = run([sys.executable, "-m", "zenthor.cli", "gateway"], WEBHOOK_SECRET="", WEBHOOK_CALLBACK_URL="")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("zenthor: missing settings WEBHOOK_SECRET and WEBHOOK_CALLBACK_URL")


@pytest.mark.parametrize("variable", ["ZENTHOR_SECRET_KEY", "ZENTHOR_SECRET_KEY_PREVIOUS"])
def test_a_short_secret_key_is_refused_by_name_without_echoing_it(variable):
    result = run([sys.executable, "-m", "zenthor.cli", "webhook", "list"], **{variable: "short-key-xyz"})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"zenthor: invalid setting {variable}: ") and "short-key-xyz" not in line
