"""The tool interface the agent turn uses: list the allowed tools, call one safely.

:meth:`ToolRegistry.call` never raises: an unknown or forbidden tool, arguments that are not JSON
or break the tool's input schema, an exception in the tool, or a tool that outlives its timeout
all come back as ``ToolResult(ok=False, error=...)``. A tool runs in its own daemon thread, so a
tool that hangs costs a thread, never the caller (Python cannot kill a thread; it is abandoned).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from zenthor.observability import emit
from zenthor.observability import events as ev
from zenthor.plugins.registry import LoadReport, RegisteredTool, load_plugins

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolContext:
    """Who a tool call is for, and the key that names the logical call across retries.

    ``idempotency_key`` is set only where the agent can name the call stably across retries of
    the same turn: an approved call carries ``tool_approval:<approval id>`` (the approval row
    outlives every retry of its resume job, lease takeovers included). A tool with a side effect
    that requires approval should store the key with its effect and, when it sees the key again,
    return what it did the first time instead of doing it again.

    Other calls get ``None``: a retried turn asks the model again, so its ``tool_call_id`` (and
    even the arguments) may differ, and no key derived from them names the same logical call.
    A tool that does not require approval must therefore be safe to repeat: read-only, or
    idempotent by content (core-memory ``remember`` keeps one note per text and contact,
    core-schedule ``cancel`` of a cancelled reminder succeeds again).
    """

    conversation_id: int
    channel: str
    account_id: str
    chat_id: str
    sender_id: str | None  # the contact the conversation is with
    job_id: int | None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gives back to the model."""

    ok: bool
    content: str  # JSON text (or plain text) handed back to the model
    error: str | None = None  # short, clear reason when ok is False


@dataclass(frozen=True)
class ToolDescription:
    """What a person reads about a tool (the approval question): the manifest's ``title`` and
    ``summary`` templates by language (empty without one), the plugin's display name and the
    tool's own name within it."""

    title: str | None
    summary: dict[str, str]
    plugin_name: str
    tool_name: str


class ToolError(Exception):
    """Raised by a tool for a problem the model should read (bad date, nothing to forget...)."""


def failure(error: str) -> ToolResult:
    """A failed result whose content tells the model what went wrong."""
    return ToolResult(ok=False, content=json.dumps({"error": error}, ensure_ascii=False), error=error)


