"""Routers: pure functions of the state (and the task kind's routing flags) that pick the next node."""

from __future__ import annotations

from langgraph.runtime import Runtime

from graphs.deps import Deps
from graphs.state import AgentState


def route_after_check_input(state: AgentState) -> str:
    return "refuse" if state.get("status") == "blocked" else "classify_task"


def route_after_recall_episodes(state: AgentState, runtime: Runtime[Deps]) -> str:
    kind = runtime.context.classifier.kind(state["task_kind"])
    if kind.retrieve and runtime.context.retriever is not None:
        return "retrieve_context"
    return "make_plan" if kind.plan else "act"


def route_after_retrieve_context(state: AgentState, runtime: Runtime[Deps]) -> str:
    return "make_plan" if runtime.context.classifier.kind(state["task_kind"]).plan else "act"


def route_after_make_plan(state: AgentState) -> str:
    return "refuse" if state.get("status") == "blocked" else "act"


def route_after_act(state: AgentState) -> str:
    if state.get("status") == "budget":
        return "check_output"
    if state.get("pending_calls"):
        return "check_tool_calls"
    if not state.get("answer"):
        return "act"  # the model's unreadable calls were shown to it as errors: let it try again
    return "check_output"


def route_after_check_tool_results(state: AgentState, runtime: Runtime[Deps]) -> str:
    """Re-plan (bounded) when every call of the last step failed; otherwise back to act."""
    deps = runtime.context
    kind = deps.classifier.kind(state["task_kind"])
    if state.get("step_failed") and kind.plan and state.get("replans", 0) < deps.settings.agent.max_replans:
        return "make_plan"
    return "act"


def route_after_check_output(state: AgentState) -> str:
    return "refuse" if state.get("status") == "blocked" else "record_episode"
