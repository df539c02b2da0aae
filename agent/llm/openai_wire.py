"""The OpenAI chat-completions wire format: an LLMRequest as a request body, the server's answer as an LLMReply.

Pure data mapping, no I/O (`openai_compat.OpenAICompatLLM` sends the bodies). What maps to what:

    messages      our history keeps tool calls as Hermes blocks in the assistant text and results as
                  role="tool" messages "[name] output" (graphs/prompts.py). An assistant turn with blocks becomes
                  `tool_calls` with ids "call_<turn>_<n>", and the tool messages right after it answer those ids
                  in order (`tool_call_id`). A tool message with no call left to answer (the error notes the
                  graph adds after an unreadable reply) becomes a user message "Tool result:\\n...", and calls no
                  result answers stay in the assistant text: OpenAI's own API refuses both.
    tools         `tools` as JSON-schema functions. tool_choice "auto"/"required" are sent as such; "none" sends
                  no tools at all (Ollama and llama.cpp ignore tool_choice, so withholding the tools is the
                  portable way to forbid calls).
    constraint    json_schema -> `response_format: {"type": "json_schema", ...}`, the one structured-output
                  parameter vLLM, SGLang, llama.cpp, Ollama and OpenAI all read (vLLM's `guided_json` /
                  `guided_choice` are vLLM-only and OpenAI refuses unknown keys). choices -> the same, with the
                  schema {"choice": enum}, strict so OpenAI accepts it too; the reply's content is the chosen
                  string. A server that ignores response_format returns free text, kept as the content.
    replies       `tool_calls` -> ToolCall with the arguments JSON parsed; unreadable arguments go to
                  `parse_errors` (the graph shows them to the model, as for the local engine's unconstrained
                  calls), never raise. A server without a tool parser returns the model's Hermes blocks as text:
                  those are parsed as calls too. `text` is the content followed by the calls as Hermes blocks, so
                  history reads the same whatever the backend; streamed deltas carry the content only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import LLMError
from agent.llm.toolformat import CALL_CLOSE, CALL_OPEN, format_call, parse_reply
from agent.types import Constraint, LLMReply, LLMRequest, Message, ToolCall, ToolSpec, Usage

RESULT_PREFIX = "Tool result:\n"
CHOICE_KEY = "choice"


def request_body(request: LLMRequest, model: str, stream: bool) -> dict[str, Any]:
    """The JSON body of POST /chat/completions for one request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": wire_messages(request.messages),
        "max_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.tools and request.tool_choice != "none":
        body["tools"] = [tool_dict(spec) for spec in request.tools]
        body["tool_choice"] = request.tool_choice
    if request.constraint is not None:
        wanted = response_format(request.constraint)
        if wanted is not None:
            body["response_format"] = wanted
    return body


def tool_dict(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters}}


def response_format(constraint: Constraint) -> dict[str, Any] | None:
    if constraint.json_schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": constraint.json_schema}}
    if constraint.choices is None:
        return None
    if not constraint.choices:
        raise LLMError("a choice constraint needs at least one choice")
    schema = {"type": "object", "properties": {CHOICE_KEY: {"type": "string", "enum": list(constraint.choices)}},
              "required": [CHOICE_KEY], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "choice", "strict": True, "schema": schema}}


def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Our messages in the OpenAI format (see the module docstring)."""
    out: list[dict[str, Any]] = []
    ids: list[str] = []  # calls of the last assistant turn not answered yet
    for turn, message in enumerate(messages):
        if message.role == "assistant":
            wire, ids = _assistant(message.content, turn, _results_after(messages, turn))
            out.append(wire)
        elif message.role == "tool" and ids:
            out.append({"role": "tool", "tool_call_id": ids.pop(0), "content": message.content})
        elif message.role == "tool":
            out.append({"role": "user", "content": RESULT_PREFIX + message.content})
        else:
            ids = []
            out.append(message.to_dict())
    return out


def _results_after(messages: Sequence[Message], turn: int) -> int:
    count = 0
    for message in messages[turn + 1:]:
        if message.role != "tool":
            break
        count += 1
    return count


def _assistant(content: str, turn: int, answered: int) -> tuple[dict[str, Any], list[str]]:
    parsed = parse_reply(content, ())
    calls = parsed.tool_calls[:answered]
    if not calls:
        return {"role": "assistant", "content": content}, []
    ids = [f"call_{turn}_{n}" for n in range(len(calls))]
    wire_calls = [{"id": i, "type": "function",
                   "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                  for i, c in zip(ids, calls, strict=True)]
    # Content "" rather than null: some chat templates print a null content as "None".
    return {"role": "assistant", "content": parsed.content, "tool_calls": wire_calls}, ids


@dataclass
class RawCall:
    """A tool call as the server sent it (streamed ones are assembled piece by piece)."""

    id: str = ""
    name: str = ""
    arguments: str = ""


def build_reply(content: str, raw_calls: Sequence[RawCall], finish_reason: str | None, usage: Usage,
                request: LLMRequest) -> LLMReply:
    """The LLMReply for what the server returned (see the module docstring)."""
    offered = bool(request.tools) and request.tool_choice != "none"
    if not raw_calls and offered and CALL_OPEN in content:
        return parse_reply(content, [t.name for t in request.tools], usage, finish_reason or "stop")
    calls: list[ToolCall] = []
    errors: list[str] = []
    blocks: list[str] = []
    for raw in raw_calls:
        call, error = read_call(raw)
        if call is not None:
            calls.append(call)
            blocks.append(format_call(call.name, call.arguments))
        else:
            cut = " (the reply was cut off: max_new_tokens ran out)" if finish_reason == "length" else ""
            errors.append(error + cut)
            body = f'{{"name": {json.dumps(raw.name)}, "arguments": {raw.arguments}}}'
            blocks.append(f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
    text = "\n".join([content.rstrip(), *blocks] if content.strip() else blocks) if blocks else content
    reason: Literal["stop", "length", "tool_calls"] = (
        "tool_calls" if calls else ("length" if finish_reason == "length" else "stop"))
    return LLMReply(text=text, content=_answer(content, request.constraint), tool_calls=tuple(calls),
                    usage=usage, finish_reason=reason, parse_errors=tuple(errors))


def read_call(raw: RawCall) -> tuple[ToolCall | None, str]:
    """The call, or None and the error the model will be shown."""
    if not raw.name:
        return None, f"a tool call without a function name (arguments {raw.arguments[:200]!r})"
    arguments: Any = {}
    if raw.arguments.strip():
        try:
            arguments = json.loads(raw.arguments)
            if isinstance(arguments, str):  # some models double-encode arguments
                arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            return None, (f"arguments of {raw.name!r} are not valid JSON ({e.msg} at position {e.pos}): "
                          f"{raw.arguments[:200]!r}")
    if not isinstance(arguments, dict):
        return None, f"arguments of {raw.name!r} must be a JSON object, got {raw.arguments[:200]!r}"
    return ToolCall(id=raw.id or f"call_{uuid.uuid4().hex[:10]}", name=raw.name, arguments=arguments), ""


def _answer(content: str, constraint: Constraint | None) -> str:
    """The reply's content; under a choice constraint the chosen string out of {"choice": ...}."""
    text = content.strip()
    if constraint is None or constraint.choices is None:
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text  # a server that ignored response_format: the caller matches the text itself
    chosen = data.get(CHOICE_KEY) if isinstance(data, dict) else data
    return chosen if isinstance(chosen, str) else text


