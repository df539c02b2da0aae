"""The LLM engine. `TransformersLLM` is imported lazily (it pulls in torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.llm.scripted import ScriptedLLM
from agent.llm.toolformat import format_call, parse_reply

if TYPE_CHECKING:
    from agent.llm.engine import TransformersLLM

__all__ = ["ScriptedLLM", "TransformersLLM", "format_call", "parse_reply"]


def __getattr__(name: str) -> Any:
    if name == "TransformersLLM":
        from agent.llm.engine import TransformersLLM

        return TransformersLLM
    raise AttributeError(name)
