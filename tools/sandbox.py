"""Sandboxes for untrusted code: the built-in Python tool and every tool marked sandboxed.

Three implementations, strongest first; `detect_sandbox("auto")` picks the first that works here:

    BwrapSandbox    bubblewrap: a new root with only /usr, Python and the workspace; no network
    UnshareSandbox  util-linux unshare: new mount/net/pid/ipc/uts namespaces over the host's root
    ProcessSandbox  NOT a sandbox: a separate process with limits and a dropped user, nothing more

All three run the command as a separate process in its own session and process group, through
`sandbox_init` (rlimits: CPU from the timeout, address space from memory_mb, a few processes, 64 MiB files,
no core dumps; then NO_NEW_PRIVS), with an environment built from an allowlist (nothing secret is
inherited), cwd and HOME set to the workspace, stdout+stderr capped (the child is killed once the cap is
hit), and the whole process group killed on timeout.

When this process runs as root, the command runs as uid/gid 65534 ("nobody"), never as root, so root-owned
files stay unreadable even where they are visible.

The command never sees the workspace itself: it works in a staging copy (tools/staging.py), size-capped while
it runs, whose regular files are copied back when the call is over (links, FIFOs and devices never are).

None of them is a security boundary against a kernel exploit: they share the host kernel. A later
hardening step adds seccomp filters.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.errors import ConfigError
from tools.process import ProcessLimits, SandboxResult, run_process
from tools.staging import Staged, stage

SandboxMode = Literal["auto", "bwrap", "unshare", "none"]
SANDBOX_UID = SANDBOX_GID = 65534
FILE_SIZE_BYTES = 64 << 20
TMPFS_BYTES = 64 << 20
WORKSPACE_CAP_BYTES = 256 << 20
MAX_PROCESSES = 64
OPEN_FILES = 256
HIDDEN_DIRS = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media", "/srv")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

__all__ = [
    "BwrapSandbox",
    "ProcessSandbox",
    "Sandbox",
    "SandboxResult",
    "UnshareSandbox",
    "describe_sandbox",
    "detect_sandbox",
]


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
class _Call:
    """One `Sandbox.run` request, as passed between the steps of a run."""

    argv: Sequence[str]
    timeout_s: float
    memory_mb: int
    output_cap_bytes: int
    stdin: str | None
    readonly_paths: Sequence[Path]
    workspace_cap_bytes: int


class _SandboxBase:
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
        call = _Call(argv, timeout_s, memory_mb, output_cap_bytes, stdin, readonly_paths, workspace_cap_bytes)
        staged = stage(workspace, workspace_cap_bytes, (SANDBOX_UID, SANDBOX_GID) if os.geteuid() == 0 else None)
        try:
            result = self._run_staged(call, staged)
            if result.stopped is None:
                result = replace(result, changes=staged.collect(workspace).summary())
        finally:
            staged.remove()
        return result

    def _run_staged(self, call: _Call, staged: Staged) -> SandboxResult:
        workspace = staged.root
        limits = {
            "cpu_s": math.ceil(call.timeout_s) + 1,
            "address_space_bytes": call.memory_mb << 20,
            "file_size_bytes": min(FILE_SIZE_BYTES, call.workspace_cap_bytes),
            "core_bytes": 0,
            "open_files": OPEN_FILES,
        }
        if os.geteuid() == 0:  # counted per user: only meaningful for the dedicated sandbox user
            limits["processes"] = MAX_PROCESSES
        plan: dict[str, Any] = {"limits": limits, "cwd": str(workspace)}
        if os.geteuid() == 0:
            plan.update(uid=SANDBOX_UID, gid=SANDBOX_GID)
        binds = [(p, True) for p in _minimal_roots([*python_roots(), *map(_real, call.readonly_paths)])]
        binds.append((str(workspace), False))
        init = [python_binary(), "-I", "-S", "-c", _init_source()]
        command = [*self._wrap(init, plan, binds, workspace), *call.argv]
        stops = ProcessLimits(call.timeout_s, call.output_cap_bytes, watch=staged.over_cap)
        return run_process(command, sandbox_env(workspace), stops, stdin=call.stdin)

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        raise NotImplementedError


class BwrapSandbox(_SandboxBase):
    """bubblewrap: the command sees a new, mostly empty root.

    Protects: the host's files (only /usr, /lib*, the dynamic loader's /etc files, Python's directories and
    the tool's import roots are visible, read-only; the workspace is the only writable host directory; /tmp is
    a private 64 MiB tmpfs; no /root, /home, /run, secrets or sockets), the network (empty network
    namespace: no interfaces but its own loopback), other processes (new PID and IPC namespaces), the
    terminal (new session), privileges (uid 65534 when started as root, NO_NEW_PRIVS), resources (rlimits).

    Does NOT protect against: kernel exploits (shared kernel; no seccomp filter yet), reading world-readable
    files under /usr, using the CPU and memory within its limits, or covert timing channels.
    """

    name = "bwrap"
    protects = (
        "host files: only /usr, Python and the workspace are visible; only the workspace is writable",
        "network: empty network namespace",
        "processes: own PID/IPC/UTS namespaces, killed as a whole on timeout",
        "privileges: runs as uid 65534 when metagent runs as root; no_new_privs",
        "resources: CPU time, address space, process count, file size limits",
    )
    does_not_protect = (
        "kernel exploits (shared kernel, no seccomp filter yet)",
    )

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        argv = [self.executable, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid"]
        argv += ["--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if os.geteuid() == 0:
            # No user namespace: the init program needs these two to become uid 65534, then has none.
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user", "--disable-userns"]
            plan["drop_bounding_caps"] = True  # only acts if the command would run as uid 0 inside
        argv += ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        argv += ["--perms", "0755", "--dir", "/etc"]
        for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives"):
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
        made = {"/", "/usr", "/etc", "/tmp", "/proc", "/dev"}
        for src, read_only in binds:
            if src == "/usr" or src.startswith("/usr/"):
                continue
            for parent in reversed(Path(src).parents):
                if str(parent) not in made:
                    argv += ["--perms", "0755", "--dir", str(parent)]
                    made.add(str(parent))
            argv += ["--ro-bind" if read_only else "--bind", src, src]
        argv += ["--chdir", str(workspace), "--", *init, json.dumps(plan), "--"]
        return argv


class UnshareSandbox(_SandboxBase):
    """util-linux `unshare`: new mount, network, PID, IPC and UTS namespaces (plus a user namespace when
    not root), over the host's own root.

    Protects: the network (empty network namespace), other processes (PID namespace, killed as a whole),
    /root, /home, /tmp, /var/tmp, /dev/shm, /run, /mnt, /media and /srv (hidden under empty tmpfs mounts;
    Python, the tool's import roots and the workspace are bound back, read-only except the workspace),
    privileges (uid 65534 when started as root, no capabilities, NO_NEW_PRIVS), resources (rlimits).

    Does NOT protect against: reading any other world-readable file of the host (/etc/passwd, /opt, /srv,
    other projects' sources), writing to world-writable directories outside the hidden ones, kernel
    exploits (no seccomp filter yet). When metagent is not root, the command keeps the user's own file
    permissions everywhere that is not hidden.
    """

    name = "unshare"
    protects = (
        "network: empty network namespace",
        "processes: own PID/IPC/UTS namespaces, killed as a whole on timeout",
        "host files under /root, /home, /tmp, /run, /mnt, /media, /srv: hidden",
        "privileges: runs as uid 65534 when metagent runs as root; no capabilities; no_new_privs",
        "resources: CPU time, address space, process count, file size limits",
    )
    does_not_protect = (
        "reading other world-readable host files (e.g. /etc, /opt, other projects)",
        "writing world-writable host directories outside the hidden ones",
        "kernel exploits (shared kernel, no seccomp filter yet)",
    )

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("unshare") or "unshare"

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        argv = [self.executable, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
        argv += ["--mount-proc", "--propagation", "private"]
        if os.geteuid() != 0:
            argv += ["--user", "--map-root-user"]
            plan["drop_bounding_caps"] = True
        plan.update(mounts=[[src, ro] for src, ro in binds], hide=list(HIDDEN_DIRS), tmpfs_bytes=TMPFS_BYTES)
        return [*argv, "--", *init, json.dumps(plan), "--"]


class ProcessSandbox(_SandboxBase):
    """NOT A SANDBOX. A separate process with rlimits, a scrubbed environment, its own process group and,
    when metagent runs as root, uid 65534; nothing else.

    Protects: secrets in the environment, root-only files (when started as root), runaway CPU/memory/
    processes/file sizes, and leftover processes in its process group.

    Does NOT protect: the network (fully available), every file the user can read or write, other
    processes of the same user, descendants that leave the process group (setsid) on timeout. The python
    tool refuses to run with it unless [tools] sandbox = "none" is set explicitly.
    """

    name = "none"
    isolated = False
    protects = (
        "environment secrets (allowlisted environment)",
        "root-only files when metagent runs as root (runs as uid 65534)",
        "resources: CPU time, address space, process count, file size limits",
    )
    does_not_protect = (
        "NETWORK: fully available",
        "FILES: everything the user can read or write",
        "processes that leave the process group survive a timeout",
    )

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        return [*init, json.dumps(plan), "--"]


def sandbox_env(workspace: Path) -> dict[str, str]:
    """The whole environment of a sandboxed command: fixed values, never inherited secrets."""
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(workspace),
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "PYTHONUNBUFFERED": "1",  # ignored under python -I, read by python without it
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    tz = os.environ.get("TZ", "")
    if tz and all(c.isalnum() or c in "/_+-:" for c in tz):
        env["TZ"] = tz
    return env


def python_binary() -> str:
    return os.path.realpath(sys.executable)


def python_roots() -> list[str]:
    """The directories the running Python needs: its installation and the virtual environment."""
    exe_root = str(Path(python_binary()).parent.parent)
    return [_real(Path(sys.base_prefix)), _real(Path(sys.prefix)), exe_root]


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _minimal_roots(paths: Sequence[str]) -> list[str]:
    """Unique existing directories, without those inside another one of the list."""
    unique = sorted({p for p in paths if os.path.isdir(p)})
    return [p for p in unique if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in unique)]


@functools.cache
def _init_source() -> str:
    return (Path(__file__).parent / "sandbox_init.py").read_text(encoding="utf-8")


def detect_sandbox(mode: SandboxMode = "auto") -> Sandbox:
    """The sandbox for a settings mode: "auto" takes bwrap, else unshare, else the process-only fallback
    (which the python tool refuses); "bwrap"/"unshare" raise ConfigError when unusable here; "none" is the
    process-only fallback, chosen on purpose."""
    if mode == "none":
        return ProcessSandbox()
    if mode not in ("auto", "bwrap", "unshare"):
        raise ConfigError(f"unknown sandbox mode {mode!r}; use auto, bwrap, unshare or none.")
    for candidate in ("bwrap", "unshare"):
        if mode not in ("auto", candidate):
            continue
        problem = probe(candidate)
        if problem is None:
            return BwrapSandbox() if candidate == "bwrap" else UnshareSandbox()
        if mode == candidate:
            raise ConfigError(f"sandbox mode {mode!r} is not usable here: {problem}. {_INSTALL_HINT}")
    return ProcessSandbox()


_INSTALL_HINT = (
    "Install bubblewrap (apt-get install bubblewrap), allow user namespaces, or set [tools] sandbox = "
    '"auto" to use what works.'
)


@functools.cache
def probe(mode: Literal["bwrap", "unshare"]) -> str | None:
    """Why a mode does not work here, or None when it ran a Python command (cached per process: it spawns)."""
    executable = shutil.which(mode)
    if executable is None:
        return f"`{mode}` is not installed"
    sandbox = BwrapSandbox(executable) if mode == "bwrap" else UnshareSandbox(executable)
    with tempfile.TemporaryDirectory(prefix="metagent-probe-") as scratch:
        try:
            result = sandbox.run(
                [python_binary(), "-I", "-S", "-c", "print('ok')"],
                workspace=Path(scratch),
                timeout_s=20.0,
                memory_mb=256,
                output_cap_bytes=4096,
            )
        except OSError as e:
            return f"`{executable}` could not start: {e}"
    if result.exit_code == 0 and result.stdout.strip() == "ok":
        return None
    detail = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}"])[-1]
    return f"`{executable}` failed a test run: {detail}"


def describe_sandbox(mode: SandboxMode = "auto") -> dict[str, Any]:
    """What `metagent doctor` shows: the active sandbox, why it was chosen, what it does and does not do."""
    problems = {m: probe(m) for m in ("bwrap", "unshare")}
    try:
        sandbox = detect_sandbox(mode)
    except ConfigError as e:
        return {"requested": mode, "active": None, "isolated": False, "why": str(e), "modes": problems}
    impl: Any = sandbox
    if sandbox.name == "none":
        why = (
            "NOT SANDBOXED: [tools] sandbox = 'none' was chosen"
            if mode == "none"
            else "NOT SANDBOXED: neither bwrap nor unshare works here "
            f"(bwrap: {problems['bwrap']}; unshare: {problems['unshare']}). The python tool is refused."
        )
    else:
        why = f"{sandbox.name} works here" + (" (preferred: strongest available)" if mode == "auto" else "")
    return {
        "requested": mode,
        "active": sandbox.name,
        "isolated": sandbox.isolated,
        "why": why,
        "runs_as": f"uid {SANDBOX_UID}" if os.geteuid() == 0 else f"uid {os.geteuid()} (the current user)",
        "protects": list(getattr(impl, "protects", ())),
        "does_not_protect": list(getattr(impl, "does_not_protect", ())),
        "modes": {m: ("usable" if p is None else p) for m, p in problems.items()},
    }
