"""Activation: discovery precedence, conflicts, broken plugins, config validation, persisted diagnostics."""

from __future__ import annotations

import os

import pytest

from tests.plugins.helpers import SIMPLE_TOOL, manifest, write_config, write_plugin
from zenthor.models.plugin_status import PluginStatus
from zenthor.plugins.registry import load_plugins

BUILTIN_IDS = ["core-memory", "core-schedule", "core-time"]


@pytest.fixture
def plugin_root(tmp_path):
    root = tmp_path / "plugins"
    root.mkdir()
    return root


def config(tmp_path, text: str):
    return write_config(tmp_path / "plugins.toml", text)


def load(tmp_path, cfg_text: str, *dirs, persist: bool = True):
    return load_plugins(
        config_path=config(tmp_path, cfg_text),
        plugins_path=os.pathsep.join(str(d) for d in dirs),
        persist=persist,
    )


def statuses(report) -> dict[str, str]:
    return {r.plugin_id: r.status for r in report.records}


def test_builtins_activate_with_the_example_config():
    report = load_plugins(persist=False)
    assert [r.plugin_id for r in report.records] == BUILTIN_IDS
    assert all(r.status == "activated" for r in report.records)
    assert report.problems == []
    assert "core_time_now" in report.tools


def test_path_plugin_is_disabled_until_enabled(tmp_path, plugin_root):
    write_plugin(plugin_root, "demo", manifest("demo"))
    report = load(tmp_path, "", plugin_root)
    record = report.record("demo")
    assert record.status == "disabled" and not record.enabled
    assert "demo_echo" not in report.tools

    report = load(tmp_path, '[plugins]\nenabled = ["demo"]\n', plugin_root)
    assert report.record("demo").status == "activated"
    assert report.record("demo").source == "path"
    assert report.tools["demo_echo"].plugin_id == "demo"


def test_builtin_can_be_disabled(tmp_path):
    report = load(tmp_path, '[plugins]\ndisabled = ["core-memory"]\n')
    assert statuses(report)["core-memory"] == "disabled"
    assert not any(name.startswith("core_memory_") for name in report.tools)
    assert report.not_activated() == []


def test_id_conflict_first_in_precedence_wins_every_run(tmp_path, plugin_root):
    second_root = tmp_path / "more"
    second_root.mkdir()
    write_plugin(plugin_root, "b-dir", manifest("dup", version="1.0.0"))
    write_plugin(second_root, "a-dir", manifest("dup", version="2.0.0"))
    # A third-party plugin claiming a built-in's id loses to the built-in.
    write_plugin(plugin_root, "c-dir", manifest("core-time"))
    cfg = '[plugins]\nenabled = ["dup", "core-time"]\n'
    outcomes = []
    for _ in range(3):
        report = load(tmp_path, cfg, plugin_root, second_root)
        outcomes.append(
            [(r.plugin_id, r.status, r.version, [str(d) for d in r.diagnostics]) for r in report.records]
        )
        assert report.record("dup").status == "activated"
        assert report.record("dup").version == "1.0.0"  # the earlier PLUGINS_PATH entry wins
        loser = next(r for r in report.records if r.status == "conflict" and r.version == "2.0.0")
        assert loser.plugin_id == f"dup@path:{second_root / 'a-dir'}"
        assert loser.diagnostics[0].path == "id"
        assert f"already taken by the path plugin at {plugin_root / 'b-dir'}" in loser.diagnostics[0].message
        builtin_loser = next(r for r in report.records if r.plugin_id.startswith("core-time@"))
        assert builtin_loser.status == "conflict"
        assert "builtin plugin" in builtin_loser.diagnostics[0].message
        assert report.record("core-time").source == "builtin"
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_tool_name_conflict_names_the_winner(tmp_path, plugin_root):
    # "a-b" + "c_d" and "a" + "b_c_d" both become the model-visible name "a_b_c_d".
    write_plugin(
        plugin_root,
        "one",
        manifest("a-b", tools=[{**SIMPLE_TOOL, "name": "c_d"}]),
        "def activate(c):\n    return {'c_d': lambda a, ctx: 'one'}\n",
    )
    write_plugin(
        plugin_root,
        "two",
        manifest("a", tools=[{**SIMPLE_TOOL, "name": "b_c_d"}]),
        "def activate(c):\n    return {'b_c_d': lambda a, ctx: 'two'}\n",
    )
    for _ in range(2):
        report = load(tmp_path, '[plugins]\nenabled = ["a", "a-b"]\n', plugin_root)
        assert statuses(report)["a-b"] == "activated"
        loser = report.record("a")
        assert loser.status == "conflict"
        assert loser.diagnostics[0].path == "tools[0].name"
        assert loser.diagnostics[0].message == "tool name 'a_b_c_d' is already taken by plugin 'a-b'"
        assert report.tools["a_b_c_d"].plugin_id == "a-b"


