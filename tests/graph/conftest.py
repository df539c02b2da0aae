"""Fixtures for end-to-end graph tests: a real Agent (real classifier, broker, guards, Chroma) around a
ScriptedLLM, in a fresh data directory per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api import Agent
from agent.config import Settings
from agent.llm import ScriptedLLM


@pytest.fixture(scope="session")
def embedder() -> Any:
    from memory import MiniLMEmbedder

    return MiniLMEmbedder()


MakeAgent = Callable[..., Agent]
PROJECT_EXAMPLES = ["set up the project files", "organise my notes into folders", "prepare the weekly report",
                    "migrate the config files", "clean up the build outputs"]


@pytest.fixture
def make_agent(settings: Settings, embedder: Any) -> Iterator[MakeAgent]:
    agents: list[Agent] = []

    def make(llm: ScriptedLLM, tools: tuple[Any, ...] = (), **overrides: Any) -> Agent:
        s = settings
        for section, values in overrides.items():
            s = s.model_copy(update={section: getattr(s, section).model_copy(update=values)})
        agent = Agent(s, llm=llm, tools=tools, embedder=embedder)
        agents.append(agent)
        # A taught kind that plans and may use every tool: the route most tests exercise.
        agent.services.classifier.teach("project", PROJECT_EXAMPLES, description="multi-step work with tools",
                                        plan=True, tools=True, require_tool=True, retrieve=False)
        return agent

    yield make
    for a in agents:
        a.close()


@pytest.fixture
def workspace(settings: Settings) -> Path:
    return settings.workspace_dir