def to_content(value: Any) -> str:
    """A handler's return value as the text the model reads (JSON unless it already is text)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class ToolRegistry:
    """The tools of one load cycle."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        # Sorted by name: the tool list the model sees is the same on every run.
        self._tools = dict(sorted(report.tools.items()))

    def openai_tools(self) -> list[dict]:
        """``[{"type": "function", "function": {name, description, parameters}}]``, allowed tools only."""
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.full_name,
                    "description": tool.spec.description,
                    "parameters": tool.spec.input_schema,
                },
            }
            for tool in self._tools.values()
            if tool.allowed
        ]

    def tool_names(self) -> list[str]:
        """Names of the allowed tools, sorted."""
        return [name for name, tool in self._tools.items() if tool.allowed]

    def requires_approval(self, name: str) -> bool:
        """Whether a person must approve a call first (unknown tools: True, the safe answer)."""
        tool = self._tools.get(name)
        return True if tool is None else tool.spec.requires_approval

    def risk(self, name: str) -> str:
        """``low``, ``medium`` or ``high`` (unknown tools: ``high``)."""
        tool = self._tools.get(name)
        return "high" if tool is None else tool.spec.risk

    def describe(self, name: str) -> ToolDescription | None:
        """The title and summary of tool ``name`` for the approval question; None if unknown."""
        tool = self._tools.get(name)
        if tool is None:
            return None
        return ToolDescription(
            title=tool.spec.title,
            summary=dict(tool.spec.summary),
            plugin_name=tool.plugin_name or tool.plugin_id,
            tool_name=tool.spec.name,
        )

    def call(
        self, name: str, arguments: dict | str, context: ToolContext, *, timeout_s: float = 20.0
    ) -> ToolResult:
        """Validate ``arguments`` and run tool ``name`` with a timeout; never raises."""
        started = time.monotonic()
        tool = self._tools.get(name)
        kind, result = self._call(tool, name, arguments, context, timeout_s)
        emit(
            ev.TOOL_CALLED,
            tool=name if tool is not None else "?",
            plugin_id=tool.plugin_id if tool is not None else None,
            ok=result.ok,
            failure=kind,
            duration_ms=int((time.monotonic() - started) * 1000),
            conversation_id=context.conversation_id,
            job_id=context.job_id,
        )
        return result

    def _call(
        self,
        tool: RegisteredTool | None,
        name: str,
        arguments: dict | str,
        context: ToolContext,
        timeout_s: float,
    ) -> tuple[str | None, ToolResult]:
        if tool is None:
            known = ", ".join(self.tool_names()) or "none"
            return "unknown_tool", failure(f"unknown tool {name!r} (available: {known})")
        if not tool.allowed:
            return "not_allowed", failure(f"tool {name!r} is not allowed by the plugins configuration")
        try:
            parsed = parse_arguments(arguments)
        except ToolError as error:
            return "invalid_arguments", failure(str(error))
        problems = sorted(tool.validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
        if problems:
            described = "; ".join(_describe(p) for p in problems[:5])
            return "invalid_arguments", failure(f"invalid arguments for {name}: {described}")
        if tool.spec.timeout_s is not None:
            timeout_s = min(timeout_s, tool.spec.timeout_s)
        return run_with_timeout(tool, parsed, context, timeout_s)


def parse_arguments(arguments: dict | str | None) -> dict:
    """The arguments as a dict: a JSON object string is parsed, anything else is refused."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as error:
            raise ToolError(f"arguments are not valid JSON: {error}") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def _describe(error: Any) -> str:
    path = "/".join(str(p) for p in error.absolute_path)
    return f"{path or '(arguments)'}: {error.message}"


def run_with_timeout(
    tool: RegisteredTool, arguments: dict, context: ToolContext, timeout_s: float
) -> tuple[str | None, ToolResult]:
    """Run the handler in a daemon thread; give up after ``timeout_s`` (the thread is abandoned)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = tool.handler(arguments, context)
        except BaseException as error:  # noqa: BLE001 - reported to the caller, never raised
            outcome["error"] = error
        finally:
            _release_connection()

    thread = threading.Thread(target=target, name=f"tool-{tool.full_name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _logger.warning("tool %s still running after %.1fs; abandoned", tool.full_name, timeout_s)
        return "timeout", failure(f"tool {tool.full_name} timed out after {timeout_s:g}s and was abandoned")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ToolError):
            return "error", failure(str(error))
        _logger.warning(
            "tool %s raised %s",
            tool.full_name,
            type(error).__name__,
            exc_info=error,
            extra={"tool": tool.full_name},
        )
        return "exception", failure(f"tool {tool.full_name} failed: {type(error).__name__}: {error}"[:500])
    value = outcome.get("value")
    if isinstance(value, ToolResult):
        return (None if value.ok else "error"), value
    try:
        return None, ToolResult(ok=True, content=to_content(value))
    except (TypeError, ValueError) as error:
        return "exception", failure(f"tool {tool.full_name} returned a value that is not JSON: {error}")


def _release_connection() -> None:
    """Give the tool thread's database connection back to the pool."""
    from zenthor.db import database

    try:
        if database.obj is not None and not database.is_closed():
            database.close()
    except Exception:  # noqa: BLE001 - nothing to give back
        pass


_registry: ToolRegistry | None = None
_registry_lock = threading.Lock()


def get_tool_registry() -> ToolRegistry:
    """The process-wide registry; the first call runs a load cycle (persisting ``plugin_status``)."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = ToolRegistry(load_plugins())
    return _registry


def reload_tool_registry() -> ToolRegistry:
    """Run a new load cycle and make its registry the process-wide one."""
    global _registry
    with _registry_lock:
        _registry = ToolRegistry(load_plugins())
    return _registry
