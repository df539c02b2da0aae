"""The broker: the one way a tool call runs.

    lookup -> argument validation -> policy -> run (worker thread or sandbox, with a timeout) -> truncate

Every mistake a model can make (an unknown tool, wrong arguments, a tool that raises or hangs) comes back as
a `ToolResult(ok=False, error=...)` written for the model to correct itself; nothing here raises on a call.

Limitation of in-process tools: a non-sandboxed tool runs in a daemon worker thread, and Python cannot kill
a thread. On timeout the broker returns an error and abandons the thread, which keeps running (and holding
whatever it holds) until the function returns or the process exits. Mark a tool that may hang or loop as
`sandboxed=True`: sandboxed tools run in a child process that is killed with its process group.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config import ToolSettings
from agent.errors import ConfigError
from agent.types import ToolCall, ToolResult, ToolSpec
from tools.base import Tool, ToolContext, ToolError, ToolPolicy, describe_args
from tools.registry import ToolRegistry
from tools.sandbox import Sandbox, detect_sandbox

# A sandboxed run is bounded by the sandbox itself; this margin only covers process start-up.
SANDBOX_START_MARGIN_S = 10.0


class Broker:
    """Runs tool calls from the registry under their policies and the [tools] settings."""

    def __init__(
        self,
        registry: ToolRegistry,
        settings: ToolSettings,
        workspace: Path,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.workspace = workspace.expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self._policies = effective_policies(registry, settings)
        self._sandbox = sandbox
        self._sandbox_lock = threading.Lock()
        if sandbox is None and any(p.sandboxed for p in self._policies.values()):
            self.sandbox()  # a missing sandbox is a configuration error: surface it at build time

    def sandbox(self) -> Sandbox:
        """The sandbox, detected from settings.sandbox on first use (ConfigError when the mode is unusable)."""
        with self._sandbox_lock:
            if self._sandbox is None:
                self._sandbox = detect_sandbox(self.settings.sandbox)
            return self._sandbox

    def specs(self) -> list[ToolSpec]:
        return self.registry.specs()

    def policy(self, tool: Tool) -> ToolPolicy:
        """The policy the broker applies to a tool: its own, with the settings' [tools.policy.NAME] on top."""
        return self._policies.get(tool.name) or tool.policy

    def needs_approval(self, call: ToolCall) -> bool:
        """Whether a human must approve this call first (policy, or the tool is listed in settings.approval)."""
        found = self.registry.get(call.name)
        if found is None:
            return False
        policy = self.policy(found)
        return (
            call.name in self.settings.approval
            or policy.approval == "always"
            or (policy.approval == "side_effects" and policy.side_effects)
        )

    def validate(self, call: ToolCall) -> ToolResult | None:
        """None when the call can run; otherwise the error result the model should see."""
        checked = self._check(call)
        return checked if isinstance(checked, ToolResult) else None

    def call(self, call: ToolCall, user_id: str = "default") -> ToolResult:
        started = time.monotonic()
        checked = self._check(call)
        if isinstance(checked, ToolResult):
            return checked
        found, args = checked
        try:
            output = self._run(found, args, user_id)
        except ToolError as e:
            return _failed(call, str(e), started)
        except Exception as e:  # the tool's own bug or bad input: the model reads it and may retry
            return _failed(call, f"{type(e).__name__}: {e}", started)
        cap = self.policy(found).output_cap_bytes or self.settings.output_cap_bytes
        return ToolResult(call.id, call.name, True, truncate(output, cap), elapsed_s=time.monotonic() - started)

    def call_many(self, calls: Sequence[ToolCall], user_id: str = "default") -> list[ToolResult]:
        """Run calls concurrently (at most settings.max_parallel at once); results in call order."""
        if len(calls) <= 1:
            return [self.call(c, user_id) for c in calls]
        workers = min(self.settings.max_parallel, len(calls))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metagent-call") as pool:
            return list(pool.map(lambda c: self.call(c, user_id), calls))

    def _check(self, call: ToolCall) -> ToolResult | tuple[Tool, BaseModel]:
        found = self.registry.get(call.name)
        if found is None:
            return _failed(call, self._unknown(call.name))
        if not isinstance(call.arguments, dict):
            return _failed(call, f"arguments must be a JSON object; expected: {describe_args(found.args_model)}")
        try:
            args = found.args_model.model_validate(call.arguments)
        except ValidationError as e:
            return _failed(call, invalid_arguments(found, e))
        refusal = self._refusal(found)
        return _failed(call, refusal) if refusal else (found, args)

    def _unknown(self, name: str) -> str:
        names = self.registry.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        available = ", ".join(names) if names else "none"
        return f"unknown tool {name!r}.{hint} Available tools: {available}. Call one of them by its exact name."

    def _refusal(self, found: Tool) -> str | None:
        if self.policy(found).sandboxed:
            try:
                sandbox = self.sandbox()
            except ConfigError as e:
                return f"tool {found.name} cannot run: {e}"
            if not sandbox.isolated and self.settings.sandbox != "none":
                return (
                    f"tool {found.name} runs untrusted code and no sandbox works on this machine (see "
                    "`metagent doctor`); it is disabled. Answer without it."
                )
        return None

    def _run(self, found: Tool, args: BaseModel, user_id: str) -> str:
        policy = self.policy(found)
        if not policy.sandboxed:
            ctx = self._context(found, self.workspace, user_id, None)
            return _run_in_thread(found, args, ctx, ctx.timeout_s)
        # A sandboxed tool that touches no files gets an empty scratch directory, not the workspace.
        scratch = None if policy.filesystem == "workspace" else Path(tempfile.mkdtemp(prefix="metagent-tool-"))
        try:
            ctx = self._context(found, scratch or self.workspace, user_id, self.sandbox())
            return _run_in_thread(found, args, ctx, ctx.timeout_s + SANDBOX_START_MARGIN_S, ctx.timeout_s)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _context(self, found: Tool, workspace: Path, user_id: str, sandbox: Sandbox | None) -> ToolContext:
        """The context for one call: the policy's limits, else the settings' defaults."""
        policy = self.policy(found)
        return ToolContext(
            workspace=workspace,
            user_id=user_id,
            sandbox=sandbox,
            timeout_s=policy.timeout_s or self.settings.timeout_s,
            memory_mb=policy.memory_mb or self.settings.memory_mb,
            output_cap_bytes=policy.output_cap_bytes or self.settings.output_cap_bytes,
            workspace_cap_bytes=self.settings.workspace_cap_mb << 20,
            tool_name=found.name,
            network=policy.network,
        )


