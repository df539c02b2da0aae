"""Prompt assembly. The wording lives in agent/prompts/*.txt (data, not code); this module only fills it in."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from agent.llm.toolformat import format_call
from agent.types import Message

MAX_PASSAGE_CHARS = 700
MAX_EXEMPLAR_CHARS = 400


@cache
def template(name: str) -> str:
    return resources.files("agent.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")


def plan_messages(system: str, request: str, tool_names: list[str],
                  exemplars: list[dict[str, Any]] | None = None) -> tuple[Message, ...]:
    """The planner's prompt: past runs that went well (their request, plan and calls) before the task."""
    body = template("plan").format(tools=", ".join(tool_names) or "none", request=request)
    if exemplars:
        shown = template("exemplars").format(exemplars=render_exemplars(exemplars, with_plan=True))
        body = f"{shown}\n\n{body}"
    return (Message("system", system), Message("user", body))


def act_messages(state: dict[str, Any], system: str, history_limit: int) -> tuple[Message, ...]:
    """System prompt with plan, sources and exemplars; the thread's history; the request; this run's
    tool calls and results."""
    # The task kind routes the run; it is not shown to the model (a small model parrots the kind's description).
    parts = [system]
    if state.get("plan"):
        parts.append(f"Plan:\n{state['plan']}")
    if state.get("passages"):
        parts.append(template("sources").format(passages=render_passages(state["passages"])))
    if state.get("exemplars"):
        parts.append(template("exemplars").format(exemplars=render_exemplars(state["exemplars"])))
    messages = [Message("system", "\n\n".join(parts))]
    history = state.get("history", [])[-history_limit:] if history_limit else []
    messages += [Message(m["role"], m["content"]) for m in history]
    messages.append(Message("user", state["request"]))
    messages += [Message(m["role"], m["content"]) for m in state.get("scratch", [])]
    return tuple(messages)


def render_passages(passages: list[dict[str, Any]]) -> str:
    lines = []
    for n, p in enumerate(passages, 1):
        text = " ".join(p["text"].split())[:MAX_PASSAGE_CHARS]
        lines.append(f"[{n}] ({p['source']}) {text}")
    return "\n".join(lines)


def render_exemplars(exemplars: list[dict[str, Any]], with_plan: bool = False) -> str:
    """Past runs as "Request / (Plan) / Tool calls / Answer" blocks; the planner also sees their plans."""
    blocks = []
    for ep in exemplars:
        calls = "; ".join(f"{c['name']}({json.dumps(c.get('arguments', {}))})"
                          for c in ep.get("tool_calls", []) if c.get("ok", True))  # never teach a failed call
        block = f"Request: {ep['request']}"
        if with_plan and ep.get("plan"):
            block += f"\nPlan: {' '.join(ep['plan'].split())}"
        if calls:
            block += f"\nTool calls: {calls}"
        block += f"\nAnswer: {ep['answer']}"
        blocks.append(block[:MAX_EXEMPLAR_CHARS])
    return "\n---\n".join(blocks)


def calls_message(calls: list[dict[str, Any]]) -> dict[str, str]:
    """The assistant turn that made these calls, in the wire format the model writes."""
    return {"role": "assistant", "content": "\n".join(format_call(c["name"], c["arguments"]) for c in calls)}


def result_message(result: dict[str, Any]) -> dict[str, str]:
    if result["ok"]:
        body = result["output"]
    else:
        body = f"ERROR: {result['error']}"
    return {"role": "tool", "content": f"[{result['name']}] {body}"}
