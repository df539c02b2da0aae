"""What every sandbox tier shares (tools/sandbox.py lists the tiers): the `Sandbox` protocol, the limits
derived from a call, the staging copy of the workspace around the run, and the host-side stops (timeout,
output cap, workspace size, the memory of the whole process tree).

A tier says how the command is started: by default through the init program (tools/sandbox_init.py, a
`python -I -S` that sets rlimits, drops privileges, installs Landlock and seccomp, then execs), wrapped by the
tier's `_wrap`; a tier that can do all of that with other programs overrides `_launch` (bwrap does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from agent.errors import ConfigError
from tools.process import ProcessLimits, SandboxResult, run_process
from tools.proctree import TreeMemory
from tools.sandbox_plan import (
    init_source,
    minimal_roots,
    process_limit,
    python_binary,
    python_roots,
    real_path,
    sandbox_env,
)
from tools.staging import Staged, stage

SANDBOX_UID = SANDBOX_GID = 65534
FILE_SIZE_BYTES = 64 << 20
TMPFS_BYTES = 64 << 20
WORKSPACE_CAP_BYTES = 256 << 20
MAX_PROCESSES = 64
OPEN_FILES = 256
Bind = tuple[str, bool]  # a host directory the command needs, and whether it is read-only

__all__ = ["Bind", "Sandbox", "SandboxBase", "SandboxCall"]


class Sandbox(Protocol):
    """Runs one command in isolation with limits. `isolated` is False for the process-only fallback."""

    name: str
    isolated: bool

    def run(
        self,
        argv: Sequence[str],
        *,
        workspace: Path,
        timeout_s: float,
        memory_mb: int,
        output_cap_bytes: int,
        stdin: str | None = None,
        readonly_paths: Sequence[Path] = (),
        workspace_cap_bytes: int = WORKSPACE_CAP_BYTES,
    ) -> SandboxResult:
        """Run argv with cwd set to a staging copy of `workspace` (tools/staging.py): the changes come back into
        the workspace when the call is over, unless it outgrew `workspace_cap_bytes`. `readonly_paths` (e.g. the
        directories a tool module is imported from) are made visible read-only where the sandbox hides the
        host's files."""
        ...


@dataclass(frozen=True)
class SandboxCall:
    """One `Sandbox.run` request, as passed between the steps of a run."""

    argv: Sequence[str]
    timeout_s: float
    memory_mb: int
    output_cap_bytes: int
    stdin: str | None
    readonly_paths: Sequence[Path]
    workspace_cap_bytes: int


class SandboxBase:
    """The parts every mode shares; subclasses say how the init program is wrapped."""

    name = "base"
    isolated = True
    protects: tuple[str, ...] = ()
    does_not_protect: tuple[str, ...] = ()

    def run(
        self,
        argv: Sequence[str],
        *,
        workspace: Path,
        timeout_s: float,
        memory_mb: int,
        output_cap_bytes: int,
        stdin: str | None = None,
        readonly_paths: Sequence[Path] = (),
        workspace_cap_bytes: int = WORKSPACE_CAP_BYTES,
    ) -> SandboxResult:
        if not argv:
            raise ConfigError("sandbox: empty command")
        workspace = workspace.resolve()
        if not workspace.is_dir():
            raise ConfigError(f"sandbox workspace {workspace} is not a directory; create it first.")
        call = SandboxCall(argv, timeout_s, memory_mb, output_cap_bytes, stdin, readonly_paths, workspace_cap_bytes)
        staged = stage(workspace, workspace_cap_bytes, (SANDBOX_UID, SANDBOX_GID) if os.geteuid() == 0 else None)
        try:
            result = self._run_staged(call, staged)
            if result.stopped is None:
                result = replace(result, changes=staged.collect(workspace).summary())
        finally:
            staged.remove()
        return result

    def _run_staged(self, call: SandboxCall, staged: Staged) -> SandboxResult:
        workspace = staged.root
        limits = {
            "cpu_s": math.ceil(call.timeout_s) + 1,
            "address_space_bytes": call.memory_mb << 20,
            "file_size_bytes": min(FILE_SIZE_BYTES, call.workspace_cap_bytes),
            "core_bytes": 0,
            "open_files": OPEN_FILES,
        }
        limits["processes"] = process_limit(MAX_PROCESSES)
        plan: dict[str, Any] = {"limits": limits, "cwd": str(workspace)}
        if os.geteuid() == 0:
            plan.update(uid=SANDBOX_UID, gid=SANDBOX_GID)
        binds = [(p, True) for p in minimal_roots([*python_roots(), *map(real_path, call.readonly_paths)])]
        binds.append((str(workspace), False))
        stops = ProcessLimits(call.timeout_s, call.output_cap_bytes,
                              watches=(staged.over_cap, TreeMemory(call.memory_mb << 20)))  # fmt: skip
        return self._launch(call, plan, binds, stops)

    def _launch(
        self, call: SandboxCall, plan: dict[str, Any], binds: list[Bind], stops: ProcessLimits
    ) -> SandboxResult:
        """Start the command through the init program (tools/sandbox_init.py), wrapped as `_wrap` says, and
        run it to its end or a limit. `plan["cwd"]` is the staging copy; `binds` the host directories it needs
        as (path, read_only)."""
        workspace = Path(plan["cwd"])
        init = [python_binary(), "-I", "-S", "-c", init_source()]
        command = [*self._wrap(init, plan, binds, workspace), *call.argv]
        return run_process(command, sandbox_env(workspace), stops, stdin=call.stdin)

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[Bind], workspace: Path) -> list[str]:
        raise NotImplementedError
