"""The tool-call wire format: how tools are described to a model and how its calls are read back.

A call is a Hermes-style block, the format Qwen2.5, Hermes and many other open models are trained on:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2 + 2"}}
    </tool_call>

A reply holds one or more blocks (calls) or plain text (a final answer). With constrained decoding on, the
engine's grammar admits nothing else, so `parse_reply` never finds an invalid call; with it off (or with
ScriptedLLM's raw text) the parser reports unreadable calls as `parse_errors` for the model to correct.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from agent.types import LLMReply, Message, ToolCall, ToolChoice, ToolSpec, Usage

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.DOTALL)


def render_tools(tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto") -> str:
    """The system-prompt section that tells a model without a native tool template how to call tools."""
    lines = [
        "You can call tools. To call one, reply with exactly this and nothing else:",
        CALL_OPEN,
        '{"name": "<tool name>", "arguments": {<arguments as JSON>}}',
        CALL_CLOSE,
        "You may write several such blocks to call several tools at once.",
    ]
    if tool_choice == "required":
        lines.append("You must call at least one tool now.")
    else:
        lines.append("When you can answer without a tool, answer in plain text instead.")
    lines.append("Tools:")
    for spec in tools:
        schema = json.dumps(spec.parameters, separators=(",", ":"))
        lines.append(f"- {spec.name}: {spec.description.strip()} Arguments schema: {schema}")
    return "\n".join(lines)


def with_tools(messages: Sequence[Message], tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> list[Message]:
    """Messages with the tools section appended to the system message (one is added when absent)."""
    if not tools or tool_choice == "none":
        return list(messages)
    section = render_tools(tools, tool_choice)
    out = list(messages)
    if out and out[0].role == "system":
        out[0] = Message("system", f"{out[0].content}\n\n{section}")
    else:
        out.insert(0, Message("system", section))
    return out


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """One call block, exactly as a model should write it (used by ScriptedLLM scripts and exemplars)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def parse_reply(text: str, tool_names: Sequence[str], usage: Usage | None = None,
                finish_reason: str = "stop") -> LLMReply:
    """Split raw model text into a final answer or tool calls.

    Calls to names not in `tool_names` or with unreadable JSON go to `parse_errors`, never raise.
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    known = set(tool_names)
    for match in _BLOCK.finditer(text):
        body = match.group(1).strip()
        try:
            data = json.loads(body)
        except json.JSONDecodeError as e:
            errors.append(f"tool call is not valid JSON ({e.msg} at position {e.pos}): {body[:200]!r}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            errors.append(f'tool call must be an object with "name" and "arguments": {body[:200]!r}')
            continue
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models double-encode arguments
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            errors.append(f"arguments of {data['name']!r} must be a JSON object, got {arguments!r}"[:300])
            continue
        if known and data["name"] not in known:
            # Kept as a call: the broker answers "unknown tool" with the list of real ones.
            pass
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:10]}", name=data["name"], arguments=arguments))
    content = _BLOCK.sub("", text).strip() if (calls or errors) else text.strip()
    reason = "tool_calls" if calls else ("length" if finish_reason == "length" else "stop")
    return LLMReply(
        text=text,
        content=content,
        tool_calls=tuple(calls),
        usage=usage or Usage(),
        finish_reason=reason,  # type: ignore[arg-type]
        parse_errors=tuple(errors),
    )
