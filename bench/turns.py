"""Turns for benchmarks, in a module without side effects: the worker imports it by name
(``AGENT_TURN=bench.turns:noop_turn``), and importing a benchmark module would set up a
second scratch environment."""

from __future__ import annotations

from zenthor.agent.turn import TurnContext, TurnResult


def noop_turn(ctx: TurnContext) -> TurnResult:
    """The cheapest turn: one short reply, no model."""
    return TurnResult(replies=["ok"])
