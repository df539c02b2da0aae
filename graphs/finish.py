"""The end of a run: screen the answer, then record the episode and the turn in the thread's history."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from langgraph.runtime import Runtime

from agent.types import Episode
from graphs.deps import Deps
from graphs.nodes import Update, apply_verdict
from graphs.state import AgentState

HISTORY_CHARS = 4000  # per stored turn: keeps a pasted megabyte out of every later prompt


def check_output(state: AgentState, runtime: Runtime[Deps]) -> Update:
    return apply_verdict(state, runtime, runtime.context.guards.check_output(state.get("answer", "")), "answer")


def record_episode(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """Store the run as an episode and the turn in the thread's history, with secrets and personal data
    redacted (the output guard's redaction, applied to everything kept, not only the answer)."""
    deps = runtime.context
    status = "budget" if state.get("status") == "budget" else "done"

    def clean(text: str) -> str:
        verdict = deps.guards.check_output(text)
        return verdict.text if verdict.action == "redact" and verdict.text is not None else text

    request, answer = clean(state["request"][:HISTORY_CHARS]), clean(state.get("answer", "")[:HISTORY_CHARS])
    trace = state.get("tool_trace", [])
    if deps.episodes is not None:
        deps.episodes.record(Episode(
            id=state["run_id"],
            user_id=state["user_id"],
            request=request,
            task_kind=state.get("task_kind", ""),
            adapter=state.get("adapter"),
            plan=clean(state.get("plan", "")),
            tool_calls=tuple(_trace_entry(t, clean) for t in trace),
            answer=answer,
            outcome=_outcome(status, trace),
            created_at=deps.clock(),
        ))
    history = [*state.get("history", []), {"role": "user", "content": request},
               {"role": "assistant", "content": answer}]
    return {"status": status, "history": history}


def _outcome(status: str, trace: list[dict[str, Any]]) -> Literal["success", "failure", "budget"]:
    """Only runs that ended well are recalled as examples: a denied or blocked call, or a last call that
    failed, makes the run a failure."""
    if status == "budget":
        return "budget"
    if any(t.get("stopped") for t in trace) or (trace and not trace[-1].get("ok")):
        return "failure"
    return "success"


def _trace_entry(entry: dict[str, Any], clean: Callable[[str], str]) -> dict[str, Any]:
    dumped = clean(json.dumps(entry.get("arguments", {}), ensure_ascii=False))
    try:
        arguments = json.loads(dumped)
    except json.JSONDecodeError:  # a redaction that spanned JSON punctuation: keep the cleaned text
        arguments = {"redacted": dumped}
    error = entry.get("error")
    return {"name": entry.get("name"), "arguments": arguments, "ok": entry.get("ok"),
            "output": clean(str(entry.get("output", ""))[:500]), "error": clean(error) if error else None}
