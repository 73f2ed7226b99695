"""The plugin manifest contract: its JSON Schema, validation with exact diagnostics, normalization.

A plugin ships its manifest as data (``zenthor-plugin.json``, or a dict exposed by an entry point),
so the runtime reads and checks it without running the plugin's code. Validation is jsonschema's
(Draft 2020-12), plus the checks a schema cannot express (a ``config_schema`` that is itself a
schema, duplicate tool names, the length of the name the model sees, summary templates whose
placeholders must name the tool's arguments). Each problem is a
:class:`Diagnostic` with its path in the manifest (``tools[1].name``) and what was expected.

Normalization is deterministic: defaults filled, capabilities sorted, tools sorted by name, each
tool carrying its own risk and approval flag, a plain-string ``summary`` becoming ``{"en": s}``;
normalizing a normalized manifest changes nothing.

A tool's optional ``title`` and ``summary`` are for people, not the model: the approval question
(:func:`zenthor.agent.approval_question.approval_question`) renders the summary with the call's arguments.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

MANIFEST_FILENAME = "zenthor-plugin.json"
RISKS = ("low", "medium", "high")
CAPABILITIES = ("clock", "filesystem", "messaging", "network", "storage", "subprocess")
# OpenAI's rule for function names; the model sees "<plugin id with _>_<tool name>".
OPENAI_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# semver.org's own regular expression.
SEMVER = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

SUMMARY_MAX_CHARS = 200
# The one format spec a summary placeholder may carry: an ISO 8601 value a person can read.
SUMMARY_FORMAT_SPECS = ("datetime",)
DEFAULT_LANGUAGE = "en"

_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a tool: an object with name, description and input_schema",
    "required": ["name", "description", "input_schema"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[a-z][a-z0-9_]*$",
            "maxLength": 48,
            "description": "lower-case letters, digits and underscores, starting with a letter (e.g. now)",
        },
        "description": {
            "type": "string",
            "minLength": 1,
            "description": "a non-empty sentence telling the model what the tool does",
        },
        "input_schema": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": "object", "description": 'the string "object"'}},
            "description": 'a JSON Schema object describing the arguments, with "type": "object"',
        },
        "risk": {"enum": list(RISKS), "description": "one of low, medium, high"},
        "requires_approval": {"type": "boolean", "description": "true or false"},
        "timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 600,
            "description": "seconds, more than 0 and at most 600",
        },
        "title": {
            "type": "string",
            "minLength": 1,
            "maxLength": 80,
            "description": "a short name a person reads (1 to 80 characters, e.g. Set a reminder)",
        },
        "summary": {
            # String keywords apply to a string, object keywords to an object: one schema says both.
            "type": ["string", "object"],
            "minLength": 1,
            "maxLength": SUMMARY_MAX_CHARS,
            "minProperties": 1,
            "propertyNames": {
                "pattern": r"^[a-z]{2}$",
                "description": "a two-letter language code (e.g. en, pt)",
            },
            "additionalProperties": {
                "type": "string",
                "minLength": 1,
                "maxLength": SUMMARY_MAX_CHARS,
                "description": f"a template of 1 to {SUMMARY_MAX_CHARS} characters",
            },
            "description": (
                f"a template of 1 to {SUMMARY_MAX_CHARS} characters a person reads when asked to approve "
                'a call (e.g. Set a reminder "{text}" for {when:datetime}), or an object from a '
                "two-letter language code to such a template"
            ),
        },
    },
}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "description": "a manifest object",
    "required": ["id", "name", "version", "entrypoint", "tools"],
    "additionalProperties": False,
    "properties": {
        "id": {
            "type": "string",
            "pattern": r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$",
            "maxLength": 48,
            "description": "lower-case letters, digits and single hyphens, starting with a letter (e.g. core-time)",
        },
        "name": {"type": "string", "minLength": 1, "description": "a non-empty display name"},
        "version": {"type": "string", "pattern": SEMVER, "description": "a semantic version (e.g. 1.2.0)"},
        "description": {"type": "string", "description": "a string"},
        "entrypoint": {
            "type": "string",
            "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
            "description": "module:function, the function that activates the plugin (e.g. my_plugin.tools:activate)",
        },
        "config_schema": {"type": "object", "description": "a JSON Schema object for the plugin's config"},
        "risk": {"enum": list(RISKS), "description": "one of low, medium, high"},
        "requires_approval": {"type": "boolean", "description": "true or false"},
        "capabilities": {
            "type": "array",
            "items": {"enum": list(CAPABILITIES), "description": "one of " + ", ".join(CAPABILITIES)},
            "description": "a list of capabilities",
        },
        "tools": {"type": "array", "items": _TOOL_SCHEMA, "description": "a list of tools"},
    },
}

_VALIDATOR = Draft202012Validator(MANIFEST_SCHEMA)


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where (a path in the manifest, config or file), what is wrong, what was expected."""

    path: str
    message: str
    expected: str | None = None
    severity: str = "error"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form persisted in ``plugin_status.diagnostics``."""
        out: dict[str, Any] = {"path": self.path, "message": self.message, "severity": self.severity}
        if self.expected is not None:
            out["expected"] = self.expected
        return out

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text} (expected {self.expected})" if self.expected else text


@dataclass(frozen=True)
class ToolSpec:
    """One tool of a manifest, normalized (its own risk and approval flag filled)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    risk: str
    requires_approval: bool
    timeout_s: float | None = None
    # What a person reads when asked to approve a call: a short name, and templates by language
    # (``{"en": "Set a reminder \"{text}\" for {when:datetime}"}``; empty when the manifest has none).
    title: str | None = None
    summary: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A validated, normalized manifest."""

    id: str
    name: str
    version: str
    description: str
    entrypoint: str
    config_schema: dict[str, Any]
    risk: str
    requires_approval: bool
    capabilities: tuple[str, ...]
    tools: tuple[ToolSpec, ...]
    data: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def tool_full_name(self, tool: str) -> str:
        """The name the model sees: ``core-time`` + ``now`` -> ``core_time_now``."""
        return full_tool_name(self.id, tool)


def full_tool_name(plugin_id: str, tool: str) -> str:
    """``<plugin id, hyphens as underscores>_<tool name>``."""
    return f"{plugin_id.replace('-', '_')}_{tool}"


def format_path(parts: Iterable[Any]) -> str:
    """``["tools", 1, "name"]`` -> ``tools[1].name``; the root is ``$``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "$"


