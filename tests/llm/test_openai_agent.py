"""The whole runtime against a remote model: an Agent built from settings with [model] backend = "openai", talking
to the fake OpenAI-compatible server on 127.0.0.1 (tests/llm/openai_server.py); and `metagent doctor`'s rows."""

from __future__ import annotations

import socket
import time
from typing import Any

from agent.api import Agent
from agent.config import Settings
from agent.doctor import report
from agent.llm import OpenAICompatLLM
from tests.llm.openai_server import Answer, FakeOpenAI


def remote(settings: Settings, url: str, **model: Any) -> Settings:
    fields = {"backend": "openai", "base_url": url, "name": "served-model", "max_retries": 0, **model}
    return settings.model_copy(update={"model": settings.model.model_copy(update=fields)})


def test_agent_answers_through_a_remote_server(settings: Settings) -> None:
    from memory import MiniLMEmbedder

    script = [Answer(calls=(("calculator", '{"expression": "17*23"}'),)), Answer("17 * 23 = 391.")]
    with FakeOpenAI(script) as server:
        with Agent(remote(settings, server.url), embedder=MiniLMEmbedder()) as agent:
            assert isinstance(agent.services.llm, OpenAICompatLLM)
            result = agent.invoke("What is 17*23?", kind="tool")
        first, second = server.bodies
    assert result.status == "done" and result.answer == "17 * 23 = 391."
    assert [(c["name"], c["output"], c["ok"]) for c in result.tool_calls] == [("calculator", "391", True)]
    assert first["model"] == second["model"] == "served-model" and first["stream"] is True
    assert first["tool_choice"] == "required" and "calculator" in [t["function"]["name"] for t in first["tools"]]
    call, answer = second["messages"][-2:]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "calculator"
    assert answer["role"] == "tool" and answer["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "391" in answer["content"]
    assert result.usage["prompt_tokens"] == 14 and result.usage["completion_tokens"] == 6


def test_doctor_shows_the_backend_and_whether_the_server_answers(settings: Settings) -> None:
    with FakeOpenAI(models=("served-model",)) as server:
        rows = report(remote(settings, server.url))
    assert rows["model backend"] == f"openai-compatible server at {server.url}"
    assert rows["model"] == "served-model" and rows["model server"] == "answers; serves served-model"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    rows = report(remote(settings, f"http://127.0.0.1:{port}/v1"))
    assert rows["model server"].startswith("no answer from") and time.monotonic() - started < 10
    assert report(settings)["model backend"].startswith("transformers")
