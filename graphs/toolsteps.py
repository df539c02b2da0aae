"""The tool half of the loop: guard the calls (with human approval through interrupt()), run the cleared ones
through the broker, then screen their results before the model reads them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agent.types import ToolCall, ToolResult
from graphs.deps import Deps
from graphs.nodes import Update, add_verdict, emit
from graphs.prompts import calls_message, result_message
from graphs.state import AgentState

DENIED = "the user denied this call; do not retry it, answer without it or ask the user"


def check_tool_calls(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """Validate each call, ask the guard, and pause for approval of the calls that need it.

    The node re-runs from the top when the run resumes (that is how interrupt() works), so everything
    before the interrupt is pure.
    """
    deps = runtime.context
    verdicts = list(state.get("verdicts", []))
    cleared: list[dict[str, Any]] = []
    settled: dict[str, dict[str, Any]] = {}  # call id -> result decided here (invalid, blocked, denied)
    asks: list[dict[str, Any]] = []
    offered = state.get("offered_tools", [])
    for raw in state.get("pending_calls", []):
        call = ToolCall(raw["id"], raw["name"], raw["arguments"])
        if call.name not in offered:
            # Only the tools offered for this task kind may run, whatever else is registered.
            settled[call.id] = _failed(call, f"tool {call.name!r} is not available here; the tools you can call "
                                             f"are: {', '.join(offered) or 'none'}", stopped=False)
            continue
        invalid = deps.broker.validate(call)
        if invalid is not None:
            settled[call.id] = invalid.to_dict()
            continue
        verdict = deps.guards.check_tool_call(call, deps.broker.needs_approval(call))
        verdicts = add_verdict(verdicts, runtime, verdict)
        if verdict.action == "block":
            settled[call.id] = _failed(call, f"blocked by policy: {verdict.reason}")
        elif verdict.action == "ask":
            asks.append({**raw, "reason": verdict.reason})
        else:
            cleared.append(raw)
    if asks:
        decisions = approval_decisions(interrupt({"kind": "approval", "calls": asks}), asks)
        for ask in asks:
            if decisions[ask["id"]]:
                cleared.append({k: ask[k] for k in ("id", "name", "arguments")})
            else:
                settled[ask["id"]] = _failed(ToolCall(ask["id"], ask["name"], ask["arguments"]), DENIED)
    order = [c["id"] for c in state.get("pending_calls", [])]
    cleared.sort(key=lambda c: order.index(c["id"]))
    return {"approved_calls": cleared, "step_results": list(settled.values()), "verdicts": verdicts}


def approval_decisions(value: Any, asks: list[dict[str, Any]]) -> dict[str, bool]:
    """Read a resume value: True/False for every pending call, or a mapping call id -> bool (ids left out
    are denied: nothing runs without a yes)."""
    if isinstance(value, bool):
        return {a["id"]: value for a in asks}
    if isinstance(value, Mapping):
        return {a["id"]: bool(value.get(a["id"], False)) for a in asks}
    return {a["id"]: False for a in asks}


def call_tools(state: AgentState, runtime: Runtime[Deps]) -> Update:
    deps = runtime.context
    approved = [ToolCall(c["id"], c["name"], c["arguments"]) for c in state.get("approved_calls", [])]
    results = {r.call_id: r.to_dict() for r in deps.broker.call_many(approved, user_id=state["user_id"])}
    for result in results.values():
        emit(runtime, {"type": "tool_result", **result})
    results.update({r["call_id"]: r for r in state.get("step_results", [])})
    ordered = [results[c["id"]] for c in state.get("pending_calls", []) if c["id"] in results]
    return {"step_results": ordered, "approved_calls": []}


def check_tool_results(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """Screen results for indirect prompt injection and size, then hand them to the model's scratchpad."""
    deps = runtime.context
    verdicts = list(state.get("verdicts", []))
    screened: list[dict[str, Any]] = []
    asks: list[dict[str, Any]] = []
    for result in state.get("step_results", []):
        if result.get("stopped"):  # our own message (blocked, denied): nothing untrusted in it
            screened.append(result)
            continue
        # A failed tool's error carries what the program printed: as untrusted as a good result.
        field = "output" if result["ok"] else "error"
        verdict = deps.guards.check_tool_result(result[field] or "")
        verdicts = add_verdict(verdicts, runtime, verdict)
        if verdict.action == "redact" and verdict.text is not None:
            result = {**result, field: verdict.text}
        elif verdict.action == "block":
            result = {**result, field: f"[tool result withheld: {verdict.reason}]"}
        elif verdict.action == "ask":
            asks.append({"id": result["call_id"], "name": result["name"], "reason": verdict.reason, "field": field})
        screened.append(result)
    if asks:
        decisions = approval_decisions(interrupt({"kind": "tool_result", "calls": asks}), asks)
        withheld = {a["id"]: a["field"] for a in asks if not decisions[a["id"]]}
        screened = [{**r, withheld[r["call_id"]]: "[tool result withheld by the user]"}
                    if r["call_id"] in withheld else r for r in screened]
    pending = state.get("pending_calls", [])
    by_id = {c["id"]: c for c in pending}
    trace = [{**by_id.get(r["call_id"], {"arguments": {}}), **r, "id": r["call_id"]} for r in screened]
    scratch = [*state.get("scratch", []), calls_message(pending), *(result_message(r) for r in screened)]
    return {
        "scratch": scratch,
        "tool_trace": [*state.get("tool_trace", []), *trace],
        "pending_calls": [],
        "step_results": [],
        "step_failed": bool(screened) and not any(r["ok"] or r.get("stopped") for r in screened),
        "verdicts": verdicts,
    }


def _failed(call: ToolCall, error: str, stopped: bool = True) -> dict[str, Any]:
    """A call that did not run. `stopped`: by policy or by the user, not a failure of the plan, so it never
    triggers a re-plan (nor an injection scan: the text is ours)."""
    return {**ToolResult(call_id=call.id, name=call.name, ok=False, output="", error=error).to_dict(),
            "stopped": stopped}
