"""Sandboxes for untrusted code: the built-in Python tool and every tool marked sandboxed.

Four tiers, strongest first; `detect_sandbox("auto")` picks the first that works here:

    BwrapSandbox     bubblewrap: a new root with only /usr, Python and the workspace; no network
    LandlockSandbox  no namespaces (for hosts without user namespaces): Landlock file rules, no sockets,
                     signal scoping, a supervisor that kills every leftover process
    UnshareSandbox   util-linux unshare: new mount/net/pid/ipc/uts namespaces over the host's root
    ProcessSandbox   NOT a sandbox: a separate process with limits and a dropped user, nothing more

All of them run the command as a separate process in its own session and process group, through
`sandbox_init` (rlimits: CPU from the timeout, address space from memory_mb, a few processes, 64 MiB files,
no core dumps; then NO_NEW_PRIVS and, last before exec, the seccomp filter of tools/seccomp.py, which
refuses ptrace, io_uring, bpf, mounts, new namespaces, keyrings, kernel modules... and, in the isolated
tiers, sockets other than unix ones), with an environment built from an allowlist (nothing secret is
inherited), cwd and HOME set to the workspace, stdout+stderr capped (the child is killed once the cap is
hit), and the whole process group killed on timeout.

When this process runs as root, the command runs as uid/gid 65534 ("nobody"), never as root, so root-owned
files stay unreadable even where they are visible.

The command never sees the workspace itself: it works in a staging copy (tools/staging.py), size-capped while
it runs, whose regular files are copied back when the call is over (links, FIFOs and devices never are).

None of them is a security boundary against a kernel exploit: they share the host kernel. The seccomp
filter narrows the kernel's attack surface; it does not remove it.
"""

from __future__ import annotations

import functools
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
from tools import landlock, seccomp
from tools.process import ProcessLimits, SandboxResult, run_process
from tools.proctree import TreeMemory
from tools.sandbox_plan import (
    encode_plan,
    init_source,
    minimal_roots,
    process_limit,
    python_binary,
    python_roots,
    real_path,
    sandbox_env,
)
from tools.staging import Staged, stage

SandboxMode = Literal["auto", "bwrap", "landlock", "unshare", "none"]
SANDBOX_UID = SANDBOX_GID = 65534
FILE_SIZE_BYTES = 64 << 20
TMPFS_BYTES = 64 << 20
WORKSPACE_CAP_BYTES = 256 << 20
MAX_PROCESSES = 64
OPEN_FILES = 256
LANDLOCK_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                         "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")  # fmt: skip
HIDDEN_DIRS = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media", "/srv")

