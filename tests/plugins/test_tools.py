"""The tool interface: OpenAI tool list, validated calls, timeouts; never an exception to the caller."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.plugins.helpers import SIMPLE_TOOL, manifest, write_config, write_plugin
from zenthor.models.plugin_status import PluginStatus
from zenthor.plugins import tools as tools_module
from zenthor.plugins.registry import load_plugins
from zenthor.plugins.tools import ToolContext, ToolRegistry, get_tool_registry, reload_tool_registry

CTX = ToolContext(
    conversation_id=1, channel="test", account_id="acct", chat_id="chat", sender_id="alice", job_id=None
)

CODE = """
import threading, time
from zenthor.plugins.tools import ToolError, ToolResult

release = threading.Event()

def activate(config):
    def echo(arguments, context):
        return {"echo": arguments["text"], "conversation": context.conversation_id}
    def crash(arguments, context):
        raise KeyError("the thing")
    def hang(arguments, context):
        release.wait(30)
        return "finally"
    def refuse(arguments, context):
        raise ToolError("that date is in the past")
    def result(arguments, context):
        return ToolResult(ok=False, content="{}", error="custom failure")
    def weird(arguments, context):
        return {1, 2}
    return {"echo": echo, "crash": crash, "hang": hang, "refuse": refuse, "result": result, "weird": weird}
"""


def tool(name: str, **extra) -> dict:
    return {**SIMPLE_TOOL, "name": name, **extra}


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "plugins"
    data = manifest(
        "lab",
        tools=[
            tool("echo"),
            tool("crash"),
            tool("hang"),
            tool("refuse"),
            tool("result"),
            tool("weird"),
            tool("slowcap", timeout_s=0.2),
        ],
    )
    write_plugin(root, "lab", data, CODE.replace('"weird": weird}', '"weird": weird, "slowcap": hang}'))
    cfg = write_config(tmp_path / "p.toml", '[plugins]\nenabled = ["lab"]\n[tools]\ndeny = ["lab_weird"]\n')
    report = load_plugins(config_path=cfg, plugins_path=str(root), persist=False)
    assert report.record("lab").status == "activated", report.record("lab").diagnostics
    yield ToolRegistry(report)


def test_openai_tools_are_well_formed_sorted_and_allowed_only(registry):
    listed = registry.openai_tools()
    names = [t["function"]["name"] for t in listed]
    assert names == sorted(names) == registry.tool_names()
    assert "lab_weird" not in names  # denied in plugins.toml
    assert {"core_time_now", "core_memory_remember", "core_schedule_remind", "lab_echo"} <= set(names)
    for entry in listed:
        assert entry["type"] == "function"
        assert set(entry["function"]) == {"name", "description", "parameters"}
        assert re.fullmatch(r"^[a-zA-Z0-9_-]{1,64}$", entry["function"]["name"])
        assert entry["function"]["parameters"]["type"] == "object"
    assert json.loads(json.dumps(listed)) == listed


def test_approval_and_risk(registry):
    assert registry.requires_approval("core_schedule_remind") is True
    assert registry.risk("core_schedule_remind") == "medium"
    assert registry.requires_approval("core_time_now") is False
    assert registry.risk("core_time_now") == "low"
    assert registry.requires_approval("no_such_tool") is True
    assert registry.risk("no_such_tool") == "high"


def test_successful_call_with_dict_or_json_string(registry):
    for arguments in ({"text": "hi"}, '{"text": "hi"}'):
        result = registry.call("lab_echo", arguments, CTX)
        assert result.ok and result.error is None
        assert json.loads(result.content) == {"echo": "hi", "conversation": 1}


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("nope", {}, "unknown tool 'nope'"),
        ("lab_weird", {"text": "x"}, "tool 'lab_weird' is not allowed by the plugins configuration"),
        ("lab_echo", "{bad json", "arguments are not valid JSON"),
        ("lab_echo", "[1, 2]", "arguments must be a JSON object, got list"),
        ("lab_echo", {}, "invalid arguments for lab_echo: (arguments): 'text' is a required property"),
        ("lab_echo", {"text": 5}, "invalid arguments for lab_echo: text: 5 is not of type 'string'"),
        (
            "lab_echo",
            {"text": "x", "more": 1},
            "invalid arguments for lab_echo: (arguments): Additional properties",
        ),
        ("lab_crash", {"text": "x"}, "tool lab_crash failed: KeyError: 'the thing'"),
        ("lab_refuse", {"text": "x"}, "that date is in the past"),
        ("lab_result", {"text": "x"}, "custom failure"),
    ],
)
def test_failures_come_back_as_results(registry, name, arguments, error):
    result = registry.call(name, arguments, CTX)
    assert result.ok is False
    assert result.error.startswith(error), result.error
    if name != "lab_result":
        assert json.loads(result.content) == {"error": result.error}


def test_hanging_tool_does_not_hang_the_caller(registry):
    started = time.monotonic()
    result = registry.call("lab_hang", {"text": "x"}, CTX, timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert result.ok is False
    assert result.error == "tool lab_hang timed out after 0.3s and was abandoned"
    assert elapsed < 5
    # The manifest's own timeout caps the caller's.
    result = registry.call("lab_slowcap", {"text": "x"}, CTX, timeout_s=20)
    assert result.error == "tool lab_slowcap timed out after 0.2s and was abandoned"
    # The registry and the other tools carry on.
    assert registry.call("lab_echo", {"text": "still here"}, CTX).ok
    assert registry.call("core_time_now", {}, CTX).ok
    hung = [t for t in threading.enumerate() if t.name.startswith("tool-lab_")]
    assert hung and all(t.daemon for t in hung)


def test_get_tool_registry_loads_once_and_persists(monkeypatch):
    monkeypatch.setattr(tools_module, "_registry", None)
    first = get_tool_registry()
    assert get_tool_registry() is first
    rows = list(PluginStatus.select())
    assert sorted(r.plugin_id for r in rows) == ["core-memory", "core-schedule", "core-time"]
    cycle = first.report.load_cycle
    assert {r.load_cycle for r in rows} == {cycle}
    second = reload_tool_registry()
    assert second is not first and get_tool_registry() is second
    assert second.report.load_cycle == cycle + 1
    monkeypatch.setattr(tools_module, "_registry", None)
