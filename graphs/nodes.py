"""The nodes before and around the act loop. Each is `(state, runtime) -> partial state`; services come from
`runtime.context` (a Deps). Nodes do no I/O of their own beyond calling those services."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from agent.types import LLMRequest, Verdict
from graphs.deps import Deps, offered_tools
from graphs.prompts import plan_messages
from graphs.state import AgentState

Update = dict[str, Any]


def emit(runtime: Runtime[Deps], event: dict[str, Any]) -> None:
    runtime.stream_writer(event)


def add_verdict(verdicts: list[dict[str, Any]], runtime: Runtime[Deps], verdict: Verdict) -> list[dict[str, Any]]:
    """The run's verdicts with this one added (non-allow verdicts are also streamed as events)."""
    record = verdict.to_dict()
    if verdict.action != "allow":
        emit(runtime, {"type": "verdict", **record})
    return [*verdicts, record]


def add_usage(state: AgentState, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    usage = dict(state.get("usage", {}))
    usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + prompt_tokens
    usage["completion_tokens"] = usage.get("completion_tokens", 0) + completion_tokens
    return usage


def apply_verdict(state: AgentState, runtime: Runtime[Deps], verdict: Verdict, field: str) -> Update:
    """Record a verdict on a text field of the state: a block stops the run, a redaction replaces the text."""
    update: Update = {"verdicts": add_verdict(state.get("verdicts", []), runtime, verdict)}
    if verdict.action == "block":
        update["status"] = "blocked"
    elif verdict.action == "redact" and verdict.text is not None:
        update[field] = verdict.text
    return update


def check_input(state: AgentState, runtime: Runtime[Deps]) -> Update:
    return apply_verdict(state, runtime, runtime.context.guards.check_input(state["request"]), "request")


def classify_task(state: AgentState, runtime: Runtime[Deps]) -> Update:
    deps = runtime.context
    forced = state.get("forced_kind")
    if forced:
        deps.classifier.kind(forced)  # raises ConfigError for an unknown kind
        kind, confidence, method = forced, 1.0, "forced"
    else:
        result = deps.classifier.classify(state["request"])
        kind, confidence, method = result.kind, result.confidence, result.method
    emit(runtime, {"type": "task_kind", "kind": kind, "confidence": confidence, "method": method})
    return {"task_kind": kind, "kind_confidence": confidence, "kind_method": method}


def select_adapter(state: AgentState, runtime: Runtime[Deps]) -> Update:
    selector = runtime.context.adapters
    adapter = selector.for_kind(state["task_kind"]) if selector is not None else None
    if adapter:
        emit(runtime, {"type": "adapter", "adapter": adapter})
    return {"adapter": adapter}


def recall_episodes(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """This user's similar past runs, as exemplars for the planner and act prompts: successful ones only (never
    one rated bad), those of the same task kind first and, within a kind, those the user rated good first."""
    deps = runtime.context
    k = deps.settings.memory.recall_k
    if deps.episodes is None or k == 0:
        return {"exemplars": []}
    found = deps.episodes.recall(state["user_id"], state["request"], k, task_kind=state["task_kind"])
    # Past requests and answers are screened like retrieved text before they enter a prompt.
    clean = [e for e in found
             if deps.guards.check_retrieved(f"{e.request}\n{e.plan}\n{e.answer}").action == "allow"]
    return {"exemplars": [_exemplar(e.to_dict()) for e in clean]}


def _exemplar(episode: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "request", "task_kind", "plan", "tool_calls", "answer")
    return {k: episode[k] for k in keep}


def retrieve_context(state: AgentState, runtime: Runtime[Deps]) -> Update:
    """Top passages for the request, each screened for indirect prompt injection before the model sees it."""
    deps = runtime.context
    if deps.retriever is None:
        return {"passages": []}
    settings = deps.settings.retrieval
    passages: list[dict[str, Any]] = []
    verdicts = list(state.get("verdicts", []))
    for passage in deps.retriever.search(state["request"], settings.top_k):
        if passage.score < settings.min_score:
            continue
        verdict = deps.guards.check_retrieved(passage.text)
        if verdict.action != "allow":
            verdicts = add_verdict(verdicts, runtime, verdict)
        if verdict.action in ("block", "ask"):
            continue  # never shown to the model
        record = passage.to_dict()
        if verdict.action == "redact" and verdict.text is not None:
            record["text"] = verdict.text
        passages.append(record)
    return {"passages": passages, "verdicts": verdicts}


def make_plan(state: AgentState, runtime: Runtime[Deps]) -> Update:
    deps = runtime.context
    kind = deps.classifier.kind(state["task_kind"])
    tool_names = [s.name for s in offered_tools(kind, deps.broker.specs())]
    request = state["request"]
    if state.get("replans", 0) or state.get("plan"):
        failures = [r for r in state.get("tool_trace", []) if not r["ok"]]
        notes = "; ".join(f"{r['name']} failed: {r['error']}" for r in failures[-3:])
        request = f"{request}\n(The previous plan failed: {notes}. Make a different plan.)"
    reply = deps.llm.complete(LLMRequest(
        purpose="plan",
        messages=plan_messages(deps.settings.agent.system_prompt, request, tool_names,
                               state.get("exemplars", [])),
        adapter=state.get("adapter"),
        max_new_tokens=160,
    ))
    plan = reply.content.strip()
    verdict = deps.guards.check_plan(plan, tool_names)
    update: Update = {
        "plan": plan,
        "replans": state.get("replans", 0) + (1 if state.get("plan") else 0),
        "usage": add_usage(state, reply.usage.prompt_tokens, reply.usage.completion_tokens),
        "verdicts": add_verdict(state.get("verdicts", []), runtime, verdict),
    }
    if verdict.action == "block":
        update["status"] = "blocked"
    else:
        emit(runtime, {"type": "plan", "plan": plan})
    return update


def refuse(state: AgentState, runtime: Runtime[Deps]) -> Update:
    blocks = [v for v in state.get("verdicts", []) if v["action"] == "block"]
    reason = blocks[-1]["reason"] if blocks else "a guardrail blocked this request"
    answer = f"I can't continue with this request: {reason}."
    # Neither the blocked text nor the reason (which quotes it) goes into the history later prompts use.
    checkpoint = blocks[-1]["checkpoint"] if blocks else "input"
    history = [*state.get("history", []), {"role": "user", "content": f"[request blocked by the {checkpoint} guard]"},
               {"role": "assistant", "content": "I could not help with that request."}]
    return {"answer": answer, "status": "blocked", "history": history}
