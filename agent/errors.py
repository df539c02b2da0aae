"""Errors, split by who must act.

    AgentError                      root of everything metagent raises on purpose
    ├── ConfigError                 the developer or user must fix settings, paths or registrations
    │   └── ModelLoadError          a model path is missing, corrupt or unreadable
    ├── StoreLockedError            another process owns the data directory's vector store
    ├── GuardBlocked                a guardrail blocked the run; carries its Verdict
    ├── BudgetExceeded              the step budget ran out (reported in the answer, not raised to users)
    └── LLMError                    the engine failed on a request (too long for the context, unknown adapter...)
        └── ScriptExhausted         ScriptedLLM was asked for a reply it does not have

Tool and model mistakes (unknown tool, invalid arguments, a tool that raised or timed out) are not
exceptions at all: the broker turns them into observations the model sees and can correct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.types import Verdict


class AgentError(Exception):
    """Root of every error metagent raises on purpose."""


class ConfigError(AgentError):
    """Bad settings, paths or registrations: fix the configuration and try again."""


class ModelLoadError(ConfigError):
    """A model could not be loaded from the path or id given."""


class StoreLockedError(AgentError):
    """Another process owns the vector store in this data directory."""


class GuardBlocked(AgentError):
    """A guardrail blocked the run."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"{verdict.checkpoint} guard blocked: {verdict.reason}")
        self.verdict = verdict


class BudgetExceeded(AgentError):
    """The run used its whole step budget."""


class LLMError(AgentError):
    """The engine could not serve a request."""


class ScriptExhausted(LLMError):
    """ScriptedLLM has no reply left for a purpose."""
