"""Plain data shared by every package: messages, LLM requests and replies, tool calls, verdicts, passages.

Frozen dataclasses inside the process; pydantic only at the boundaries (settings, tool arguments, persisted
records). Everything here is JSON-friendly through `to_dict()` so graph state can be checkpointed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Purpose = Literal["classify", "plan", "act", "answer", "other"]
ToolChoice = Literal["auto", "required", "none"]
Action = Literal["allow", "redact", "ask", "block"]
Checkpoint = Literal["input", "plan", "tool_call", "tool_result", "retrieval", "output"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about a tool: its name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Constraint:
    """An output constraint for one request: a JSON schema, or a choice among fixed strings."""

    json_schema: dict[str, Any] | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LLMRequest:
    """One call to the model.

    `purpose` keys ScriptedLLM's scripts and shows up in traces. With `tools` offered the engine decodes
    under a grammar that admits either a final answer (tool_choice="auto") or one or more valid calls;
    tool_choice="required" admits calls only, "none" admits text only.
    """

    purpose: Purpose
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    constraint: Constraint | None = None
    adapter: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True)
class LLMReply:
    """What the model produced: the raw text, and its parse into an answer or tool calls."""

    text: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"
    # Calls the parser found but could not read (only possible with constrained decoding off): the model
    # sees these as errors and can correct itself.
    parse_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class LLMDelta:
    """A piece of streamed text. A stream yields deltas, then exactly one LLMReply."""

    text: str


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    ok: bool
    output: str
    error: str | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """A guardrail decision at one checkpoint. `text` is the (possibly redacted) text to use downstream."""

    checkpoint: Checkpoint
    action: Action
    reason: str
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk of an ingested document."""

    text: str
    source: str
    position: int  # chunk index within the source
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Episode:
    """One finished run, as recorded in episodic memory."""

    id: str
    user_id: str
    request: str
    task_kind: str
    adapter: str | None
    plan: str
    tool_calls: tuple[dict[str, Any], ...]
    answer: str
    outcome: Literal["success", "failure", "blocked", "budget"]
    created_at: float
    feedback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