def effective_policies(registry: ToolRegistry, settings: ToolSettings) -> dict[str, ToolPolicy]:
    """Each registered tool's policy with its [tools.policy.NAME] settings on top; ConfigError for settings that
    name no registered tool (a typo would otherwise silently leave a tool unrestricted)."""
    names = registry.names()
    unknown = sorted(set(settings.policy) - set(names))
    if unknown:
        raise ConfigError(f"[tools.policy] names tools that are not registered: {unknown}; the tools are {names}")
    return {
        t.name: t.policy.overridden(f"[tools.policy.{t.name}]", settings.policy[t.name].overrides())
        if t.name in settings.policy
        else t.policy
        for t in registry
    }


def _run_in_thread(
    found: Tool, args: BaseModel, ctx: ToolContext, timeout_s: float, report_s: float | None = None
) -> str:
    """Run the tool in a daemon thread and wait at most timeout_s (the thread is abandoned after that)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["output"] = found.run(args, ctx)
        except BaseException as e:  # handed to the caller's thread, which decides what the model sees
            box["error"] = e

    worker = threading.Thread(target=target, name=f"metagent-tool-{found.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ToolError(f"timed out after {report_s or timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    output = box.get("output")
    if not isinstance(output, str):
        raise ToolError(f"tool {found.name} returned {type(output).__name__}, not text (a bug in the tool)")
    return output


def invalid_arguments(found: Tool, error: ValidationError) -> str:
    """Pydantic's errors, compact: which argument, what was wrong, what was given; then what is expected."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        if item["type"] == "missing":
            problems.append(f"{where!r} is required but missing")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where!r} is not an argument of this tool")
        else:
            given = _short(item.get("input"))
            problems.append(f"{where!r}: {item['msg']} (got {given})")
    return (
        f"invalid arguments for {found.name}: {'; '.join(problems)}. "
        f"Expected arguments: {describe_args(found.args_model)}."
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def truncate(text: str, cap_bytes: int) -> str:
    """Text cut to about cap_bytes of UTF-8: the head and the tail, with a note of what was left out."""
    data = text.encode("utf-8")
    if len(data) <= cap_bytes:
        return text
    head = data[: cap_bytes * 2 // 3].decode("utf-8", "ignore")
    tail = data[len(data) - cap_bytes // 3 :].decode("utf-8", "ignore")
    cut = len(data) - len(head.encode()) - len(tail.encode())
    return f"{head}\n[... {cut} bytes cut: output exceeds {cap_bytes} bytes ...]\n{tail}"


def _failed(call: ToolCall, error: str, started: float | None = None) -> ToolResult:
    elapsed = time.monotonic() - started if started is not None else 0.0
    return ToolResult(call.id, call.name, False, "", error=error, elapsed_s=elapsed)
