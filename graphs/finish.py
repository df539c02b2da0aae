"""The end of a run: screen the answer, then record the episode and the turn in the thread's history."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.types import Episode
from graphs.deps import Deps
from graphs.nodes import Update, apply_verdict
from graphs.state import AgentState

HISTORY_CHARS = 4000  # per stored turn: keeps a pasted megabyte out of every later prompt


def check_output(state: AgentState, runtime: Runtime[Deps]) -> Update:
    return apply_verdict(state, runtime, runtime.context.guards.check_output(state.get("answer", "")), "answer")


def record_episode(state: AgentState, runtime: Runtime[Deps]) -> Update:
    deps = runtime.context
    status = "budget" if state.get("status") == "budget" else "done"
    if deps.episodes is not None:
        deps.episodes.record(Episode(
            id=state["run_id"],
            user_id=state["user_id"],
            request=state["request"][:HISTORY_CHARS],
            task_kind=state.get("task_kind", ""),
            adapter=state.get("adapter"),
            plan=state.get("plan", ""),
            tool_calls=tuple(_trace_entry(t) for t in state.get("tool_trace", [])),
            answer=state.get("answer", "")[:HISTORY_CHARS],
            outcome="budget" if status == "budget" else "success",
            created_at=deps.clock(),
        ))
    history = [*state.get("history", []),
               {"role": "user", "content": state["request"][:HISTORY_CHARS]},
               {"role": "assistant", "content": state.get("answer", "")[:HISTORY_CHARS]}]
    return {"status": status, "history": history}


def _trace_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry.get("name"), "arguments": entry.get("arguments", {}), "ok": entry.get("ok"),
            "output": str(entry.get("output", ""))[:500], "error": entry.get("error")}
