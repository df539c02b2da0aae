"""Deps: the services a run needs, passed to the graph as its `context` (frozen: nodes never swap them).

The graph depends on small structural types, not on concrete classes, so tests can wire real services
with a ScriptedLLM and anything else that fits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.config import Settings
from agent.protocols import LLM, EpisodicMemory, Retriever
from agent.types import ToolCall, ToolResult, ToolSpec, Verdict


class KindInfo(Protocol):
    """How a task kind is routed (read-only: kinds are frozen records)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def retrieve(self) -> bool: ...
    @property
    def plan(self) -> bool: ...
    @property
    def tools(self) -> bool | Sequence[str]: ...
    @property
    def require_tool(self) -> bool: ...


def offered_tools(kind: KindInfo, specs: Sequence[ToolSpec]) -> list[ToolSpec]:
    if kind.tools is True:
        return list(specs)
    if not kind.tools:
        return []
    wanted = set(kind.tools)
    return [s for s in specs if s.name in wanted]


class ClassificationInfo(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def method(self) -> str: ...


class Classifier(Protocol):
    def classify(self, text: str) -> ClassificationInfo: ...

    def kind(self, name: str) -> KindInfo: ...


class ToolBroker(Protocol):
    def specs(self) -> list[ToolSpec]: ...

    def validate(self, call: ToolCall) -> ToolResult | None: ...

    def needs_approval(self, call: ToolCall) -> bool: ...

    def call_many(self, calls: Sequence[ToolCall], user_id: str = "default") -> list[ToolResult]: ...


class ToolJournal(Protocol):
    """Runs approved calls at most once per idempotency key, across restarts (tools.journal.JournaledCalls):
    a key with a recorded result returns it; a key started but never finished is not run again unless the
    call is pure."""

    def call_many(self, calls: Sequence[ToolCall], keys: Sequence[str], user_id: str = "default"
                  ) -> list[ToolResult]: ...


class GuardSet(Protocol):
    def check_input(self, text: str) -> Verdict: ...

    def check_plan(self, plan: str, tool_names: Sequence[str]) -> Verdict: ...

    def check_tool_call(self, call: ToolCall, needs_approval: bool) -> Verdict: ...

    def check_tool_result(self, text: str) -> Verdict: ...

    def check_retrieved(self, text: str) -> Verdict: ...

    def check_output(self, text: str) -> Verdict: ...


class AdapterSelector(Protocol):
    def for_kind(self, kind: str) -> str | None: ...


@dataclass(frozen=True)
class Deps:
    settings: Settings
    llm: LLM
    classifier: Classifier
    broker: ToolBroker
    guards: GuardSet
    adapters: AdapterSelector | None = None
    retriever: Retriever | None = None
    episodes: EpisodicMemory | None = None
    # None: calls run straight through the broker and nothing remembers them (a run continued after a crash
    # in call_tools runs its calls again). The Agent always sets one.
    journal: ToolJournal | None = None
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex[:12])