def join_path(prefix: str, suffix: str) -> str:
    """Join two formatted paths (``config`` + ``a.b`` -> ``config.a.b``)."""
    if suffix == "$":
        return prefix
    if prefix == "$":
        return suffix
    return prefix + suffix if suffix.startswith("[") else f"{prefix}.{suffix}"


def _expected(error: ValidationError) -> str | None:
    schema = error.schema if isinstance(error.schema, dict) else {}
    return schema.get("description")


def schema_diagnostics(validator: Any, instance: Any, prefix: str = "$") -> list[Diagnostic]:
    """Every error of ``validator`` on ``instance``, as diagnostics sorted by path then message.

    A missing required property is reported at the property's own path; an unexpected one too.
    """
    diagnostics = []
    for error in validator.iter_errors(instance):
        path = list(error.absolute_path)
        expected = _expected(error)
        message = error.message
        if error.validator == "required":
            missing = re.match(r"'(.+)' is a required property", error.message)
            if missing:
                name = missing.group(1)
                path.append(name)
                sub = (error.schema.get("properties") or {}).get(name, {})
                expected = sub.get("description", expected)
                message = "required property is missing"
        elif error.validator == "pattern":
            # jsonschema would quote the whole regular expression; the description says it better.
            message = f"{error.instance!r} is not in the expected format"
        elif error.validator == "additionalProperties":
            extras = re.findall(r"'([^']+)'", error.message.split("(")[-1])
            allowed = ", ".join(sorted((error.schema.get("properties") or {}).keys()))
            for extra in extras or ["?"]:
                diagnostics.append(
                    Diagnostic(
                        join_path(prefix, format_path([*path, extra])),
                        "unknown property",
                        f"only {allowed}" if allowed else None,
                    )
                )
            continue
        diagnostics.append(Diagnostic(join_path(prefix, format_path(path)), message, expected))
    return sorted(set(diagnostics), key=lambda d: (d.path, d.message))


