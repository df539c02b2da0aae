"""The act step: the model either answers or asks for tools. Its text streams to the user as it is decoded,
except tool-call blocks, which surface as tool_call events instead."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from langgraph.runtime import Runtime

from agent.llm.toolformat import CALL_OPEN
from agent.types import LLMDelta, LLMReply, LLMRequest, ToolChoice
from graphs.deps import Deps, KindInfo, offered_tools
from graphs.nodes import Update, add_usage, emit
from graphs.prompts import act_messages, result_message
from graphs.state import AgentState

# A call written out as text (a small model asked for an answer echoes its calls in blocks of its own making)
_CALL_LIKE = re.compile(r'"name"\s*:\s*"[^"]*"\s*,\s*"arguments"\s*:')
_CITE = re.compile(r"\[(S?\d{1,2})\]")
_SEARCHED = re.compile(r"^\[S(\d+)\] (.+?) \(part (\d+)\):\n(.*?)(?=\n\n\[S\d+\] |\Z)", re.S | re.M)


def act(state: AgentState, runtime: Runtime[Deps]) -> Update:
    deps = runtime.context
    kind = deps.classifier.kind(state["task_kind"])
    tools = offered_tools(kind, deps.broker.specs())
    request = LLMRequest(
        purpose="act",
        messages=act_messages(dict(state), deps.settings.agent.system_prompt, deps.settings.agent.history_messages),
        tools=tuple(tools),
        tool_choice=tool_choice(kind, state, bool(tools)),
        adapter=state.get("adapter"),
        max_new_tokens=deps.settings.model.max_new_tokens,
    )
    reply = without_calls_if_no_tools(stream_reply(runtime, request), request)
    usage = add_usage(state, reply.usage.prompt_tokens, reply.usage.completion_tokens)
    if reply.tool_calls and repeats_earlier_calls(reply, state):
        # The model asks again for results it already has (small models loop like this): running the same
        # calls again cannot help, so ask for the answer from what it has, with tools withdrawn.
        no_tools = replace(request, tool_choice="none")
        reply = without_calls_if_no_tools(stream_reply(runtime, no_tools), no_tools)
        usage = add_usage({**state, "usage": usage}, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        if not reply.content.strip() or _CALL_LIKE.search(reply.content):  # (no answer: it echoes calls)
            reply = replace(reply, tool_calls=(), content=last_results_answer(state))
    steps = state.get("steps", 0) + 1
    update: Update = {"steps": steps, "usage": usage, "offered_tools": [t.name for t in tools]}
    retry = _retry_reasons(reply)
    if retry:
        # Unreadable calls (possible only with constrained decoding off) or an empty reply: show the model
        # its mistake and let it try again, within the step budget.
        errors = [{"name": "error", "ok": False, "output": "", "error": e} for e in retry]
        update["scratch"] = [*state.get("scratch", []), {"role": "assistant", "content": reply.text},
                             *(result_message(e) for e in errors)]
        update["pending_calls"] = []
        return update | _budget_check(state, steps, deps.settings.agent.max_steps)
    if reply.tool_calls:
        calls = [c.to_dict() for c in reply.tool_calls]
        for call in calls:
            emit(runtime, {"type": "tool_call", **call})
        update["pending_calls"] = calls
        return update | _budget_check(state, steps, deps.settings.agent.max_steps)
    answer, citations = cite(reply.content, state.get("passages", []), state.get("tool_trace", []))
    return update | {"pending_calls": [], "answer": answer, "citations": citations}


def without_calls_if_no_tools(reply: LLMReply, request: LLMRequest) -> LLMReply:
    """With no tools offered, call blocks the model writes anyway are text, never calls that could run."""
    if request.tool_choice != "none" or not reply.tool_calls:
        return reply
    return replace(reply, tool_calls=())


def repeats_earlier_calls(reply: LLMReply, state: AgentState) -> bool:
    """Every call of the reply was already made in this run, with the same arguments, and succeeded."""
    done = {(t["name"], json.dumps(t.get("arguments", {}), sort_keys=True))
            for t in state.get("tool_trace", []) if t.get("ok")}
    return all((c.name, json.dumps(c.arguments, sort_keys=True)) in done for c in reply.tool_calls)


def last_results_answer(state: AgentState) -> str:
    """The answer of last resort when the model will only repeat itself: what its tools returned."""
    lines: list[str] = []
    for t in state.get("tool_trace", []):
        line = f"- {t['name']}({json.dumps(t.get('arguments', {}), ensure_ascii=False)}) returned: {t['output']}"
        if t.get("ok") and line not in lines:
            lines.append(line)
    return "\n".join(lines[-3:])


def _retry_reasons(reply: LLMReply) -> list[str]:
    if reply.tool_calls:
        return []
    if reply.parse_errors:
        return list(reply.parse_errors)
    if not reply.content.strip():
        return ["your reply was empty: answer the request, or call a tool"]
    return []


def _budget_check(state: AgentState, steps: int, max_steps: int) -> Update:
    """The model still wants to act (calls, or another try): end the run when that was its last step."""
    if steps < max_steps:
        return {}
    done = [r for r in state.get("tool_trace", []) if r["ok"]]
    last = f" Last tool result: {done[-1]['name']} -> {done[-1]['output'][:300]}" if done else ""
    answer = (f"I stopped after {steps} steps without finishing: that is the step budget "
              f"([agent] max_steps = {max_steps}).{last}")
    return {"status": "budget", "answer": answer, "pending_calls": []}


def tool_choice(kind: KindInfo, state: AgentState, has_tools: bool) -> ToolChoice:
    if not has_tools:
        return "none"
    # The classifier already decided this task needs a tool: make the first step call one. Small models
    # otherwise answer from memory (and get arithmetic wrong).
    if kind.require_tool and not state.get("tool_trace"):
        return "required"
    return "auto"


class TokenFilter:
    """Streams answer text the way the output guard will let it out.

    Text is held back while it could still be the start of a tool-call block, and the last HOLD_CHARS are
    held until the next delta so that a secret or address being written is redacted before it is shown:
    the user sees output-guard-redacted text as it streams, not the raw text.
    """

    HOLD_CHARS = 80

    def __init__(self, runtime: Runtime[Deps]) -> None:
        self.runtime = runtime
        self.raw = ""
        self.shown = ""  # the redacted text as of the last delta sent
        self.sent = 0
        self.answering = False
        self.stopped = False

    def feed(self, text: str) -> None:
        self.raw += text
        if not self.answering:
            stripped = self.raw.lstrip()
            if not stripped or CALL_OPEN.startswith(stripped[: len(CALL_OPEN)]):
                return
            self.answering = True
        self._send(final=False)

    def finish(self) -> None:
        if self.answering:
            self._send(final=True)

    def _send(self, final: bool) -> None:
        if self.stopped:
            return
        verdict = self.runtime.context.guards.check_output(self.raw)
        shown = verdict.text if verdict.text is not None else self.raw
        if verdict.action == "block" or not shown.startswith(self.shown[: self.sent]):
            # A redaction reached back into text already shown: stop here, the final answer replaces it.
            self.stopped = True
            return
        end = len(shown)
        if not final:
            # Hold the tail, and never cut inside a run without spaces: a key or token being written has none.
            end = len(shown) - self.HOLD_CHARS
            end = max(shown.rfind(" ", 0, max(end, 0)), shown.rfind("\n", 0, max(end, 0))) + 1
        if end > self.sent:
            emit(self.runtime, {"type": "token", "text": shown[self.sent:end]})
            self.sent, self.shown = end, shown


def stream_reply(runtime: Runtime[Deps], request: LLMRequest) -> LLMReply:
    """Run the request, streaming the answer (never tool-call blocks) as token events."""
    tokens = TokenFilter(runtime)
    for item in runtime.context.llm.stream(request):
        if isinstance(item, LLMReply):
            if not item.tool_calls:
                tokens.finish()
            return item
        if isinstance(item, LLMDelta):
            tokens.feed(item.text)
    raise RuntimeError("LLM stream ended without a final reply")  # a broken LLM implementation, not user input


def cite(answer: str, passages: list[dict[str, Any]], trace: list[dict[str, Any]] | None = None
         ) -> tuple[str, list[dict[str, Any]]]:
    """The citations of an answer: the passages it cites as [n] (retrieved before the model ran) or [Sn]
    (found by its search_docs calls), or, when it cites none, every passage it was given. They are listed
    under the answer with their source paths so the user can check them."""
    found: dict[str, dict[str, Any]] = {str(n): p for n, p in enumerate(passages, 1)}
    found.update(searched_passages(trace or []))
    if not found:
        return answer, []
    labels = [label for label in dict.fromkeys(_CITE.findall(answer)) if label in found]
    if not labels:
        labels = [str(n) for n in range(1, len(passages) + 1)] or list(found)
    listed = [{"n": int(label) if label.isdigit() else label, **found[label]} for label in labels]
    footer = "\n\nSources: " + "; ".join(f"[{c['n']}] {c['source']}" for c in listed)
    return answer + footer, listed


def searched_passages(trace: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Passages returned by search_docs calls in this run, by label (a later search wins a label)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in trace:
        if entry.get("name") == "search_docs" and entry.get("ok"):
            for m in _SEARCHED.finditer(entry.get("output", "")):
                found[f"S{m[1]}"] = {"source": m[2], "position": int(m[3]), "text": m[4].strip(), "score": 0.0}
    return found
