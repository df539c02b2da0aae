"""Sandboxed tools for the tests: defined at module level, so the sandbox runner can import them."""

from __future__ import annotations

import os
import time

from tools import ToolContext, tool


@tool(sandboxed=True, filesystem="workspace")
def inspect_sandbox(note: str, ctx: ToolContext) -> dict[str, object]:
    """Report who and where the tool runs, and leave a note in the workspace."""
    with open("note.txt", "w") as f:
        f.write(note)
    print("this print must not reach the answer")
    return {"uid": os.getuid(), "cwd": os.getcwd(), "workspace": str(ctx.workspace), "user": ctx.user_id}


@tool(sandboxed=True)
def scratch_only() -> list[str]:
    """List the directory a sandboxed tool without filesystem access gets."""
    return sorted(os.listdir("."))


@tool(sandboxed=True, timeout_s=1)
def sleep_long() -> str:
    """Sleep longer than the timeout."""
    time.sleep(30)
    return "late"


@tool(sandboxed=True)
def fail(x: int) -> str:
    """Raise an error."""
    raise ValueError(f"bad value {x}")
