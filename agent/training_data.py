"""Training files for `metagent adapters train`: read, validate, split. No torch here.

Two formats, one JSON object per line (blank lines are skipped):

    chat (--data):  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...],
                     "tools": [...]}                                  (tools optional)
    dpo (--dpo):    {"prompt": [{"role": ..., "content": ...}, ...] or "text",
                     "chosen": "...", "rejected": "...", "kind": "..." or null}

A chat row needs at least one assistant turn; every assistant turn is trained on, the last one is what the
held-out metrics generate. An assistant turn may give OpenAI-style `tool_calls` instead of (or besides)
`content`; they become the engine's <tool_call> blocks. Tools are OpenAI function specs
({"type": "function", "function": {...}}) or bare {"name", "description", "parameters"}; they are put into
the prompt by the engine's own code (TransformersLLM.render_prompt), exactly as at inference.

The dpo format is what `metagent memory export --format dpo` writes. Any bad row is a ConfigError naming
the file and the line, raised before anything is trained.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.errors import ConfigError
from agent.llm.toolformat import format_call
from agent.types import Message, Role, ToolSpec

ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
T = TypeVar("T")
MIN_SPLIT_ROWS = 5  # one held out, four to train on: the least that makes a before/after number


@dataclass(frozen=True)
class ChatExample:
    """One training conversation: `messages` end with the assistant turn the held-out metrics generate."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    line: int = 0  # in the training file, for error messages; 0 = not from a file

    @property
    def target(self) -> str:
        """The final assistant turn's text."""
        return self.messages[self._last_assistant()].content

    @property
    def prompt(self) -> tuple[Message, ...]:
        """The messages before the final assistant turn: what the model sees when it generates the target."""
        return self.messages[: self._last_assistant()]

    def _last_assistant(self) -> int:
        return max(i for i, m in enumerate(self.messages) if m.role == "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO row: for `prompt`, `chosen` is the better reply and `rejected` the worse."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    kind: str | None = None
    line: int = 0


def load_chat_examples(path: Path) -> list[ChatExample]:
    """Every row of a chat training file, or a ConfigError naming the first bad line."""
    return [_chat_row(data, path, line) for line, data in _rows(path)]


def load_preference_pairs(path: Path) -> list[PreferencePair]:
    """Every row of a DPO training file, or a ConfigError naming the first bad line."""
    return [_preference_row(data, path, line) for line, data in _rows(path)]


def split_held_out(items: Sequence[T], fraction: float, seed: int, where: Path | str) -> tuple[list[T], list[T]]:
    """(train, held_out): a seeded shuffle, `fraction` of the rows held out (at least one when fraction > 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--holdout must be at least 0 and below 1, got {fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = 0 if fraction == 0 else max(1, round(len(items) * fraction))
    if fraction > 0 and (len(items) < MIN_SPLIT_ROWS or held >= len(items)):
        raise ConfigError(
            f"{where} has {len(items)} row(s): too few for a held-out split of {fraction} (at least "
            f"{MIN_SPLIT_ROWS} rows and one left to train on; better dozens): add rows, or pass --holdout 0 to "
            "train on all of them without a held-out metric"
        )
    return [items[i] for i in order[held:]], [items[i] for i in sorted(order[:held])]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"training file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read training file {path} (it must be UTF-8 JSON lines): {e}") from e
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}): {line[:120]!r}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:{number}: each line must be a JSON object, got {type(data).__name__}")
        rows.append((number, data))
    if not rows:
        raise ConfigError(f"training file {path} has no rows (one JSON object per line)")
    return rows


def _chat_row(data: dict[str, Any], path: Path, line: int) -> ChatExample:
    where = f"{path}:{line}"
    messages = _messages(data.get("messages"), where, "messages")
    if not any(m.role == "assistant" for m in messages):
        raise ConfigError(f"{where}: no assistant turn: each row needs at least one message with role "
                          "'assistant' (the reply to learn)")
    if messages[-1].role != "assistant":
        # The turns after the last reply would never be trained on: most likely a mistake in the file.
        raise ConfigError(f"{where}: the last message must be the assistant's reply, not {messages[-1].role!r}")
    return ChatExample(messages, _tools(data.get("tools", []), where), line)


def _preference_row(data: dict[str, Any], path: Path, line: int) -> PreferencePair:
    where = f"{path}:{line}"
    prompt = data.get("prompt")
    messages = (Message("user", prompt),) if isinstance(prompt, str) and prompt.strip() else \
        _messages(prompt, where, "prompt")
    if messages[-1].role == "assistant":
        raise ConfigError(f"{where}: the prompt must end before the reply (its last message is the assistant's)")
    replies = [data.get(key) for key in ("chosen", "rejected")]
    for key, reply in zip(("chosen", "rejected"), replies, strict=True):
        if not isinstance(reply, str) or not reply.strip():
            raise ConfigError(f'{where}: "{key}" must be a non-empty string, got {reply!r}'[:300])
    if replies[0] == replies[1]:
        raise ConfigError(f'{where}: "chosen" and "rejected" are the same text: nothing to prefer')
    kind = data.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ConfigError(f'{where}: "kind" must be a string or null, got {kind!r}')
    return PreferencePair(messages, cast(str, replies[0]), cast(str, replies[1]), kind, line)


def _messages(value: Any, where: str, key: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f'{where}: "{key}" must be a non-empty list of {{"role", "content"}} objects, '
                          f"got {value!r}"[:300])
    return tuple(_message(item, f"{where}: {key}[{i}]") for i, item in enumerate(value))


def _message(item: Any, where: str) -> Message:
    if not isinstance(item, dict):
        raise ConfigError(f'{where} must be an object with "role" and "content", got {item!r}'[:300])
    role = item.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
    content = item.get("content")
    calls = item.get("tool_calls")
    if role == "assistant" and calls:
        content = _with_calls(content, calls, where)
    if not isinstance(content, str) or (role == "assistant" and not content.strip()):
        raise ConfigError(f'{where}: "content" must be a string (non-empty for the assistant), got {content!r}'
                          [:300])
    return Message(cast(Role, role), content)


def _with_calls(content: Any, calls: Any, where: str) -> str:
    if not isinstance(calls, list):
        raise ConfigError(f'{where}: "tool_calls" must be a list, got {calls!r}'[:300])
    blocks = [] if not content else [str(content)]
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise ConfigError(f'{where}: each tool call needs a "name" and "arguments" (a JSON object), got '
                              f"{call!r}"[:300])
        blocks.append(format_call(name, arguments))
    return "\n".join(blocks)


def _tools(value: Any, where: str) -> tuple[ToolSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f'{where}: "tools" must be a list of function specs, got {value!r}'[:300])
    specs = []
    for i, item in enumerate(value):
        spec = item.get("function", item) if isinstance(item, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(name, str) or not name:
            raise ConfigError(f'{where}: tools[{i}] needs a "name" (and "description", "parameters"), got '
                              f"{item!r}"[:300])
        parameters = spec.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ConfigError(f"{where}: tools[{i}] ({name}): parameters must be a JSON schema object")
        specs.append(ToolSpec(name, str(spec.get("description", "")), parameters))
    return tuple(specs)
