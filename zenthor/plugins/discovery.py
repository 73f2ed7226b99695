"""Finding plugins, in a fixed precedence: built-ins, entry points, then ``PLUGINS_PATH`` directories.

Discovery only reads manifests (data); it never runs a plugin's code. The order is deterministic:
built-ins by directory name; entry points of the group ``zenthor.plugins`` by (name, value,
distribution); each ``PLUGINS_PATH`` directory in the order given, its sub-directories by name.
The first plugin to claim an id wins, so this order decides every conflict, the same on every run.

A plugin directory holds ``zenthor-plugin.json`` next to its code. An entry point either names a
dict (``my_plugin.manifest:MANIFEST``, a data-only module) or a package whose distribution ships
``<package>/zenthor-plugin.json`` (``my_plugin``), which is read from the files without importing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import itertools
import json
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zenthor.plugins.manifest import MANIFEST_FILENAME, Diagnostic

ENTRY_POINT_GROUP = "zenthor.plugins"
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
SOURCES = ("builtin", "entrypoint", "path")
_namespace_counter = itertools.count(1)


@dataclass
class Candidate:
    """A plugin found by discovery: its manifest data, or why it could not be read."""

    source: str
    location: str
    manifest_data: Any = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # For directory plugins, the entrypoint module is resolved relative to this directory.
    base_dir: Path | None = None
    # The row key when the manifest has no usable id.
    fallback_id: str = ""


def discover(
    plugins_path: str, *, builtin_dir: Path = BUILTIN_DIR
) -> tuple[list[Candidate], list[Diagnostic]]:
    """Every candidate in precedence order, and discovery-level problems (a missing directory...)."""
    problems: list[Diagnostic] = []
    candidates = discover_directory_plugins(builtin_dir, "builtin", problems)
    candidates += discover_entry_points()
    for index, directory in enumerate(p for p in plugins_path.split(os.pathsep) if p.strip()):
        candidates += discover_directory_plugins(Path(directory), "path", problems, index=index)
    return candidates, problems


def discover_directory_plugins(
    directory: Path, source: str, problems: list[Diagnostic], *, index: int = 0
) -> list[Candidate]:
    """Plugins in ``directory``: itself if it holds a manifest, else each sub-directory that does."""
    if not directory.is_dir():
        problems.append(
            Diagnostic(
                f"PLUGINS_PATH[{index}]",
                f"{directory} is not a directory",
                "an existing directory of plugins",
                "warning",
            )
        )
        return []
    if (directory / MANIFEST_FILENAME).is_file():
        return [_read_manifest_file(directory, source)]
    return [
        _read_manifest_file(child, source)
        for child in sorted(directory.iterdir(), key=lambda p: p.name)
        if child.is_dir() and (child / MANIFEST_FILENAME).is_file()
    ]


def _read_manifest_file(directory: Path, source: str) -> Candidate:
    candidate = Candidate(
        source=source,
        location=str(directory),
        # Built-ins name absolute modules (zenthor.plugins.builtin...); others live in their directory.
        base_dir=directory if source == "path" else None,
        fallback_id=directory.name,
    )
    try:
        candidate.manifest_data = json.loads((directory / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        candidate.diagnostics.append(
            Diagnostic(MANIFEST_FILENAME, f"cannot read the manifest: {error}", "a JSON object")
        )
    return candidate


def discover_entry_points() -> list[Candidate]:
    """Candidates from installed packages (entry-point group ``zenthor.plugins``)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    unique = {(ep.name, ep.value, _dist_name(ep)): ep for ep in found}
    return [_read_entry_point(unique[key]) for key in sorted(unique)]


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']}=={dist.version}" if dist is not None else "?"


def _read_entry_point(ep: importlib.metadata.EntryPoint) -> Candidate:
    candidate = Candidate(
        source="entrypoint",
        location=f"{_dist_name(ep)} ({ep.name} = {ep.value})",
        fallback_id=f"entrypoint:{ep.name}",
    )
    try:
        if ep.attr:
            candidate.manifest_data = ep.load()
        else:
            candidate.manifest_data = _manifest_from_distribution(ep)
    except Exception as error:  # noqa: BLE001 - a broken package must not stop discovery
        candidate.diagnostics.append(
            Diagnostic("entry_point", f"cannot read the manifest: {type(error).__name__}: {error}")
        )
        return candidate
    if not isinstance(candidate.manifest_data, dict):
        candidate.diagnostics.append(
            Diagnostic(
                "entry_point",
                f"{ep.value} is a {type(candidate.manifest_data).__name__}, not a manifest",
                "a dict manifest object, or a package shipping zenthor-plugin.json",
            )
        )
    return candidate


def _manifest_from_distribution(ep: importlib.metadata.EntryPoint) -> Any:
    """``<module path>/zenthor-plugin.json`` from the distribution's files, read without importing."""
    dist = ep.dist
    if dist is None:
        raise LookupError("the entry point has no distribution")
    wanted = "/".join(ep.module.split(".")) + "/" + MANIFEST_FILENAME
    for file in dist.files or ():
        if file.as_posix() == wanted:
            return json.loads(file.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{wanted} is not among the files of {_dist_name(ep)}")


def import_entrypoint(spec: str, base_dir: Path | None, plugin_id: str) -> Callable[..., Any]:
    """Import ``module:function``; for a directory plugin, ``module`` lives in ``base_dir``.

    Directory plugins are imported under a fresh private package each time, so two plugins may
    both have a ``plugin.py`` and a reload picks up changed code.
    """
    module_name, _, attr = spec.partition(":")
    if base_dir is not None:
        namespace = f"zenthor_ext_{plugin_id.replace('-', '_')}_{next(_namespace_counter)}"
        package = types.ModuleType(namespace)
        package.__path__ = [str(base_dir)]
        package.__package__ = namespace
        sys.modules[namespace] = package
        module_name = f"{namespace}.{module_name}"
    module = importlib.import_module(module_name)
    target = getattr(module, attr, None)
    if not callable(target):
        raise AttributeError(f"{spec} is not a function")
    return target
