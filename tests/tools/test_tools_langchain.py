"""LangChain BaseTools plug into the registry and run through the broker like any tool."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from langchain_core.tools import tool as lc_tool
from pydantic import BaseModel, Field

from agent.config import ToolSettings
from agent.errors import ConfigError
from agent.services import make_registry
from agent.types import ToolCall, ToolResult
from tools import Broker, ToolRegistry
from tools.langchain_tools import LangChainTool, langchain_tool
from tools.registry import tool_source


@lc_tool
def multiply(a: int, b: int = 2) -> int:
    """Multiply two integers."""
    return a * b


@lc_tool
def refuse(reason: str) -> str:
    """A tool that raises ToolException."""
    raise ToolException(f"refused: {reason}")


@lc_tool
def crash(reason: str) -> str:
    """A tool with a bug."""
    raise ValueError(f"bad value {reason}")


class SearchArgs(BaseModel):
    query: str = Field(description="what to look for")
    limit: int = Field(3, ge=1, le=10)


class Search(BaseTool):
    """A BaseTool subclass with a pydantic args_schema."""

    name: str = "search"
    description: str = "Search the notes."
    args_schema: type[BaseModel] = SearchArgs

    def _run(self, query: str, limit: int = 3) -> list[str]:
        return [f"{query}-{i}" for i in range(limit)]


async def _fetch(url: str) -> str:
    await asyncio.sleep(0)
    return f"fetched {url}"


async def _sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


fetch = StructuredTool.from_function(coroutine=_fetch, name="fetch", description="Fetch a URL (async only).")
sleepy = StructuredTool.from_function(coroutine=_sleep, name="sleepy", description="Sleep (async only).")
json_schema_tool = StructuredTool.from_function(
    func=lambda **kw: f"got {sorted(kw.items())}", name="dict_schema", description="A tool with a dict schema.",
    args_schema={"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                 "required": ["city"]},
)


def call(broker: Broker, name: str, arguments: dict[str, Any]) -> ToolResult:
    return broker.call(ToolCall("c1", name, arguments))


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    registry = ToolRegistry([multiply, refuse, crash, Search(), fetch, json_schema_tool,
                             langchain_tool(sleepy, timeout_s=0.5)])
    return Broker(registry, ToolSettings(), tmp_path / "workspace")


def test_langchain_tools_are_wrapped_with_their_schema(broker: Broker) -> None:
    registry = broker.registry
    assert registry.names() == ["multiply", "refuse", "crash", "search", "fetch", "dict_schema", "sleepy"]
    found = registry.get("multiply")
    assert isinstance(found, LangChainTool) and tool_source(found) == "langchain"
    spec = found.spec()
    assert spec.description == "Multiply two integers."
    assert spec.parameters["properties"] == {"a": {"type": "integer"}, "b": {"default": 2, "type": "integer"}}
    assert spec.parameters["required"] == ["a"]
    search = registry.get("search")
    assert search is not None
    assert search.spec().parameters["properties"]["query"] == {"description": "what to look for", "type": "string"}


def test_calls_run_through_the_broker(broker: Broker) -> None:
    assert call(broker, "multiply", {"a": 6, "b": 7}).output == "42"
    assert call(broker, "multiply", {"a": 6}).output == "12"
    assert call(broker, "search", {"query": "q", "limit": 2}).output == '["q-0", "q-1"]'
    assert call(broker, "dict_schema", {"city": "Oslo"}).output == "got [('city', 'Oslo')]"


def test_bad_arguments_are_results_not_exceptions(broker: Broker) -> None:
    wrong_type = call(broker, "multiply", {"a": "six"})
    assert not wrong_type.ok and "'a'" in str(wrong_type.error) and "Expected arguments: a (integer" in str(
        wrong_type.error)
    unknown = call(broker, "multiply", {"a": 1, "c": 3})
    assert not unknown.ok and "'c' is not an argument of this tool" in str(unknown.error)
    out_of_range = call(broker, "search", {"query": "q", "limit": 50})
    assert not out_of_range.ok and "limit" in str(out_of_range.error)
    schema = call(broker, "dict_schema", {"days": "three"})
    assert not schema.ok and "'city' is a required property" in str(schema.error)
    assert "'three' is not of type 'integer'" in str(schema.error)


def test_what_a_tool_raises_reaches_the_model_as_an_error(broker: Broker) -> None:
    refused = call(broker, "refuse", {"reason": "policy"})
    assert not refused.ok and refused.error == "refused: policy"
    crashed = call(broker, "crash", {"reason": "x"})
    assert not crashed.ok and crashed.error == "ValueError: bad value x"


def test_async_only_tools_run_and_time_out(broker: Broker) -> None:
    assert call(broker, "fetch", {"url": "http://example.test"}).output == "fetched http://example.test"
    slow = call(broker, "sleepy", {"seconds": 5})
    assert not slow.ok and "timed out" in str(slow.error)


def test_async_only_tool_called_from_a_running_loop(tmp_path: Path) -> None:
    """A Tool's run() called directly inside an event loop still works (a helper thread runs the loop)."""
    from tools.base import ToolContext

    wrapped = LangChainTool(fetch)

    async def inside() -> str:
        return wrapped.run(wrapped.args_model.model_validate({"url": "u"}), ToolContext(workspace=tmp_path))

    assert asyncio.run(inside()) == "fetched u"


def test_policy_options_and_their_errors() -> None:
    wrapped = langchain_tool(multiply, approval="always", timeout_s=3)
    assert wrapped.policy.approval == "always" and wrapped.policy.timeout_s == 3
    with pytest.raises(ConfigError, match="unknown tool option"):
        langchain_tool(multiply, aproval="always")
    with pytest.raises(ConfigError, match="takes a langchain_core BaseTool"):
        langchain_tool(lambda: None)


def test_hostile_names_descriptions_and_outputs_are_cleaned(tmp_path: Path) -> None:
    hidden = "\u200b\u202e\x1b[31m\x07"

    def sneaky(text: str) -> str:
        return "ok" + hidden + text

    tool = StructuredTool.from_function(func=sneaky, name="sne" + hidden + "aky.tool" + "x" * 100,
                                        description=("Harmless." + hidden + " ") * 500)
    broker = Broker(ToolRegistry([tool]), ToolSettings(), tmp_path)
    (found,) = list(broker.registry)
    assert found.name == "sneaky_tool" + "x" * 53
    assert len(found.description) <= 1024
    assert all(unicodedata.category(c) not in ("Cc", "Cf") for c in found.description)
    assert call(broker, found.name, {"text": "!"}).output == "ok!"


def test_agent_tools_accept_langchain_tools_through_make_registry() -> None:
    registry = make_registry([multiply, Search()])
    assert "multiply" in registry and "search" in registry and "calculator" in registry
    with pytest.raises(ConfigError, match="already registered"):
        make_registry([multiply, multiply])
