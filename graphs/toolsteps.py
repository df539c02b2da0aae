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
    before the interrupt is pure. Each cleared call leaves with its idempotency key (`call_key`), stored in
    the checkpoint before call_tools runs anything.
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
    keyed = [{**c, "key": call_key(state, order.index(c["id"]))} for c in cleared]
    return {"approved_calls": keyed, "step_results": list(settled.values()), "verdicts": verdicts}


def call_key(state: AgentState, position: int) -> str:
    """A call's idempotency key: unique in the run (the run id, the act step, the call's position in that
    step's reply) and the same on every replay of the step, since all three come from the checkpoint."""
    return f"{state.get('run_id', '')}/{state.get('steps', 0)}/{position}"


def approval_decisions(value: Any, asks: list[dict[str, Any]]) -> dict[str, bool]:
    """Read a resume value: True/False for every pending call, or a mapping call id -> bool. Only an explicit
    True approves: ids left out, and values that are not True ("no", 1, None), are denied."""
    if isinstance(value, bool):
        return {a["id"]: value for a in asks}
    if isinstance(value, Mapping):
        return {a["id"]: value.get(a["id"]) is True for a in asks}
    return {a["id"]: False for a in asks}


def call_tools(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """Run the cleared calls concurrently (bounded by [tools] max_parallel), each once per idempotency key
    through the journal, so a step replayed after a crash returns recorded results instead of running
    tools again; results in call order."""
    deps = runtime.context
    raw = state.get("approved_calls", [])
    approved = [ToolCall(c["id"], c["name"], c["arguments"]) for c in raw]
    if deps.journal is not None:
        # A call without a key comes from a checkpoint written before keys were stored.
        keys = [c.get("key") or f"{state.get('run_id', '')}/{state.get('steps', 0)}/{c['id']}" for c in raw]
        ran = deps.journal.call_many(approved, keys, user_id=state["user_id"])
    else:
        ran = deps.broker.call_many(approved, user_id=state["user_id"])
    results = {r.call_id: r.to_dict() for r in ran}
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
