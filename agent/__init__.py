"""metagent: a local-first agent runtime.

    from agent import Agent, tool

Heavy modules (torch, transformers, chromadb, langgraph) load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, ConfigError, GuardBlocked, LLMError, ModelLoadError, StoreLockedError

if TYPE_CHECKING:
    from agent.api import Agent
    from agent.config import Settings
    from agent.result import Result
    from tools import tool

__all__ = [
    "Agent", "AgentError", "ConfigError", "GuardBlocked", "LLMError", "ModelLoadError", "Result", "Settings",
    "StoreLockedError", "tool",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from agent.api import Agent

        return Agent
    if name == "tool":
        from tools import tool

        return tool
    if name == "Settings":
        from agent.config import Settings

        return Settings
    if name == "Result":
        from agent.result import Result

        return Result
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
