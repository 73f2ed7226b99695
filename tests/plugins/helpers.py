"""Writing throw-away plugins and plugins.toml files for the plugin tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

SIMPLE_TOOL = {
    "name": "echo",
    "description": "Echo the text back.",
    "input_schema": {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    },
}

ECHO_CODE = """
def activate(config):
    def echo(arguments, context):
        return {"echo": arguments["text"], "prefix": config.get("prefix", "")}
    return {"echo": echo}
"""


def manifest(plugin_id: str = "demo", **overrides: Any) -> dict[str, Any]:
    """A valid manifest whose only tool is ``echo``."""
    data: dict[str, Any] = {
        "id": plugin_id,
        "name": str(plugin_id).title(),
        "version": "1.0.0",
        "entrypoint": "plugin:activate",
        "tools": [dict(SIMPLE_TOOL)],
    }
    data.update(overrides)
    return data


def write_plugin(root: Path, dirname: str, data: dict[str, Any] | str, code: str = ECHO_CODE) -> Path:
    """``root/dirname/zenthor-plugin.json`` and ``plugin.py``; returns the plugin directory."""
    directory = root / dirname
    directory.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (directory / "zenthor-plugin.json").write_text(text)
    (directory / "plugin.py").write_text(textwrap.dedent(code))
    return directory


def write_config(path: Path, text: str) -> Path:
    """A plugins.toml with ``text``."""
    path.write_text(textwrap.dedent(text))
    return path