def read_usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    counts = [data.get("prompt_tokens"), data.get("completion_tokens")]
    prompt, completion = (n if isinstance(n, int) and n >= 0 else 0 for n in counts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def reply_from_body(data: Any, request: LLMRequest) -> LLMReply:
    """The LLMReply of a non-streamed chat.completion body."""
    choice = first_choice(data)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise LLMError(f"the model server's reply has no message: {json.dumps(data)[:300]}")
    raws = [_raw_call(c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    content = message.get("content")
    reason = choice.get("finish_reason")
    return build_reply(content if isinstance(content, str) else "", raws, str(reason) if reason else None,
                       read_usage(_obj(data).get("usage")), request)


def first_choice(data: Any) -> dict[str, Any]:
    error = _obj(data).get("error")
    if isinstance(error, dict):
        raise LLMError(f"the model server reported an error: {str(error.get('message'))[:300]}")
    choices = _obj(data).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(f"the model server's reply has no choices: {json.dumps(data)[:300]}")
    return choices[0]


def _raw_call(call: dict[str, Any]) -> RawCall:
    function = _obj(call.get("function"))
    arguments = function.get("arguments")
    return RawCall(id=str(call.get("id") or ""), name=str(function.get("name") or ""),
                   arguments=arguments if isinstance(arguments, str) else json.dumps(arguments or {}))


class StreamAssembler:
    """Puts a streamed reply together from its `chat.completion.chunk`s: text pieces, tool-call pieces by
    index (id and name in the first piece, arguments concatenated), the finish reason and, last, the usage."""

    def __init__(self, request: LLMRequest) -> None:
        self.request = request
        self.parts: list[str] = []
        self.calls: dict[int, RawCall] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()

    def feed(self, chunk: Any) -> str:
        """Take one chunk; returns its text (empty for tool-call pieces and bookkeeping chunks)."""
        if not isinstance(chunk, dict):
            raise LLMError(f"the model server streamed a chunk that is not a JSON object: {str(chunk)[:200]}")
        if isinstance(chunk.get("error"), dict):
            raise LLMError(f"the model server reported an error mid-stream: {str(chunk['error'].get('message'))[:300]}")
        if chunk.get("usage"):
            self.usage = read_usage(chunk["usage"])
        text = ""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _obj(choice.get("delta"))
            piece = delta.get("content")
            text += piece if isinstance(piece, str) else ""
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    self._add_call(call, position)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        self.parts.append(text)
        return text

    def _add_call(self, call: dict[str, Any], position: int) -> None:
        index = call.get("index")
        raw = self.calls.setdefault(index if isinstance(index, int) else position, RawCall())
        function = _obj(call.get("function"))
        raw.id = raw.id or str(call.get("id") or "")
        raw.name = raw.name or str(function.get("name") or "")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            raw.arguments += arguments
        elif isinstance(arguments, dict):  # a server that sends the whole object at once
            raw.arguments = json.dumps(arguments)

    def reply(self) -> LLMReply:
        calls = [self.calls[i] for i in sorted(self.calls)]
        return build_reply("".join(self.parts), calls, self.finish_reason, self.usage, self.request)


def _obj(value: Any) -> dict[str, Any]:
    """The value when it is a JSON object, else an empty one: server replies are read defensively."""
    return value if isinstance(value, dict) else {}
