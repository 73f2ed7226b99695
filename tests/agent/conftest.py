"""Fixtures for the agent turn: a fake model on loopback, a scriptable tool registry, job helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from tests.support.factories import make_conversation, make_job
from tests.support.fake_model import FakeModel
from zenthor.agent import toolbox


@dataclass(frozen=True)
class Result:
    ok: bool
    content: str
    error: str | None = None


@dataclass
class FakeTools:
    """A tool registry with two tools: ``core_time_now`` (free) and ``core_schedule_remind``
    (requires approval). Records every call it runs."""

    calls: list[tuple[str, dict]] = field(default_factory=list)
    fail_with: str | None = None

    def openai_tools(self) -> list[dict]:
        return [
            {
                "type": "function",
                "function": {
                    "name": "core_time_now",
                    "description": "The current time",
                    "parameters": {
                        "type": "object",
                        "properties": {"timezone": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "core_schedule_remind",
                    "description": "Schedule a reminder",
                    "parameters": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}, "at": {"type": "string"}},
                        "required": ["text", "at"],
                    },
                },
            },
        ]

    def tool_names(self) -> list[str]:
        return ["core_schedule_remind", "core_time_now"]

    def requires_approval(self, name: str) -> bool:
        return name == "core_schedule_remind"

    def risk(self, name: str) -> str:
        return "high" if name == "core_schedule_remind" else "low"

    def call(self, name, arguments, context, *, timeout_s: float = 20.0):
        args = json.loads(arguments) if isinstance(arguments, str) else arguments
        self.calls.append((name, args))
        if self.fail_with:
            return Result(False, "", self.fail_with)
        if name == "core_time_now":
            return Result(True, json.dumps({"now": "2026-01-02T03:04:05+00:00"}))
        return Result(True, json.dumps({"scheduled": True, "reminder_id": 7}))


@pytest.fixture
def fake_model():
    with FakeModel() as server:
        yield server


@pytest.fixture
def model_env(settings_env, fake_model):
    """Settings pointing the turn at the fake model, with fast retries."""

    def apply(**extra: str):
        values = {
            "AI_BASE_URL": fake_model.base_url,
            "AI_API_KEY": "test-key",
            "AI_MODEL": "primary-model",
            "AI_RETRY_BASE_MS": "20",
            "AI_RETRY_MAX_MS": "3000",
            "AI_TIMEOUT_S": "5",
            # These tests run a conversation's jobs one process_job() at a time, each asserted
            # on its own; the chain (tests/queue/test_chain.py) would run the next one at once.
            "AGENT_JOB_CHAIN_MAX_JOBS": "1",
            **extra,
        }
        return settings_env(**values)

    apply()
    return apply


@pytest.fixture
def tools(monkeypatch):
    registry = FakeTools()
    monkeypatch.setattr(toolbox, "get_registry", lambda: registry)
    return registry


@pytest.fixture
def new_job():
    """``new_job(text)`` -> (conversation_id, job_id) on a webhook conversation."""

    def make(text: str = "hello", chat_id: str = "chat-1") -> tuple[int, int]:
        conversation_id = make_conversation(chat_id=chat_id, channel="webhook", account_id="acct")
        return conversation_id, make_job(conversation_id, text)

    return make
