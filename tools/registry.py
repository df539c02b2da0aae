"""The tools a broker may call, registered explicitly by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from agent.errors import ConfigError
from agent.types import ToolSpec
from tools.base import Tool, is_tool
from tools.function_tool import tool
from tools.langchain_tools import LangChainTool, is_langchain_tool

# What tool-call grammars and chat templates accept as a function name.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


class ToolRegistry:
    """Tools by name. `register` takes a Tool (a class-based tool or a `@tool` function), a LangChain
    BaseTool (wrapped with LangChainTool) or a plain typed, documented function (wrapped with `tool`).
    Registering a name twice is a ConfigError. `close()` releases what the tools hold (MCP server
    processes), registered with `on_close`."""

    def __init__(self, tools: Sequence[Tool | Callable[..., Any]] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._closers: list[Callable[[], None]] = []
        for item in tools or []:
            self.register(item)

    def register(self, item: Tool | Callable[..., Any]) -> Tool:
        """Add a tool and return it (the wrapped one for a plain function or a LangChain tool)."""
        if is_tool(item):
            registered = cast(Tool, item)
        elif is_langchain_tool(item):
            registered = LangChainTool(item)
        else:
            registered = tool(cast(Callable[..., Any], item))
        if not isinstance(registered.name, str) or not _NAME.match(registered.name):
            raise ConfigError(
                f"tool name {registered.name!r} is not usable: use letters, digits, '_', '-' or '.', "
                "starting with a letter or '_', at most 64 characters."
            )
        if not registered.description or not registered.description.strip():
            raise ConfigError(f"tool {registered.name!r} has an empty description; say what it does.")
        if registered.name in self._tools:
            raise ConfigError(
                f"a tool named {registered.name!r} is already registered ({self._tools[registered.name]!r}). "
                "Give one of them another name, e.g. @tool(name='...')."
            )
        self._tools[registered.name] = registered
        return registered

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call `closer` when the registry closes (last registered, first called)."""
        self._closers.append(closer)

    def close(self) -> None:
        """Run the closers once each; the tools that needed them fail cleanly afterwards."""
        while self._closers:
            self._closers.pop()()

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self._tools.values()]

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


def tool_source(found: Tool) -> str:
    """Where a tool comes from, for listings: "builtin", "python (<module>)", "langchain", "mcp:<server>"."""
    source = getattr(found, "source", None)
    if isinstance(source, str):
        return source
    module = str(getattr(getattr(found, "fn", found), "__module__", "?"))
    return "builtin" if module.startswith("tools.") else f"python ({module})"
