"""The Result of a run, as the Python API returns it and `metagent run --json` prints it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Approval:
    """A tool call waiting for a human yes or no."""

    id: str
    name: str
    arguments: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Result:
    answer: str
    run_id: str
    thread_id: str
    status: str  # done | blocked | budget | interrupted
    task_kind: str = ""
    adapter: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    plan: str = ""
    pending: list[Approval] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, values: dict[str, Any], thread_id: str, pending: list[Approval]) -> Result:
        return cls(
            answer=values.get("answer", "") if not pending else "",
            run_id=values.get("run_id", ""),
            thread_id=thread_id,
            status="interrupted" if pending else values.get("status", "done"),
            task_kind=values.get("task_kind", ""),
            adapter=values.get("adapter"),
            citations=[_citation(c) for c in values.get("citations", [])],
            tool_calls=[_tool_call(t) for t in values.get("tool_trace", [])],
            verdicts=list(values.get("verdicts", [])),
            timings=dict(values.get("timings", {})),
            usage=dict(values.get("usage", {})),
            plan=values.get("plan", ""),
            pending=pending,
        )


def _citation(c: dict[str, Any]) -> dict[str, Any]:
    return {"n": c["n"], "source": c["source"], "position": c["position"], "text": c["text"]}


def _tool_call(t: dict[str, Any]) -> dict[str, Any]:
    return {"id": t.get("id"), "name": t.get("name"), "arguments": t.get("arguments", {}),
            "ok": t.get("ok"), "output": t.get("output"), "error": t.get("error")}
