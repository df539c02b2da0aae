"""Runs a `@tool(sandboxed=True)` function inside the sandbox.

The host side (`run_sandboxed`) starts `python -I -B -c <bootstrap>` under the sandbox with a JSON request
on stdin: the function's import target ("module:qualname"), the import roots to put on sys.path (bound
read-only into the sandbox), the validated arguments, and the context's user id (its workspace is the
sandbox's current directory, a staging copy of the real one). The sandbox
side (`main`) imports the function, validates the arguments again, calls it with stdout redirected to
stderr (so prints cannot forge the answer), and prints one JSON line: {"ok": true, "output": "..."} or
{"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.base import ToolContext, ToolError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from tools.function_tool import FunctionTool

RESULT_MARK = "\x1emetagent-result:"
_BOOTSTRAP = (
    "import json, sys\n"
    "request = json.loads(sys.stdin.read())\n"
    "sys.path[:0] = request['paths']\n"
    "from tools.runner import main\n"
    "main(request)\n"
)


def run_sandboxed(fn_tool: FunctionTool, args: BaseModel, ctx: ToolContext) -> str:
    """Host side: run the tool's function in `ctx.sandbox` and return its text, or raise ToolError."""
    if ctx.sandbox is None:
        raise ToolError(f"tool {fn_tool.name} must run in the sandbox, and no sandbox is configured")
    roots = _import_roots(fn_tool.fn.__module__, "tools", "agent")
    request = {
        "target": fn_tool.target,
        "paths": [str(p) for p in roots],
        "args": args.model_dump(mode="json"),
        "user_id": ctx.user_id,
    }
    result = ctx.sandbox.run(
        [sys.executable, "-I", "-B", "-c", _BOOTSTRAP],
        workspace=ctx.workspace,
        timeout_s=ctx.timeout_s,
        memory_mb=ctx.memory_mb,
        output_cap_bytes=ctx.output_cap_bytes,
        workspace_cap_bytes=ctx.workspace_cap_bytes,
        stdin=json.dumps(request),
        readonly_paths=roots,
    )
    if result.stopped:
        raise ToolError(f"stopped: {result.stopped}; its changes to the workspace were discarded")
    if result.timed_out:
        raise ToolError(f"timed out after {ctx.timeout_s:g} s")
    reply = _read_reply(result.stdout)
    if reply is None:
        tail = "\n".join(result.stderr.strip().splitlines()[-6:]) or "no output"
        cut = " (output cap reached)" if result.truncated else ""
        raise ToolError(f"sandboxed tool failed with exit code {result.exit_code}{cut}: {tail}")
    if not reply.get("ok"):
        raise ToolError(str(reply.get("error", "unknown error")))
    return str(reply.get("output", ""))


def _read_reply(stdout: str) -> dict[str, Any] | None:
    _, mark, payload = stdout.rpartition(RESULT_MARK)
    if not mark:
        return None
    try:
        reply = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return reply if isinstance(reply, dict) else None


def _import_roots(*modules: str) -> list[Path]:
    """The sys.path entry each module was imported from."""
    roots: list[Path] = []
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve().parent
        depth = name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
        for _ in range(depth):
            path = path.parent
        if path not in roots:
            roots.append(path)
    return roots


def main(request: dict[str, Any]) -> None:
    """Sandbox side: print RESULT_MARK + one JSON object on stdout."""
    real_stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            output = _call(request)
        reply: dict[str, Any] = {"ok": True, "output": output}
    except ToolError as e:
        reply = {"ok": False, "error": str(e)}
    except Exception as e:  # the tool's own failure, reported to the model like an in-process one
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    real_stdout.write(RESULT_MARK + json.dumps(reply) + "\n")
    real_stdout.flush()


def _call(request: dict[str, Any]) -> str:
    from tools.function_tool import FunctionTool, tool

    module_name, _, qualname = str(request["target"]).partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    fn_tool = obj if isinstance(obj, FunctionTool) else tool(obj)
    args = fn_tool.args_model.model_validate(request["args"])
    # The sandbox runs the function in a staging copy of the workspace: its current directory.
    ctx = ToolContext(workspace=Path.cwd(), user_id=str(request["user_id"]))
    return fn_tool.run_here(args, ctx)
