"""The turn's view of the tools: the plugin registry, argument checks, and the tool context.

The registry comes from ``zenthor.plugins.tools.get_tool_registry`` (the plugins layer, below
the agent). It already filters tools by the allow/deny policy. Before a call runs, its arguments
are parsed and validated against the tool's JSON schema here, so a malformed call goes back to
the model as an error result and never reaches the tool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema

_logger = logging.getLogger(__name__)


class ToolRegistryLike(Protocol):
    """What the turn needs from the plugin registry."""

    def openai_tools(self) -> list[dict]: ...
    def tool_names(self) -> list[str]: ...
    def requires_approval(self, name: str) -> bool: ...
    def risk(self, name: str) -> str: ...
    def call(self, name: str, arguments: dict | str, context: Any, *, timeout_s: float = 20.0) -> Any: ...


@dataclass(frozen=True)
class LocalToolContext:
    """Same shape as ``zenthor.plugins.tools.ToolContext``, used when plugins are absent."""

    conversation_id: int
    channel: str
    account_id: str
    chat_id: str
    sender_id: str | None
    job_id: int | None
    idempotency_key: str | None = None


class NoTools:
    """A registry with no tools (the plugin layer is not installed)."""

    def openai_tools(self) -> list[dict]:
        return []

    def tool_names(self) -> list[str]:
        return []

    def requires_approval(self, name: str) -> bool:
        return False

    def risk(self, name: str) -> str:
        return "low"

    def call(self, name: str, arguments: dict | str, context: Any, *, timeout_s: float = 20.0) -> Any:
        raise LookupError(name)


def get_registry() -> ToolRegistryLike:
    """The plugin tool registry, or :class:`NoTools` when the plugin layer is missing."""
    try:
        from zenthor.plugins.tools import get_tool_registry
    except ImportError:
        _logger.debug("zenthor.plugins.tools not available; the turn runs without tools")
        return NoTools()
    return get_tool_registry()


def make_tool_context(**fields: Any) -> Any:
    """A ``ToolContext`` for the plugin registry (or the local stand-in of the same shape)."""
    try:
        from zenthor.plugins.tools import ToolContext
    except ImportError:
        return LocalToolContext(**fields)
    return ToolContext(**fields)


def tool_schemas(tools: list[dict]) -> dict[str, dict]:
    """Parameter schema of each tool in an OpenAI ``tools`` list, by name."""
    schemas: dict[str, dict] = {}
    for tool in tools:
        function = tool.get("function") or {}
        if function.get("name"):
            schemas[function["name"]] = function.get("parameters") or {"type": "object"}
    return schemas


class BadToolCall(Exception):
    """A tool call the model got wrong; the message goes back to the model."""


def parse_arguments(name: str, raw: str | dict | None, schema: dict | None) -> dict:
    """The call's arguments as a dict, checked against ``schema``; :class:`BadToolCall` otherwise."""
    if isinstance(raw, dict):
        arguments = raw
    else:
        text = (raw or "").strip() or "{}"
        try:
            arguments = json.loads(text)
        except ValueError as error:
            raise BadToolCall(
                f"arguments for {name} are not valid JSON ({error.msg} at {error.pos})"
            ) from None
    if not isinstance(arguments, dict):
        raise BadToolCall(f"arguments for {name} must be a JSON object, got {type(arguments).__name__}")
    if schema:
        try:
            jsonschema.validate(arguments, schema)
        except jsonschema.ValidationError as error:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise BadToolCall(f"invalid arguments for {name}: {where}: {error.message}") from None
        except jsonschema.SchemaError:
            _logger.warning("tool %s has an invalid JSON schema; arguments not validated", name)
    return arguments
