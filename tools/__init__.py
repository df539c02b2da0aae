"""Tools: the Tool protocol and `@tool`, the registry, the broker that runs calls under policy, the sandbox,
and the built-in tools.

    from tools import Broker, ToolRegistry, builtin_tools, tool

    @tool
    def add(a: int, b: int) -> int:
        '''Add two integers.'''
        return a + b

    registry = ToolRegistry([*builtin_tools(), add])
    broker = Broker(registry, settings.tools, settings.workspace_dir)

`tools` never imports `memory` or `graphs`; services it needs (retriever, episodic memory) are passed in.
"""

from __future__ import annotations

from tools.base import Tool, ToolContext, ToolError, ToolPolicy
from tools.broker import Broker
from tools.builtins import builtin_tools
from tools.function_tool import tool
from tools.registry import ToolRegistry
from tools.sandbox import describe_sandbox, detect_sandbox

__all__ = [
    "Broker",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolPolicy",
    "ToolRegistry",
    "builtin_tools",
    "describe_sandbox",
    "detect_sandbox",
    "tool",
]
