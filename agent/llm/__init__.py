"""The LLM engines. `TransformersLLM` (torch) and `OpenAICompatLLM` (httpx, a remote server) are imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.llm.scripted import ScriptedLLM
from agent.llm.toolformat import format_call, parse_reply

if TYPE_CHECKING:
    from agent.llm.engine import TransformersLLM
    from agent.llm.openai_compat import OpenAICompatLLM

__all__ = ["OpenAICompatLLM", "ScriptedLLM", "TransformersLLM", "format_call", "parse_reply"]


def __getattr__(name: str) -> Any:
    if name == "TransformersLLM":
        from agent.llm.engine import TransformersLLM

        return TransformersLLM
    if name == "OpenAICompatLLM":
        from agent.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM
    raise AttributeError(name)
