"""Typed events from `Agent.stream()`: what a run is doing, as it happens.

    NodeStart / NodeEnd     a graph node began / finished (with its wall time)
    TaskKind                the classifier's decision
    Plan                    the plan the model wrote
    Token                   a piece of the answer, as decoded
    ToolCallEvent           the model asked for a tool
    ToolResultEvent         a tool finished
    VerdictEvent            a guardrail did something other than allow
    InterruptEvent          the run paused for approval (resume with Agent.resume)
    Final                   the run's Result (always last)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.result import Approval, Result


@dataclass(frozen=True)
class NodeStart:
    node: str


@dataclass(frozen=True)
class NodeEnd:
    node: str
    elapsed_s: float


@dataclass(frozen=True)
class TaskKind:
    kind: str
    confidence: float
    method: str


@dataclass(frozen=True)
class Plan:
    plan: str


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResultEvent:
    call_id: str
    name: str
    ok: bool
    output: str
    error: str | None


@dataclass(frozen=True)
class VerdictEvent:
    checkpoint: str
    action: str
    reason: str


@dataclass(frozen=True)
class InterruptEvent:
    thread_id: str
    approvals: tuple[Approval, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Final:
    result: Result


Event = (NodeStart | NodeEnd | TaskKind | Plan | Token | ToolCallEvent | ToolResultEvent | VerdictEvent
         | InterruptEvent | Final)


def from_graph(raw: dict[str, Any]) -> Event | None:
    """Convert a graph custom-stream dict into a typed event (None for events the API does not expose)."""
    kind = raw.get("type")
    if kind == "node_start":
        return NodeStart(raw["node"])
    if kind == "node_end":
        return NodeEnd(raw["node"], float(raw["elapsed_s"]))
    if kind == "task_kind":
        return TaskKind(raw["kind"], float(raw["confidence"]), raw["method"])
    if kind == "plan":
        return Plan(raw["plan"])
    if kind == "token":
        return Token(raw["text"])
    if kind == "tool_call":
        return ToolCallEvent(raw["id"], raw["name"], raw["arguments"])
    if kind == "tool_result":
        return ToolResultEvent(raw["call_id"], raw["name"], raw["ok"], raw["output"], raw.get("error"))
    if kind == "verdict":
        return VerdictEvent(raw["checkpoint"], raw["action"], raw["reason"])
    return None