__all__ = [
    "BwrapSandbox",
    "LandlockSandbox",
    "ProcessSandbox",
    "Sandbox",
    "SandboxResult",
    "UnshareSandbox",
    "describe_sandbox",
    "detect_sandbox",
    "python_binary",
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
        limits["processes"] = process_limit(MAX_PROCESSES)
        plan: dict[str, Any] = {"limits": limits, "cwd": str(workspace)}
        if os.geteuid() == 0:
            plan.update(uid=SANDBOX_UID, gid=SANDBOX_GID)
        binds = [(p, True) for p in minimal_roots([*python_roots(), *map(real_path, call.readonly_paths)])]
        binds.append((str(workspace), False))
        init = [python_binary(), "-I", "-S", "-c", init_source()]
        command = [*self._wrap(init, plan, binds, workspace), *call.argv]
        stops = ProcessLimits(call.timeout_s, call.output_cap_bytes,
                              watches=(staged.over_cap, TreeMemory(call.memory_mb << 20)))
        return run_process(command, sandbox_env(workspace), stops, stdin=call.stdin)

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        raise NotImplementedError


class BwrapSandbox(_SandboxBase):
    """bubblewrap: the command sees a new, mostly empty root.

    Protects: the host's files (only /usr, /lib*, the dynamic loader's /etc files, Python's directories and
    the tool's import roots are visible, read-only; the workspace is the only writable host directory; /tmp is
    a private 64 MiB tmpfs; no /root, /home, /run, secrets or sockets), the network (empty network
    namespace: no interfaces but its own loopback), other processes (new PID and IPC namespaces), the
    terminal (new session), privileges (uid 65534 when started as root, NO_NEW_PRIVS), resources (rlimits),
    the kernel's riskier interfaces (seccomp: no ptrace, io_uring, bpf, perf, userfaultfd, keyrings, mounts,
    new namespaces, kernel modules, TIOCSTI; socket() only for AF_UNIX).

    Does NOT protect against: kernel exploits through the system calls that stay allowed (shared kernel),
    reading world-readable files under /usr, using the CPU and memory within its limits, or covert timing
    channels.
    """

    name = "bwrap"
    protects = (
        "host files: only /usr, Python and the workspace are visible; only the workspace is writable",
        "network: empty network namespace",
        "processes: own PID/IPC/UTS namespaces, killed as a whole on timeout",
        "privileges: runs as uid 65534 when metagent runs as root; no_new_privs",
        "resources: CPU time, address space, process count, file size limits",
        "kernel surface: seccomp filter (no ptrace, io_uring, bpf, mounts, namespaces; only unix sockets)",
    )
    does_not_protect = ("kernel exploits through the system calls that stay allowed (shared kernel)",)

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
            plan["limits"]["processes"] = MAX_PROCESSES  # counted in the new user namespace: ours alone
        plan["seccomp"] = {"socket_families": [seccomp.AF_UNIX]}  # the network namespace is empty anyway
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
        # bwrap's /dev is a tmpfs with no size limit, writable by the sandbox's own user: cap /dev/shm like
        # /tmp, and make the rest of /dev read-only (device nodes still read and write as usual).
        for scratch in ("/dev/shm", "/tmp"):
            argv += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", scratch]
        made = {"/", "/usr", "/etc", "/tmp", "/proc", "/dev"}
        for src, read_only in binds:
            if src == "/usr" or src.startswith("/usr/"):
                continue
            for parent in reversed(Path(src).parents):
                if str(parent) not in made:
                    argv += ["--perms", "0755", "--dir", str(parent)]
                    made.add(str(parent))
            argv += ["--ro-bind" if read_only else "--bind", src, src]
        argv += ["--remount-ro", "/dev", "--chdir", str(workspace), "--", *init, encode_plan(plan), "--"]
        return argv


class UnshareSandbox(_SandboxBase):
    """util-linux `unshare`: new mount, network, PID, IPC and UTS namespaces (plus a user namespace when
    not root), over the host's own root.

    Protects: the network (empty network namespace), other processes (PID namespace, killed as a whole),
    /root, /home, /tmp, /var/tmp, /dev/shm, /run, /mnt, /media and /srv (hidden under empty tmpfs mounts;
    Python, the tool's import roots and the workspace are bound back, read-only except the workspace),
    privileges (uid 65534 when started as root, no capabilities, NO_NEW_PRIVS), resources (rlimits).

    The seccomp filter refuses ptrace, io_uring, bpf, mounts, new namespaces... and sockets other than unix
    ones.

    Does NOT protect against: reading any other world-readable file of the host (/etc/passwd, /opt, /srv,
    other projects' sources), writing to world-writable directories outside the hidden ones, connecting to
    unix sockets outside the hidden directories, kernel exploits through the system calls that stay allowed.
    When metagent is not root, the command keeps the user's own file permissions everywhere that is not
    hidden.
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
        "unix sockets of the host outside the hidden directories",
        "kernel exploits through the system calls that stay allowed (shared kernel)",
    )

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("unshare") or "unshare"

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        argv = [self.executable, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
        argv += ["--mount-proc", "--propagation", "private"]
        if os.geteuid() != 0:
            argv += ["--user", "--map-root-user"]
            plan["drop_bounding_caps"] = True
            plan["limits"]["processes"] = MAX_PROCESSES  # counted in the new user namespace: ours alone
        plan["seccomp"] = {"socket_families": [seccomp.AF_UNIX]}
        plan.update(mounts=[[src, ro] for src, ro in binds], hide=list(HIDDEN_DIRS), tmpfs_bytes=TMPFS_BYTES)
        return [*argv, "--", *init, encode_plan(plan), "--"]


class LandlockSandbox(_SandboxBase):
    """Landlock + seccomp, no namespaces: for hosts where user namespaces (so bwrap and unshare) are off.

    The init program stays outside as a supervisor (a child subreaper) and runs the command in a child that
    is under a Landlock ruleset (tools/landlock.py, ABI 6 or later) and the seccomp filter with socket()
    refused for every family (socketpair still works).

    Protects: host files (opening, listing, executing and writing are denied everywhere except: read and
    execute under /usr, /bin, /lib*, the dynamic loader's /etc files, Python's directories and the tool's
    import roots; read-write in the workspace and /dev/null; no /proc, /tmp, /dev/shm, /home, /etc/passwd),
    the network (no socket() at all; Landlock also refuses TCP bind/connect), other processes (Landlock
    scopes signals and abstract unix sockets to the sandbox's own processes; no ptrace), leftovers (the
    supervisor kills every remaining descendant, setsid'ed and double-forked ones included, when the
    command ends or the host stops the call), privileges (uid 65534 when started as root, NO_NEW_PRIVS),
    the kernel's riskier interfaces (seccomp), resources (rlimits).

    Does NOT protect against: kernel exploits through the allowed system calls, file metadata (stat and
    readlink work anywhere, so names and sizes of host files can be probed), a shared PID and IPC view (it
    can see that other processes exist through their effects, and System V IPC objects of its uid are
    reachable), other processes' use of the same uid 65534 when metagent runs as root, covert timing
    channels. As root, Python and the tool's import roots must be reachable by uid 65534 (no parent
    directory like a 0700 /root on the way): the probe says so when they are not.
    """

    name = "landlock"
    protects = (
        "host files: read only under /usr, /lib*, Python and the tool's roots; write only in the workspace",
        "network: socket() refused for every family (seccomp), TCP bind/connect refused (Landlock)",
        "processes: cannot signal or ptrace anything outside the sandbox; leftovers killed by a supervisor",
        "privileges: runs as uid 65534 when metagent runs as root; no_new_privs",
        "resources: CPU time, address space, process count, file size limits",
        "kernel surface: seccomp filter (no ptrace, io_uring, bpf, mounts, namespaces)",
    )
    does_not_protect = (
        "file metadata: stat/readlink of any host path still work",
        "System V IPC objects of the same uid (no IPC namespace)",
        "kernel exploits through the system calls that stay allowed (shared kernel)",
    )

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        read_only = [*(src for src, ro in binds if ro), *LANDLOCK_SYSTEM_PATHS]
        plan["landlock"] = {"read_only": read_only, "read_write": [src for src, ro in binds if not ro]}
        plan["supervise"] = True
        plan["seccomp"] = {"socket_families": []}  # without a network namespace, no family is safe
        return [*init, encode_plan(plan), "--"]


class ProcessSandbox(_SandboxBase):
    """NOT A SANDBOX. A separate process with rlimits, a scrubbed environment, its own process group, the
    seccomp filter (every socket family allowed) and, when metagent runs as root, uid 65534; nothing else.
    The first run in a process writes a warning on stderr that the code runs unsandboxed.

    Protects: secrets in the environment, root-only files (when started as root), runaway CPU/memory/
    processes/file sizes, ptrace/io_uring/bpf/namespaces (seccomp), leftover processes (a supervisor, a child
    subreaper like the landlock tier's, kills every descendant when the call ends).

    Does NOT protect: the network (fully available), every file the user can read or write, other
    processes of the same user (signals; when metagent is not root the code can kill the supervisor, and
    what it leaves behind then survives the call). The python tool refuses to run with it unless
    [tools] sandbox = "none" is set explicitly.
    """

    name = "none"
    isolated = False
    protects = (
        "environment secrets (allowlisted environment)",
        "root-only files when metagent runs as root (runs as uid 65534)",
        "resources: CPU time, address space, process count, file size limits",
        "kernel surface: seccomp filter (no ptrace, io_uring, bpf, mounts, namespaces)",
    )
    does_not_protect = (
        "NETWORK: fully available",
        "FILES: everything the user can read or write",
        "PROCESSES of the same user (when metagent is not root): the code can signal them, the supervisor "
        "included, and what it leaves behind then survives the call",
    )

    def run(self, argv: Sequence[str], **kwargs: Any) -> SandboxResult:
        _warn_unsandboxed()
        return super().run(argv, **kwargs)

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[tuple[str, bool]], workspace: Path) -> list[str]:
        plan["seccomp"] = {"socket_families": None, "required": False}  # best effort: it has the network anyway
        plan["supervise"] = True  # leftovers, setsid'ed daemons included, are killed when the call ends
        return [*init, encode_plan(plan), "--"]


@functools.cache
def _warn_unsandboxed() -> None:
    """Once per process: the user chose to run model-written code with their own rights."""
    sys.stderr.write(
        'metagent: WARNING: [tools] sandbox = "none": tool code runs UNSANDBOXED, with your full rights on '
        "your files, your processes and the network. Install bubblewrap or enable Landlock to sandbox it.\n"
    )
    sys.stderr.flush()


Tier = Literal["bwrap", "landlock", "unshare"]
TIERS: tuple[Tier, ...] = ("bwrap", "landlock", "unshare")  # the isolated ones, in the order "auto" tries them


def detect_sandbox(mode: SandboxMode = "auto") -> Sandbox:
    """The sandbox for a settings mode: "auto" takes bwrap, else landlock, else unshare, else the process-only
    fallback (which the python tool refuses); "bwrap"/"landlock"/"unshare" raise ConfigError when unusable
    here; "none" is the process-only fallback, chosen on purpose."""
    if mode == "none":
        return ProcessSandbox()
    if mode not in ("auto", *TIERS):
        raise ConfigError(f"unknown sandbox mode {mode!r}; use auto, bwrap, landlock, unshare or none.")
    for candidate in TIERS:
        if mode not in ("auto", candidate):
            continue
        problem = probe(candidate)
        if problem is None:
            return _tier(candidate)
        if mode == candidate:
            raise ConfigError(f"sandbox mode {mode!r} is not usable here: {problem}. {_INSTALL_HINT}")
    return ProcessSandbox()


_INSTALL_HINT = (
    "Install bubblewrap (apt-get install bubblewrap), allow user namespaces, boot a kernel with Landlock "
    '(6.12 or later), or set [tools] sandbox = "auto" to use what works.'
)


def _tier(name: Tier, executable: str | None = None) -> Sandbox:
    if name == "bwrap":
        return BwrapSandbox(executable)
    return UnshareSandbox(executable) if name == "unshare" else LandlockSandbox()


def landlock_problem() -> str | None:
    """Why this kernel's Landlock cannot hold the landlock tier, or None."""
    abi = landlock.abi_version()
    if abi == 0:
        return "Landlock is not enabled in this kernel (Linux 5.13+ with landlock in the lsm= boot list)"
    if abi < landlock.SIGNAL_SCOPE_ABI:
        return (f"Landlock ABI {abi} is too old: ABI {landlock.SIGNAL_SCOPE_ABI} (Linux 6.12) is needed to stop "
                "sandboxed code from signalling host processes")  # fmt: skip
    return None


@functools.cache
def probe(mode: Tier) -> str | None:
    """Why a tier does not work here, or None when it ran a Python command (cached per process: it spawns)."""
    problem = seccomp.available()
    if problem is not None:
        return f"seccomp filters are unavailable: {problem}"
    executable = None if mode == "landlock" else shutil.which(mode)
    if mode == "landlock":
        problem = landlock_problem()
    elif executable is None:
        problem = f"`{mode}` is not installed"
    if problem is not None:
        return problem
    label = f"`{executable}`" if executable else "the landlock sandbox"
    with tempfile.TemporaryDirectory(prefix="metagent-probe-") as scratch:
        try:
            result = _tier(mode, executable).run(
                [python_binary(), "-I", "-S", "-c", "print('ok')"],
                workspace=Path(scratch),
                timeout_s=20.0,
                memory_mb=256,
                output_cap_bytes=4096,
            )
        except OSError as e:
            return f"{label} could not start: {e}"
    if result.exit_code == 0 and result.stdout.strip() == "ok":
        return None
    detail = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}"])[-1]
    return f"{label} failed a test run: {detail}"


def describe_sandbox(mode: SandboxMode = "auto") -> dict[str, Any]:
    """What `metagent doctor` shows: the active sandbox, why it was chosen, what it does and does not do,
    every tier with why it is (not) usable, the Landlock ABI and whether seccomp is applied."""
    problems = {m: probe(m) for m in TIERS}
    abi = landlock.abi_version()
    no_seccomp = seccomp.available()
    kernel = {
        "landlock_abi": abi or "not available",
        "seccomp": f"NOT available: {no_seccomp}"
        if no_seccomp
        else "applied in every tier (filter in tools/seccomp.py)",
        "modes": {m: ("usable" if p is None else p) for m, p in problems.items()},
    }
    try:
        sandbox = detect_sandbox(mode)
    except ConfigError as e:
        return {"requested": mode, "active": None, "isolated": False, "why": str(e), **kernel}
    impl: Any = sandbox
    if sandbox.name == "none":
        why = (
            "NOT SANDBOXED: [tools] sandbox = 'none' was chosen: tool code runs with your full rights and network"
            if mode == "none"
            else "NOT SANDBOXED: no tier works here ("
            + "; ".join(f"{m}: {p}" for m, p in problems.items())
            + "). The python tool is refused."
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
        **kernel,
    }
