"""The graph's state: plain JSON-friendly data only, so every step checkpoints cleanly.

Thread-scoped fields persist across turns of a conversation (`history`). Everything else is per run and is
reset by `new_run()` at the start of each turn.
"""

from __future__ import annotations

from typing import Any, TypedDict


class AgentState(TypedDict, total=False):
    # thread-scoped
    history: list[dict[str, str]]  # earlier turns: {"role": "user"|"assistant", "content": ...}
    # per run
    run_id: str
    user_id: str
    request: str
    forced_kind: str | None
    task_kind: str
    kind_confidence: float
    kind_method: str
    adapter: str | None
    exemplars: list[dict[str, Any]]  # recalled episodes
    passages: list[dict[str, Any]]  # retrieved, numbered [1].. in order
    plan: str
    replans: int
    scratch: list[dict[str, str]]  # this run's assistant calls and tool results, as messages
    offered_tools: list[str]  # the tools the last act step offered (only these may run)
    pending_calls: list[dict[str, Any]]  # calls from the last act step, not yet run
    approved_calls: list[dict[str, Any]]  # calls cleared by check_tool_calls
    step_results: list[dict[str, Any]]  # results of the current step, in call order
    step_failed: bool  # every call of the last step failed (a reason to re-plan)
    tool_trace: list[dict[str, Any]]  # every call of the run with its result
    steps: int
    answer: str
    citations: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    status: str  # running | blocked | budget | done
    timings: dict[str, float]
    usage: dict[str, int]


def new_run(request: str, run_id: str, user_id: str, forced_kind: str | None = None) -> AgentState:
    """The input of one run: the request plus a fresh value for every per-run field."""
    return AgentState(
        run_id=run_id,
        user_id=user_id,
        request=request,
        forced_kind=forced_kind,
        task_kind="",
        kind_confidence=0.0,
        kind_method="",
        adapter=None,
        exemplars=[],
        passages=[],
        plan="",
        replans=0,
        scratch=[],
        offered_tools=[],
        pending_calls=[],
        approved_calls=[],
        step_results=[],
        step_failed=False,
        tool_trace=[],
        steps=0,
        answer="",
        citations=[],
        verdicts=[],
        status="running",
        timings={},
        usage={"prompt_tokens": 0, "completion_tokens": 0},
    )
