"""The activation registry: one load cycle turns discovered candidates into activated tools.

For each candidate, in discovery's fixed order (built-ins first, so they always win):

1. a manifest that fails validation, or cannot be read -> ``invalid`` with every diagnostic;
2. an id already taken by an earlier plugin -> ``conflict``, naming the winner;
3. not enabled in ``plugins.toml`` -> ``disabled``;
4. its ``[config.<id>]`` must satisfy its ``config_schema`` (top-level defaults filled) -> else ``invalid``;
5. a tool name the model would see twice -> ``conflict``, naming the plugin that has it;
6. import ``entrypoint`` and call ``activate(config)``, which returns ``{tool name: handler}``;
   an import error or an exception -> ``invalid`` with the reason;
7. ``activated``: its tools join the registry.

Nothing a plugin does escapes a load cycle: the rest of the runtime carries on. The outcome is
persisted in ``plugin_status`` (see :mod:`zenthor.plugins.diagnostics`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.plugins.config import PluginsConfig, load_plugins_config
from zenthor.plugins.diagnostics import PluginRecord, persist_load_cycle
from zenthor.plugins.discovery import BUILTIN_DIR, Candidate, discover, import_entrypoint
from zenthor.plugins.manifest import Diagnostic, Manifest, ToolSpec, schema_diagnostics, validate_manifest

_logger = logging.getLogger(__name__)

ToolHandler = Callable[
    ..., Any
]  # handler(arguments: dict, context: ToolContext) -> str | JSON value | ToolResult


@dataclass(frozen=True)
class RegisteredTool:
    """An activated tool: the name the model sees, its spec, its handler, and whether it is allowed."""

    full_name: str
    plugin_id: str
    spec: ToolSpec
    handler: ToolHandler
    allowed: bool
    validator: Any = field(compare=False, repr=False, default=None)
    plugin_name: str = ""  # the manifest's display name (Reminders), for what a person reads


@dataclass
class LoadReport:
    """What one load cycle found: a record per plugin, the activated tools, file-level problems."""

    records: list[PluginRecord]
    tools: dict[str, RegisteredTool]
    problems: list[Diagnostic]
    config: PluginsConfig
    load_cycle: int | None = None

    def record(self, plugin_id: str) -> PluginRecord | None:
        """The record of ``plugin_id`` (the winner's, when several claimed the id)."""
        return next((r for r in self.records if r.plugin_id == plugin_id), None)

    def not_activated(self) -> list[PluginRecord]:
        """Enabled plugins that did not activate: what ``zenthor plugins doctor`` complains about."""
        return [r for r in self.records if r.enabled and r.status != "activated"]


def load_plugins(
    *,
    config_path: str | Path | None = None,
    plugins_path: str | None = None,
    persist: bool = True,
    builtin_dir: Path = BUILTIN_DIR,
) -> LoadReport:
    """Run one load cycle (settings give the paths unless passed); persist it unless ``persist=False``."""
    from zenthor.settings import get_settings

    started = time.monotonic()
    settings = get_settings()
    config = load_plugins_config(config_path if config_path is not None else settings.PLUGINS_CONFIG)
    candidates, discovery_problems = discover(
        plugins_path if plugins_path is not None else settings.PLUGINS_PATH, builtin_dir=builtin_dir
    )
    report = LoadReport(
        records=[], tools={}, problems=[*config.diagnostics, *discovery_problems], config=config
    )
    for problem in report.problems:
        emit(ev.PLUGINS_CONFIG_PROBLEM, path=problem.path, detail=problem.message, severity=problem.severity)
    _Activation(report).run(candidates)
    if persist:
        report.load_cycle = _persist(report.records)
    counts = {status: sum(1 for r in report.records if r.status == status) for status in _STATUSES}
    emit(
        ev.PLUGINS_LOADED,
        load_cycle=report.load_cycle,
        tools=len(report.tools),
        duration_ms=int((time.monotonic() - started) * 1000),
        **counts,
    )
    for record in report.not_activated():
        emit(
            ev.PLUGIN_NOT_ACTIVATED,
            plugin_id=record.plugin_id,
            source=record.source,
            status=record.status,
            reason=str(record.diagnostics[0]) if record.diagnostics else "",
        )
    return report


_STATUSES = ("activated", "conflict", "invalid", "disabled")
# How long importing a plugin and calling its activate() may take before it is marked invalid.
ACTIVATION_TIMEOUT_S = 15.0


def _persist(records: list[PluginRecord]) -> int | None:
    from zenthor.db import database

    if database.obj is None:
        return None
    try:
        return persist_load_cycle(records)
    except Exception as error:  # noqa: BLE001 - tools still work when the status table cannot be written
        emit(ev.PLUGINS_PERSIST_FAILED, error=f"{type(error).__name__}: {error}"[:300])
        return None


class _Activation:
    """The steps of one load cycle over the candidates, in order."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        self.config = report.config
        self.id_owner: dict[str, Candidate] = {}
        self.tool_owner: dict[str, str] = {}
        self.row_keys: set[str] = set()

    def run(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            self.report.records.append(self.activate(candidate))
        found = {r.plugin_id for r in self.report.records}
        for missing in sorted(self.config.enabled - found):
            self.report.records.append(
                PluginRecord(
                    plugin_id=self._key(missing),
                    source="config",
                    location=self.config.path,
                    version=None,
                    status="invalid",
                    enabled=True,
                    diagnostics=[
                        Diagnostic(
                            "plugins.enabled",
                            f"{missing!r} is enabled in plugins.toml but no plugin with this id was found",
                            "a built-in, an installed package or a PLUGINS_PATH directory providing it",
                        )
                    ],
                )
            )

    def _key(self, wanted: str) -> str:
        """A unique ``plugin_status.plugin_id`` (the loser of an id conflict gets a qualified one)."""
        key, n = wanted, 2
        while key in self.row_keys:
            key, n = f"{wanted}#{n}", n + 1
        self.row_keys.add(key)
        return key

    def activate(self, candidate: Candidate) -> PluginRecord:
        data = candidate.manifest_data if isinstance(candidate.manifest_data, dict) else {}
        raw_id = data.get("id") if isinstance(data.get("id"), str) else None
        raw_version = data.get("version") if isinstance(data.get("version"), str) else None
        builtin = candidate.source == "builtin"

        def record(
            status: str, diagnostics: list[Diagnostic], manifest: Manifest | None = None
        ) -> PluginRecord:
            plugin_id = manifest.id if manifest else (raw_id or candidate.fallback_id)
            if status == "conflict" and manifest and manifest.id in self.row_keys:
                plugin_id = f"{manifest.id}@{candidate.source}:{candidate.location}"
            return PluginRecord(
                plugin_id=self._key(plugin_id),
                source=candidate.source,
                location=candidate.location,
                version=manifest.version if manifest else raw_version,
                status=status,
                enabled=raw_id is not None and self.config.is_enabled(raw_id, builtin=builtin),
                diagnostics=diagnostics,
            )

        if candidate.diagnostics:
            return record("invalid", list(candidate.diagnostics))
        manifest, problems = validate_manifest(candidate.manifest_data)
        if manifest is None:
            return record("invalid", problems)
        owner = self.id_owner.get(manifest.id)
        if owner is not None:
            return record(
                "conflict",
                [
                    Diagnostic(
                        "id",
                        f"id {manifest.id!r} is already taken by the {owner.source} plugin at {owner.location}",
                        "a unique plugin id",
                    )
                ],
                manifest,
            )
        self.id_owner[manifest.id] = candidate
        if not self.config.is_enabled(manifest.id, builtin=builtin):
            reason = "disabled in plugins.toml" if manifest.id in self.config.disabled else "not enabled"
            return record(
                "disabled",
                [Diagnostic("plugins.enabled", f"{reason}", "the id listed in [plugins] enabled", "info")],
                manifest,
            )
        config, problems = validate_plugin_config(manifest, self.config.config_for(manifest.id))
        if problems:
            return record("invalid", problems, manifest)
        clashes = [
            Diagnostic(
                f"tools[{index}].name",
                f"tool name {manifest.tool_full_name(tool.name)!r} is already taken by plugin "
                f"{self.tool_owner[manifest.tool_full_name(tool.name)]!r}",
                "tool names unique across plugins",
            )
            for index, tool in enumerate(manifest.tools)
            if manifest.tool_full_name(tool.name) in self.tool_owner
        ]
        if clashes:
            return record("conflict", clashes, manifest)
        try:
            handlers = self._start(candidate, manifest, config)
        except Exception as error:  # noqa: BLE001 - a broken plugin must never take the runtime down
            where = _plugin_frame(error)
            return record(
                "invalid",
                [
                    Diagnostic(
                        "entrypoint",
                        f"{manifest.entrypoint} failed: {type(error).__name__}: {error}{where}",
                        "importing the plugin and calling activate(config) to succeed",
                    )
                ],
                manifest,
            )
        missing = [tool.name for tool in manifest.tools if not callable(handlers.get(tool.name))]
        if missing:
            return record(
                "invalid",
                [
                    Diagnostic(
                        f"tools[{[t.name for t in manifest.tools].index(name)}].name",
                        f"activate() returned no handler for tool {name!r}",
                        "a callable for every tool of the manifest",
                    )
                    for name in missing
                ],
                manifest,
            )
        for tool in manifest.tools:
            full_name = manifest.tool_full_name(tool.name)
            self.tool_owner[full_name] = manifest.id
            self.report.tools[full_name] = RegisteredTool(
                full_name=full_name,
                plugin_id=manifest.id,
                spec=tool,
                handler=handlers[tool.name],
                allowed=self.config.tool_allowed(full_name),
                validator=Draft202012Validator(
                    tool.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                ),
                plugin_name=manifest.name,
            )
        return record("activated", [], manifest)

    @staticmethod
    def _start(candidate: Candidate, manifest: Manifest, config: dict[str, Any]) -> Mapping[str, ToolHandler]:
        """Import and activate in a daemon thread, so a plugin that hangs while starting is given up on."""
        outcome: dict[str, Any] = {}

        def start() -> None:
            try:
                activate = import_entrypoint(manifest.entrypoint, candidate.base_dir, manifest.id)
                outcome["handlers"] = activate(config)
            except BaseException as error:  # noqa: BLE001 - re-raised in the loading thread
                outcome["error"] = error

        thread = threading.Thread(target=start, name=f"plugin-start-{manifest.id}", daemon=True)
        thread.start()
        thread.join(ACTIVATION_TIMEOUT_S)
        if thread.is_alive():
            raise TimeoutError(f"activation did not finish within {ACTIVATION_TIMEOUT_S:g}s; abandoned")
        if "error" in outcome:
            raise outcome["error"]
        handlers = outcome["handlers"]
        if not isinstance(handlers, Mapping):
            raise TypeError(
                f"activate() returned {type(handlers).__name__}, expected a dict of tool handlers"
            )
        return handlers


def validate_plugin_config(
    manifest: Manifest, config: dict[str, Any]
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """Fill the schema's top-level defaults into ``config`` and validate it (paths start ``config``)."""
    filled = dict(config)
    for name, spec in (manifest.config_schema.get("properties") or {}).items():
        if isinstance(spec, dict) and "default" in spec and name not in filled:
            filled[name] = spec["default"]
    validator = Draft202012Validator(
        manifest.config_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return filled, schema_diagnostics(validator, filled, prefix="config")


def _plugin_frame(error: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame, so the operator sees where the plugin broke."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno})"
