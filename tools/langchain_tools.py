"""LangChain tools as our Tools: any `langchain_core.tools.BaseTool` (`@langchain_core.tools.tool`,
`StructuredTool`, a `BaseTool` subclass) plugs in directly.

    from langchain_core.tools import tool as lc_tool

    @lc_tool
    def shout(text: str) -> str:
        '''Upper-case a text.'''
        return text.upper()

    Agent(tools=[shout])                                   # wrapped with the default policy
    Agent(tools=[langchain_tool(shout, approval="always")])  # or with policy options, as for @tool

The tool's name and description are cleaned like any foreign tool's (tools/foreign.py); its arguments are
validated by its own pydantic model (unknown arguments refused) or, for a JSON-schema or pydantic-v1
`args_schema`, against the JSON schema. Whatever the tool raises (ToolException included) reaches the model
as a ToolError; async-only tools run their coroutine in a fresh event loop, cancelled at the call's timeout.

What this does NOT do: sandbox the tool. A LangChain tool runs in the agent's process with its rights, like
a `@tool` function; the broker only bounds how long it is waited for and how much of its output is kept.
Set `approval` for tools with side effects (or list them in [tools] approval).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import ConfigError
from agent.types import ToolSpec
from tools.base import ToolContext, ToolError, ToolPolicy, spec_for, to_text
from tools.foreign import clean_description, clean_name, clean_output, clean_schema, json_args_model


def is_langchain_tool(obj: Any) -> bool:
    """Whether obj is a LangChain BaseTool (without importing LangChain when nothing has)."""
    module = sys.modules.get("langchain_core.tools")
    return module is not None and isinstance(obj, module.BaseTool)


def langchain_tool(lc_tool: Any, **options: Any) -> LangChainTool:
    """Wrap a LangChain BaseTool; `options` are ToolPolicy fields (approval, side_effects, timeout_s...)."""
    if not is_langchain_tool(lc_tool):
        raise ConfigError(f"langchain_tool() takes a langchain_core BaseTool, got {type(lc_tool).__name__}")
    return LangChainTool(lc_tool, ToolPolicy.from_options(f"LangChain tool {lc_tool.name!r}", options))


class LangChainTool:
    """A Tool that runs a LangChain BaseTool."""

    source = "langchain"

    def __init__(self, lc_tool: Any, policy: ToolPolicy | None = None) -> None:
        self.lc_tool = lc_tool
        self.name = clean_name(str(lc_tool.name))
        owner = f"LangChain tool {self.name!r}"
        self.description = clean_description(lc_tool.description, f"The LangChain tool {self.name}.")
        self.policy = policy or ToolPolicy()
        self.args_model = _args_model(lc_tool, self.name, owner)
        self._parameters = clean_schema(spec_for(self.name, self.description, self.args_model).parameters, owner)

    def __repr__(self) -> str:
        return f"<LangChain tool {self.name} ({type(self.lc_tool).__name__})>"

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self._parameters)

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        payload = args.model_dump(exclude_unset=True, by_alias=True)
        try:
            if _async_only(self.lc_tool):
                result = _run_coroutine(self.lc_tool.ainvoke(payload), ctx.timeout_s)
            else:
                result = self.lc_tool.invoke(payload)
        except ToolError:
            raise
        except ValidationError as e:
            raise ToolError(f"invalid arguments for {self.name}: {e.error_count()} error(s): {_first(e)}") from e
        except TimeoutError as e:
            raise ToolError(f"timed out after {ctx.timeout_s:g} s") from e
        except Exception as e:  # ToolException and the tool's own bugs: the model reads the message
            kind = "" if type(e).__name__ == "ToolException" else f"{type(e).__name__}: "
            raise ToolError(f"{kind}{e}") from e
        return clean_output(to_text(result), ctx.output_cap_bytes)


def _args_model(lc_tool: Any, name: str, owner: str) -> type[BaseModel]:
    """The tool's own pydantic (v2) model with unknown arguments refused, else a model checking the JSON
    schema (a dict args_schema, or a pydantic v1 model's schema)."""
    try:
        schema = lc_tool.tool_call_schema  # args_schema without injected arguments (callbacks, run manager)
    except Exception as e:  # a third-party tool whose schema cannot be built: a developer mistake
        raise ConfigError(f"{owner}: cannot read its argument schema: {type(e).__name__}: {e}") from e
    if inspect.isclass(schema) and issubclass(schema, BaseModel):
        return _strict(schema)
    if inspect.isclass(schema) and hasattr(schema, "schema"):  # pydantic v1
        schema = schema.schema()
    if not isinstance(schema, dict):
        raise ConfigError(f"{owner}: its args_schema is a {type(schema).__name__}, not a model or JSON schema")
    return json_args_model(f"{name}_args", clean_schema(schema, owner), owner)


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """A subclass of `model` that refuses unknown arguments (the model learns it misspelt one)."""
    if model.model_config.get("extra") in ("forbid", "allow"):
        return model
    config = ConfigDict(**{**model.model_config, "extra": "forbid"})
    return type(model.__name__, (model,), {"model_config": config, "__doc__": model.__doc__})


def _async_only(lc_tool: Any) -> bool:
    """A StructuredTool or Tool made from a coroutine alone (its sync invoke raises NotImplementedError)."""
    return getattr(lc_tool, "func", "absent") is None and getattr(lc_tool, "coroutine", None) is not None


def _run_coroutine(coro: Any, timeout_s: float) -> Any:
    """Run a coroutine to its end in a new event loop, cancelled after timeout_s (TimeoutError). Called from
    a thread that already runs a loop, it uses a helper thread (a loop cannot be nested)."""
    bounded = asyncio.wait_for(coro, timeout_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metagent-lc") as pool:
        return pool.submit(asyncio.run, bounded).result()


def _first(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in item["loc"]) or "arguments"
    return f"{where}: {item['msg']}"
