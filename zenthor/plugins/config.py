"""``config/plugins.toml``: which plugins run, their config, and the allow/deny list of tools.

```toml
[plugins]
enabled = ["weather"]      # plugins found outside builtin/ run only when listed here
disabled = []              # never run (built-ins included)

[tools]
allow = []                 # when non-empty, only matching tools are offered (fnmatch patterns)
deny = ["core_schedule_*"] # never offered; deny wins over allow

[config.core-time]
default_timezone = "Europe/Berlin"
```

The file is checked against :data:`CONFIG_FILE_SCHEMA` (jsonschema). A file that is missing or
broken never stops the runtime: the built-ins still load, and the diagnostics say what is wrong.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from zenthor.plugins.manifest import Diagnostic, schema_diagnostics

_NAMES = {"type": "array", "items": {"type": "string", "description": "a string"}, "description": "a list"}
_PATTERNS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "description": "a tool name or fnmatch pattern"},
    "description": "a list of tool names or patterns",
}

CONFIG_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a TOML document",
    "additionalProperties": False,
    "properties": {
        "plugins": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"enabled": _NAMES, "disabled": _NAMES},
            "description": "a [plugins] table with enabled and disabled",
        },
        "tools": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"allow": _PATTERNS, "deny": _PATTERNS},
            "description": "a [tools] table with allow and deny",
        },
        "config": {
            "type": "object",
            "additionalProperties": {"type": "object", "description": "a [config.<plugin id>] table"},
            "description": "[config.<plugin id>] tables",
        },
    },
}
_VALIDATOR = Draft202012Validator(CONFIG_FILE_SCHEMA)


@dataclass(frozen=True)
class PluginsConfig:
    """The parsed ``plugins.toml`` (defaults when the file is missing or invalid)."""

    path: str
    enabled: frozenset[str] = frozenset()
    disabled: frozenset[str] = frozenset()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    plugin_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()

    def is_enabled(self, plugin_id: str, *, builtin: bool) -> bool:
        """Built-ins run unless disabled; any other plugin runs only when enabled."""
        if plugin_id in self.disabled:
            return False
        return builtin or plugin_id in self.enabled

    def tool_allowed(self, full_name: str) -> bool:
        """Whether the model may see and call ``full_name`` (deny wins over allow)."""
        if any(fnmatch.fnmatchcase(full_name, pattern) for pattern in self.deny):
            return False
        if self.allow:
            return any(fnmatch.fnmatchcase(full_name, pattern) for pattern in self.allow)
        return True

    def config_for(self, plugin_id: str) -> dict[str, Any]:
        """The ``[config.<id>]`` table (empty when absent)."""
        return dict(self.plugin_config.get(plugin_id, {}))


def load_plugins_config(path: str | Path) -> PluginsConfig:
    """Read and check ``path``; never raises (problems become diagnostics at path ``plugins.toml...``)."""
    path = Path(path)
    label = path.name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return PluginsConfig(
            str(path),
            diagnostics=(
                Diagnostic(
                    label,
                    f"file not found at {path}; only built-in plugins run",
                    "a plugins.toml (set PLUGINS_CONFIG)",
                    "warning",
                ),
            ),
        )
    except OSError as error:
        return PluginsConfig(str(path), diagnostics=(Diagnostic(label, f"cannot read the file: {error}"),))
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        return PluginsConfig(
            str(path),
            diagnostics=(Diagnostic(label, f"not valid TOML: {error}; only built-in plugins run", "TOML"),),
        )
    problems = schema_diagnostics(_VALIDATOR, data, prefix=label)
    if problems:
        # A half-understood file could enable the wrong thing: fall back to built-ins only.
        return PluginsConfig(str(path), diagnostics=tuple(problems))
    plugins = data.get("plugins", {})
    tools = data.get("tools", {})
    return PluginsConfig(
        path=str(path),
        enabled=frozenset(plugins.get("enabled", [])),
        disabled=frozenset(plugins.get("disabled", [])),
        allow=tuple(tools.get("allow", [])),
        deny=tuple(tools.get("deny", [])),
        plugin_config={key: dict(value) for key, value in data.get("config", {}).items()},
    )
