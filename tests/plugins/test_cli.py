"""``zenthor plugins list [--json]`` and ``zenthor plugins doctor``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.plugins.helpers import manifest, write_config, write_plugin
from zenthor.cli import cli


def run(*args: str):
    result = CliRunner().invoke(cli, ["plugins", *args])
    return result


def test_list_json_after_a_fresh_cycle(tmp_path, settings_env):
    root = tmp_path / "plugins"
    write_plugin(root, "boom", manifest("boom"), "raise RuntimeError('broken on purpose')\n")
    cfg = write_config(tmp_path / "p.toml", '[plugins]\nenabled = ["boom"]\n')
    settings_env(PLUGINS_CONFIG=str(cfg), PLUGINS_PATH=str(root))
    result = run("list", "--json", "--fresh")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {row["id"]: row for row in data["plugins"]}
    assert {k: (r["status"], r["source"], r["version"]) for k, r in rows.items()} == {
        "core-memory": ("activated", "builtin", "1.0.0"),
        "core-schedule": ("activated", "builtin", "1.0.0"),
        "core-time": ("activated", "builtin", "1.0.0"),
        "boom": ("invalid", "path", "1.0.0"),
    }
    assert "RuntimeError: broken on purpose" in rows["boom"]["diagnostics"][1]["message"]
    assert len({r["load_cycle"] for r in rows.values()}) == 1

    # Without --fresh it shows the persisted cycle, as text.
    text = run("list")
    assert text.exit_code == 0
    assert "boom" in text.output and "invalid" in text.output
    assert "entrypoint: plugin:activate failed: RuntimeError: broken on purpose" in text.output


def test_doctor_fails_when_an_enabled_plugin_is_not_activated(tmp_path, settings_env):
    root = tmp_path / "plugins"
    write_plugin(root, "demo", manifest("demo"))
    good = write_config(tmp_path / "good.toml", '[plugins]\nenabled = ["demo"]\n')
    settings_env(PLUGINS_CONFIG=str(good), PLUGINS_PATH=str(root))
    result = run("doctor")
    assert result.exit_code == 0, result.output
    assert "4 plugin(s) activated" in result.output

    bad = write_config(tmp_path / "bad.toml", '[plugins]\nenabled = ["demo", "weather"]\n')
    settings_env(PLUGINS_CONFIG=str(bad))
    result = run("doctor")
    assert result.exit_code == 1
    assert "weather (config" in result.output
    assert "no plugin with this id was found" in result.output


def test_doctor_fails_on_a_broken_config_file(tmp_path, settings_env):
    cfg = write_config(tmp_path / "broken.toml", "[plugins]\nenabled = 3\n")
    settings_env(PLUGINS_CONFIG=str(cfg), PLUGINS_PATH="")
    result = run("doctor")
    assert result.exit_code == 1
    assert "error: broken.toml.plugins.enabled: 3 is not of type 'array'" in result.output