def check_schema(schema: Any, path: str) -> list[Diagnostic]:
    """Diagnostics when ``schema`` is not a valid Draft 2020-12 JSON Schema (checked by its meta-schema)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        return [
            Diagnostic(
                join_path(path, format_path(error.path)),
                f"not a valid JSON Schema: {error.message}",
                "a schema that conforms to the Draft 2020-12 meta-schema",
            )
        ]
    return []


def validate_manifest(data: Any) -> tuple[Manifest | None, list[Diagnostic]]:
    """Validate and normalize ``data``: the manifest, or ``None`` and every diagnostic found."""
    diagnostics = schema_diagnostics(_VALIDATOR, data)
    if isinstance(data, dict):
        if isinstance(data.get("config_schema"), dict):
            diagnostics += check_schema(data["config_schema"], "config_schema")
        tools = data.get("tools")
        if isinstance(tools, list):
            diagnostics += _tool_diagnostics(data, tools)
    if diagnostics:
        return None, sorted(set(diagnostics), key=lambda d: (d.path, d.message))
    normalized = normalize_manifest(data)
    return _build(normalized), []


def _tool_diagnostics(data: dict[str, Any], tools: list[Any]) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    seen: dict[str, int] = {}
    plugin_id = data.get("id") if isinstance(data.get("id"), str) else None
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        if isinstance(tool.get("input_schema"), dict):
            diagnostics += check_schema(tool["input_schema"], f"tools[{index}].input_schema")
            diagnostics += summary_diagnostics(tool, f"tools[{index}].summary")
        name = tool.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            diagnostics.append(
                Diagnostic(
                    f"tools[{index}].name",
                    f"duplicate tool name {name!r} (already used by tools[{seen[name]}])",
                    "tool names unique within the plugin",
                )
            )
        else:
            seen[name] = index
        if plugin_id and not OPENAI_TOOL_NAME.match(full_tool_name(plugin_id, name)):
            diagnostics.append(
                Diagnostic(
                    f"tools[{index}].name",
                    f"the name the model sees, {full_tool_name(plugin_id, name)!r}, is longer than 64 characters",
                    "plugin id and tool name together at most 63 characters",
                )
            )
    return diagnostics


def summary_diagnostics(tool: dict[str, Any], path: str) -> list[Diagnostic]:
    """Problems of a tool's ``summary`` templates that its schema cannot see: each placeholder must
    name an argument (an ``input_schema`` property), with no format spec but ``datetime``.

    A template that is not a string (or a language code that is wrong) is the schema's to report.
    """
    summary = tool.get("summary")
    if isinstance(summary, str):
        templates = {None: summary}
    elif isinstance(summary, dict):
        templates = {language: text for language, text in summary.items() if isinstance(text, str)}
    else:
        return []
    properties = (tool.get("input_schema") or {}).get("properties")
    names = set(properties) if isinstance(properties, dict) else set()
    expected = (
        f"placeholders naming arguments of the tool ({', '.join(sorted(names)) or 'it has none'}), "
        "such as {name} or {name:datetime}; {{ and }} for a literal brace"
    )
    diagnostics = []
    for language, template in templates.items():
        where = path if language is None else join_path(path, format_path([language]))
        diagnostics += [
            Diagnostic(where, problem, expected) for problem in template_problems(template, names)
        ]
    return diagnostics


def template_problems(template: str, names: set[str]) -> list[str]:
    """What is wrong with ``template`` as a summary over arguments ``names`` (empty when nothing)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        return [f"not a valid template: {error}"]
    problems = []
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue  # literal text only
        shown = (
            "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        )
        if field_name not in names:
            problems.append(f"unknown placeholder {shown}")
        elif conversion:
            problems.append(f"conversion !{conversion} is not allowed in {shown}")
        elif spec and spec not in SUMMARY_FORMAT_SPECS:
            problems.append(f"format spec {spec!r} is not allowed in {shown}")
    return problems


def normalize_summary(summary: str | dict[str, str] | None) -> dict[str, str]:
    """A summary as templates by language: a plain string is English (``{"en": s}``); idempotent."""
    if summary is None:
        return {}
    if isinstance(summary, str):
        return {DEFAULT_LANGUAGE: summary}
    return dict(sorted(summary.items()))


def normalize_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and fix the order; idempotent (``normalize(normalize(m)) == normalize(m)``)."""
    data = copy.deepcopy(data)
    risk = data.get("risk", "low")
    approval = bool(data.get("requires_approval", False))
    tools = []
    for tool in sorted(data.get("tools", []), key=lambda t: t["name"]):
        entry = {
            "name": tool["name"],
            "description": tool["description"],
            "input_schema": tool["input_schema"],
            "risk": tool.get("risk", risk),
            "requires_approval": bool(tool.get("requires_approval", approval)),
        }
        if tool.get("timeout_s") is not None:
            entry["timeout_s"] = float(tool["timeout_s"])
        # Written only when present, so a manifest without them normalizes as it always did.
        if tool.get("title") is not None:
            entry["title"] = tool["title"]
        if tool.get("summary") is not None:
            entry["summary"] = normalize_summary(tool["summary"])
        tools.append(entry)
    return {
        "id": data["id"],
        "name": data["name"],
        "version": data["version"],
        "description": data.get("description", ""),
        "entrypoint": data["entrypoint"],
        "config_schema": data.get("config_schema", {"type": "object"}),
        "risk": risk,
        "requires_approval": approval,
        "capabilities": sorted(set(data.get("capabilities", []))),
        "tools": tools,
    }


def _build(normalized: dict[str, Any]) -> Manifest:
    return Manifest(
        id=normalized["id"],
        name=normalized["name"],
        version=normalized["version"],
        description=normalized["description"],
        entrypoint=normalized["entrypoint"],
        config_schema=normalized["config_schema"],
        risk=normalized["risk"],
        requires_approval=normalized["requires_approval"],
        capabilities=tuple(normalized["capabilities"]),
        tools=tuple(
            ToolSpec(
                name=t["name"],
                description=t["description"],
                input_schema=t["input_schema"],
                risk=t["risk"],
                requires_approval=t["requires_approval"],
                timeout_s=t.get("timeout_s"),
                title=t.get("title"),
                summary=dict(t.get("summary") or {}),
            )
            for t in normalized["tools"]
        ),
        data=normalized,
    )
