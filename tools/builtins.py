"""The built-in tools: calculator, python (sandboxed), file tools, and, given their services, search_docs
and recall."""

from __future__ import annotations

import ast
import signal
import sys
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from agent.protocols import EpisodicMemory, Retriever
from agent.types import ToolSpec
from tools.base import Tool, ToolContext, ToolError, ToolPolicy, spec_for
from tools.calculator import calculator
from tools.files import list_dir, read_file, write_file
from tools.function_tool import tool
from tools.process import SandboxResult

STDERR_TAIL_LINES = 30
RECALL_K = 3
RECALL_FIELD_CHARS = 300


class PythonArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="a complete Python 3 program; print() what you want to see")


class PythonTool:
    """Runs a Python program in the sandbox (no network, only the workspace writable, time and memory
    limits) and reports its output. Refused where no real sandbox works unless [tools] sandbox = "none"."""

    name = "python"
    description = (
        "Run a Python 3 program in a sandbox and return what it prints. No network; files can be read and "
        "written in the current directory (the workspace). Use print() to show results."
    )
    args_model: type[BaseModel] = PythonArgs
    policy = ToolPolicy(sandboxed=True, filesystem="workspace")

    def spec(self) -> ToolSpec:
        return spec_for(self.name, self.description, self.args_model)

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        if not isinstance(args, PythonArgs):
            raise ToolError("python: arguments were not validated")
        if ctx.sandbox is None:
            raise ToolError("python: no sandbox is configured, so code cannot run")
        result = ctx.sandbox.run(
            # -I: ignore PYTHON* variables, the user site and the current directory on sys.path.
            [sys.executable, "-I", "-"],
            workspace=ctx.workspace,
            timeout_s=ctx.timeout_s,
            memory_mb=ctx.memory_mb,
            output_cap_bytes=ctx.output_cap_bytes,
            workspace_cap_bytes=ctx.workspace_cap_bytes,
            stdin=echo_last_expression(args.code),
        )
        return report(result, ctx.timeout_s)


def echo_last_expression(code: str) -> str:
    """Like an interactive session: when the program ends with an expression, print its value too.

    Models (and people) often write `17 * 23` or `sorted(data)` and expect to see the result. The lines before
    the expression are left exactly as written, so error line numbers still match the code.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # the sandboxed interpreter reports it, with the line
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        return code
    call = last.value
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
        return code
    segment = ast.get_source_segment(code, last)
    if segment is None:
        return code
    head = "".join(code.splitlines(keepends=True)[: last.lineno - 1]) + code.splitlines()[last.lineno - 1][
        : last.col_offset]
    return (f"{head}__value = ({segment})\n"
            "if __value is not None:\n    print(repr(__value))\n")


def report(result: SandboxResult, timeout_s: float) -> str:
    """A program's run as compact text; ToolError (the model's to fix) when it failed or timed out."""
    parts = []
    if result.stdout.strip():
        parts.append(result.stdout.rstrip())
    if result.stderr.strip():
        lines = result.stderr.rstrip().splitlines()
        cut = len(lines) - STDERR_TAIL_LINES
        shown = ([f"[{cut} earlier lines cut]"] if cut > 0 else []) + lines[-STDERR_TAIL_LINES:]
        parts.append("stderr:\n" + "\n".join(shown))
    if result.truncated:
        parts.append("[output cap reached: the program was stopped; print less]")
    if result.changes:
        parts.append(result.changes)
    body = "\n".join(parts)
    if result.stopped:
        raise ToolError(f"stopped: {result.stopped}; its changes to the workspace were discarded"
                        + (f"\n{body}" if body else ""))
    if result.timed_out:
        raise ToolError(f"timed out after {timeout_s:g} s (the program was killed)" + (f"\n{body}" if body else ""))
    if result.truncated:  # stopped by us at the cap: what it printed so far is still worth reading
        return body
    if result.exit_code < 0:
        name = signal.Signals(-result.exit_code).name if -result.exit_code in signal.valid_signals() else "?"
        hint = " (CPU time or memory limit?)" if name in ("SIGKILL", "SIGXCPU", "SIGSEGV") else ""
        raise ToolError(f"killed by {name}{hint}" + (f"\n{body}" if body else ""))
    if result.exit_code != 0:
        raise ToolError(f"exit code {result.exit_code}" + (f"\n{body}" if body else ""))
    return body or "(no output; use print() to show values)"


def make_search_docs(retriever: Retriever) -> Tool:
    """The search_docs tool over a retriever: passages labelled [S1]..[Sk] with their source."""

    @tool(name="search_docs")
    def search_docs(
        query: Annotated[str, Field(description="what to look for, in a few words")],
        k: Annotated[int, Field(ge=1, le=20, description="how many passages to return")] = 4,
    ) -> str:
        """Search the ingested documents and return the most relevant passages, labelled, with sources.
        Cite a passage by its label, e.g. [S1]."""
        passages = retriever.search(query, k)
        if not passages:
            return "no matching passages (nothing ingested, or nothing relevant to this query)"
        # Labelled S1.. so they never collide with the [1].. of passages retrieved before the model ran.
        return "\n\n".join(
            f"[S{i}] {p.source} (part {p.position}):\n{p.text.strip()}" for i, p in enumerate(passages, 1)
        )

    return search_docs


def make_recall(episodes: EpisodicMemory) -> Tool:
    """The recall tool over episodic memory: the current user's similar past requests and their answers."""

    @tool(name="recall")
    def recall(
        query: Annotated[str, Field(description="the request to find similar past ones for")], ctx: ToolContext
    ) -> str:
        """Recall this user's earlier requests similar to the query, with the answers given then."""
        found = episodes.recall(ctx.user_id, query, RECALL_K)
        if not found:
            return "no similar earlier requests from this user"
        return "\n".join(
            f"[{i}] request: {_short(ep.request)}\n    answer: {_short(ep.answer)} "
            f"(outcome: {ep.outcome}, task: {ep.task_kind})"
            for i, ep in enumerate(found, 1)
        )

    return recall


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= RECALL_FIELD_CHARS else flat[: RECALL_FIELD_CHARS - 3] + "..."


def builtin_tools(retriever: Retriever | None = None, episodes: EpisodicMemory | None = None) -> list[Tool]:
    """All built-in tools; search_docs and recall only when their service is given."""
    found: list[Tool] = [calculator, PythonTool(), read_file, write_file, list_dir]
    if retriever is not None:
        found.append(make_search_docs(retriever))
    if episodes is not None:
        found.append(make_recall(episodes))
    return found
