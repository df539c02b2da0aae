"""Sandboxes for untrusted code: the built-in Python tool and every tool marked sandboxed.

Four tiers, strongest first; `detect_sandbox("auto")` picks the first that works here:

    BwrapSandbox     bubblewrap: a new root with only /usr, Python and the workspace; no network
    LandlockSandbox  no namespaces (for hosts without user namespaces): Landlock file rules, no sockets,
                     signal scoping, a supervisor that kills every leftover process
    UnshareSandbox   util-linux unshare: new mount/net/pid/ipc/uts namespaces over the host's root
    ProcessSandbox   NOT a sandbox: a separate process with limits and a dropped user, nothing more

All of them run the command as a separate process in its own session and process group with rlimits (CPU
from the timeout, address space from memory_mb, a few processes, 64 MiB files, no core dumps), NO_NEW_PRIVS
and, last before exec, the seccomp filter of tools/seccomp.py, which refuses ptrace, io_uring, bpf, mounts,
new namespaces, keyrings, kernel modules... and, in the isolated tiers, sockets other than unix ones; with
an environment built from an allowlist (nothing secret is inherited), cwd and HOME set to the workspace,
stdout+stderr capped (the child is killed once the cap is hit), and the whole process group killed on
timeout. landlock, unshare and none do these steps in `sandbox_init` (a Python started before the command);
bwrap (tools/sandbox_bwrap.py) does them with prlimit, bwrap itself and setpriv, without a second Python.
The parts all tiers share (staging, limits, host-side stops) are in tools/sandbox_base.py.

When this process runs as root, the command runs as uid/gid 65534 ("nobody"), never as root, so root-owned
files stay unreadable even where they are visible.

The command never sees the workspace itself: it works in a staging copy (tools/staging.py), size-capped while
it runs, whose regular files are copied back when the call is over (links, FIFOs and devices never are).

None of them is a security boundary against a kernel exploit: they share the host kernel. The seccomp
filter narrows the kernel's attack surface; it does not remove it.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from agent.errors import ConfigError
from tools import landlock, seccomp
from tools.process import SandboxResult
from tools.sandbox_base import (
    MAX_PROCESSES,
    SANDBOX_UID,
    TMPFS_BYTES,
    Bind,
    Sandbox,
    SandboxBase,
)
from tools.sandbox_bwrap import BwrapSandbox, helpers_problem
from tools.sandbox_plan import encode_plan, python_binary

SandboxMode = Literal["auto", "bwrap", "landlock", "unshare", "none"]
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


class UnshareSandbox(SandboxBase):
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

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[Bind], workspace: Path) -> list[str]:
        argv = [self.executable, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
        argv += ["--mount-proc", "--propagation", "private"]
        if os.geteuid() != 0:
            argv += ["--user", "--map-root-user"]
            plan["drop_bounding_caps"] = True
            plan["limits"]["processes"] = MAX_PROCESSES  # counted in the new user namespace: ours alone
        plan["seccomp"] = {"socket_families": [seccomp.AF_UNIX]}
        plan.update(mounts=[[src, ro] for src, ro in binds], hide=list(HIDDEN_DIRS), tmpfs_bytes=TMPFS_BYTES)
        return [*argv, "--", *init, encode_plan(plan), "--"]


class LandlockSandbox(SandboxBase):
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

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[Bind], workspace: Path) -> list[str]:
        read_only = [*(src for src, ro in binds if ro), *LANDLOCK_SYSTEM_PATHS]
        plan["landlock"] = {"read_only": read_only, "read_write": [src for src, ro in binds if not ro]}
        plan["supervise"] = True
        plan["seccomp"] = {"socket_families": []}  # without a network namespace, no family is safe
        return [*init, encode_plan(plan), "--"]


class ProcessSandbox(SandboxBase):
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

    def _wrap(self, init: list[str], plan: dict[str, Any], binds: list[Bind], workspace: Path) -> list[str]:
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
    elif mode == "bwrap":
        problem = helpers_problem()
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