def test_plugin_whose_import_raises_is_invalid_and_others_carry_on(tmp_path, plugin_root):
    write_plugin(plugin_root, "boom", manifest("boom"), "raise RuntimeError('kaboom at import')\n")
    write_plugin(plugin_root, "demo", manifest("demo"))
    report = load(tmp_path, '[plugins]\nenabled = ["boom", "demo"]\n', plugin_root)
    boom = report.record("boom")
    assert boom.status == "invalid"
    assert boom.diagnostics[0].path == "entrypoint"
    assert "RuntimeError: kaboom at import" in boom.diagnostics[0].message
    assert "plugin.py:1" in boom.diagnostics[0].message
    assert statuses(report) | {"boom": "invalid"} == statuses(report)
    assert report.record("demo").status == "activated"
    assert all(statuses(report)[b] == "activated" for b in BUILTIN_IDS)
    assert [r.plugin_id for r in report.not_activated()] == ["boom"]


def test_plugin_whose_activate_raises_or_misses_a_handler(tmp_path, plugin_root):
    write_plugin(
        plugin_root, "fails", manifest("fails"), "def activate(config):\n    raise ValueError('no API key')\n"
    )
    write_plugin(plugin_root, "partial", manifest("partial"), "def activate(config):\n    return {}\n")
    write_plugin(plugin_root, "nodict", manifest("nodict"), "def activate(config):\n    return None\n")
    write_plugin(plugin_root, "noattr", manifest("noattr", entrypoint="plugin:start"))
    report = load(tmp_path, '[plugins]\nenabled = ["fails", "partial", "nodict", "noattr"]\n', plugin_root)
    assert "ValueError: no API key" in report.record("fails").diagnostics[0].message
    partial = report.record("partial").diagnostics[0]
    assert (partial.path, partial.message) == (
        "tools[0].name",
        "activate() returned no handler for tool 'echo'",
    )
    assert "expected a dict of tool handlers" in report.record("nodict").diagnostics[0].message
    assert "plugin:start is not a function" in report.record("noattr").diagnostics[0].message
    assert {r.plugin_id: r.status for r in report.not_activated()} == {
        "fails": "invalid",
        "partial": "invalid",
        "nodict": "invalid",
        "noattr": "invalid",
    }


def test_config_failing_its_schema_makes_the_plugin_invalid(tmp_path, plugin_root):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["api_key"],
        "properties": {"api_key": {"type": "string"}, "retries": {"type": "integer", "default": 3}},
    }
    code = "def activate(config):\n    assert config['retries'] == 3\n    return {'echo': lambda a, c: config['api_key']}\n"
    write_plugin(plugin_root, "cfg", manifest("cfg", config_schema=schema), code)
    report = load(
        tmp_path, '[plugins]\nenabled = ["cfg"]\n[config.cfg]\napi_key = 5\ncolour = "red"\n', plugin_root
    )
    record = report.record("cfg")
    assert record.status == "invalid"
    assert [(d.path, d.message) for d in record.diagnostics] == [
        ("config.api_key", "5 is not of type 'string'"),
        ("config.colour", "unknown property"),
    ]
    report = load(tmp_path, '[plugins]\nenabled = ["cfg"]\n[config.cfg]\n', plugin_root)
    assert report.record("cfg").diagnostics[0].path == "config.api_key"
    assert report.record("cfg").diagnostics[0].message == "required property is missing"
    # Fixed config: the default is filled and the plugin activates.
    report = load(tmp_path, '[plugins]\nenabled = ["cfg"]\n[config.cfg]\napi_key = "k"\n', plugin_root)
    assert report.record("cfg").status == "activated"


def test_builtin_with_bad_config_is_invalid_and_other_builtins_carry_on(tmp_path):
    report = load(tmp_path, '[config.core-time]\ndefault_timezone = "Mars/Olympus"\n')
    record = report.record("core-time")
    assert record.status == "invalid"
    assert "unknown timezone 'Mars/Olympus'" in record.diagnostics[0].message
    assert statuses(report)["core-memory"] == statuses(report)["core-schedule"] == "activated"


def test_invalid_manifest_and_unreadable_json(tmp_path, plugin_root):
    write_plugin(plugin_root, "badver", manifest("badver", version="1"))
    write_plugin(plugin_root, "garbage", "{not json")
    report = load(tmp_path, '[plugins]\nenabled = ["badver"]\n', plugin_root)
    assert report.record("badver").status == "invalid"
    assert report.record("badver").diagnostics[0].path == "version"
    assert report.record("badver").version == "1"
    garbage = report.record("garbage")  # no id: the row is keyed by the directory name
    assert garbage.status == "invalid"
    assert garbage.diagnostics[0].path == "zenthor-plugin.json"
    assert "cannot read the manifest" in garbage.diagnostics[0].message


