"""The deployment files name commands that exist and ports an operator can move."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zenthor.cli import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def zenthor_commands_in(text: str) -> list[list[str]]:
    """Every ``zenthor …`` invocation: compose's JSON-array commands and systemd's ExecStart."""
    found = [re.findall(r'"([^"]+)"', array) for array in re.findall(r"command: \[(.*?)\]", text)]
    found += [line.split()[0:] for line in re.findall(r"ExecStart=\S*/(zenthor .*)", text)]
    return [words for words in found if words and words[0] == "zenthor"]


def assert_runs(words: list[str]) -> None:
    """``words`` names a real subcommand (``--help`` parses the path without running it)."""
    path = [w for w in words[1:] if not w.startswith("-")][:2]
    group = cli
    for name in path:
        command = getattr(group, "commands", {}).get(name)
        if command is None:
            break
        group = command
    assert group is not cli, f"no such zenthor command: {' '.join(words)}"


def test_every_command_in_compose_and_systemd_is_a_zenthor_command():
    texts = [COMPOSE.read_text(), *(p.read_text() for p in (ROOT / "ops" / "systemd").glob("*.service"))]
    commands = [words for text in texts for words in zenthor_commands_in(text)]
    names = {tuple(w for w in words[1:3] if not w.startswith("-")) for words in commands}
    assert {("worker",), ("scheduler",), ("gateway",), ("migrate",), ("whatsapp", "run")} <= names
    for words in commands:
        assert_runs(words)
    assert "dramatiq zenthor.actors" not in " ".join(texts).replace(
        "(zenthor worker: dramatiq zenthor.actors)", ""
    )


def test_compose_publishes_configurable_ports_on_loopback_only():
    ports = re.findall(
        r'"([^"]*:\d+)"', "\n".join(re.findall(r"ports:.*|^\s+- \"127.*", COMPOSE.read_text(), re.M))
    )
    assert ports, "no published port found"
    for mapping in ports:
        assert re.fullmatch(r"127\.0\.0\.1:\$\{ZENTHOR_[A-Z_]+_PORT:-\d+\}:\d+", mapping), mapping


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed here",
)
def test_docker_compose_accepts_the_file():
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--profile", "webhook", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