def test_enabled_but_missing_plugin_is_reported(tmp_path):
    report = load(tmp_path, '[plugins]\nenabled = ["weather"]\n')
    record = report.record("weather")
    assert (record.status, record.source, record.enabled) == ("invalid", "config", True)
    assert "no plugin with this id was found" in record.diagnostics[0].message


def test_broken_config_file_keeps_builtins_running(tmp_path, plugin_root):
    write_plugin(plugin_root, "demo", manifest("demo"))
    report = load(tmp_path, '[plugins]\nenabled = "demo"\n[tools]\nallowed = []\n', plugin_root)
    assert [(p.path, p.message) for p in report.problems] == [
        ("plugins.toml.plugins.enabled", "'demo' is not of type 'array'"),
        ("plugins.toml.tools.allowed", "unknown property"),
    ]
    assert statuses(report)["demo"] == "disabled"
    assert all(statuses(report)[b] == "activated" for b in BUILTIN_IDS)

    report = load(tmp_path, "[plugins\n", plugin_root)
    assert report.problems[0].path == "plugins.toml" and "not valid TOML" in report.problems[0].message
    assert all(statuses(report)[b] == "activated" for b in BUILTIN_IDS)


def test_missing_config_file_and_missing_directory_are_warnings(tmp_path):
    report = load_plugins(
        config_path=tmp_path / "nope.toml", plugins_path=str(tmp_path / "no-such-dir"), persist=False
    )
    assert [(p.path, p.severity) for p in report.problems] == [
        ("nope.toml", "warning"),
        ("PLUGINS_PATH[0]", "warning"),
    ]
    assert all(statuses(report)[b] == "activated" for b in BUILTIN_IDS)


def test_allow_and_deny_lists(tmp_path):
    report = load(tmp_path, '[tools]\ndeny = ["core_schedule_*"]\n', persist=False)
    assert report.tools["core_schedule_remind"].allowed is False
    assert report.tools["core_time_now"].allowed is True
    report = load(
        tmp_path,
        '[tools]\nallow = ["core_time_*", "core_memory_recall"]\ndeny = ["core_time_diff"]\n',
        persist=False,
    )
    assert sorted(n for n, t in report.tools.items() if t.allowed) == [
        "core_memory_recall",
        "core_time_add",
        "core_time_now",
    ]


def test_each_load_cycle_replaces_the_previous_rows(tmp_path, plugin_root):
    write_plugin(plugin_root, "demo", manifest("demo"))
    write_plugin(plugin_root, "boom", manifest("boom"), "raise ImportError('missing dependency foo')\n")
    first = load(tmp_path, '[plugins]\nenabled = ["demo", "boom"]\n', plugin_root)
    rows = {r.plugin_id: r for r in PluginStatus.select()}
    assert {k: r.status for k, r in rows.items()} == {
        "core-memory": "activated",
        "core-schedule": "activated",
        "core-time": "activated",
        "boom": "invalid",
        "demo": "activated",
    }
    assert {r.load_cycle for r in rows.values()} == {first.load_cycle}
    assert rows["boom"].source == "path" and rows["boom"].version == "1.0.0"
    assert rows["boom"].diagnostics[0]["message"].startswith("found at ")
    assert rows["boom"].diagnostics[1]["path"] == "entrypoint"
    assert "ImportError: missing dependency foo" in rows["boom"].diagnostics[1]["message"]

    # Next cycle: boom removed, demo disabled; the old rows are gone, the cycle number moved on.
    (plugin_root / "boom" / "zenthor-plugin.json").unlink()
    second = load(tmp_path, "", plugin_root)
    assert second.load_cycle == first.load_cycle + 1
    rows = {r.plugin_id: (r.status, r.load_cycle) for r in PluginStatus.select()}
    assert rows == {
        "core-memory": ("activated", second.load_cycle),
        "core-schedule": ("activated", second.load_cycle),
        "core-time": ("activated", second.load_cycle),
        "demo": ("disabled", second.load_cycle),
    }


def test_plugin_that_hangs_while_starting_is_invalid(tmp_path, plugin_root, monkeypatch):
    from zenthor.plugins import registry as registry_module

    monkeypatch.setattr(registry_module, "ACTIVATION_TIMEOUT_S", 0.5)
    write_plugin(
        plugin_root,
        "sleepy",
        manifest("sleepy"),
        "import threading\n\ndef activate(config):\n    threading.Event().wait(30)\n",
    )
    write_plugin(plugin_root, "demo", manifest("demo"))
    report = load(tmp_path, '[plugins]\nenabled = ["sleepy", "demo"]\n', plugin_root)
    sleepy = report.record("sleepy")
    assert sleepy.status == "invalid"
    assert "TimeoutError: activation did not finish within 0.5s; abandoned" in sleepy.diagnostics[0].message
    assert report.record("demo").status == "activated"
