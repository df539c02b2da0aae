"""Tier (a): bubblewrap, started without a Python init program (each sandboxed call pays for one
interpreter, the command's own, not two).

The chain, all exec'ed in one process, which is the child the host watches and kills by process group:

    prlimit --cpu --as --nproc --fsize --core --nofile --      rlimits (util-linux)
      bwrap <namespaces, new root, /proc, /dev, tmpfs> --seccomp FD --chdir WORKSPACE --
        [as root:] setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --no-new-privs --
          the command

bwrap loads the seccomp filter (tools/seccomp.py, passed as a memfd) and sets NO_NEW_PRIVS just before it
execs, so the filter covers setpriv and the command. As root, bwrap runs without a user namespace (so it can
bind directories uid 65534 cannot reach, like a Python under a 0700 /root) and hands the command only
CAP_SETUID and CAP_SETGID, which setpriv uses to become uid/gid 65534 and which that change of uid clears.
As another user, bwrap adds a user namespace (no nested ones: --disable-userns) and drops every capability.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from tools import seccomp
from tools.process import ProcessLimits, SandboxResult, run_process
from tools.sandbox_base import TMPFS_BYTES, Bind, SandboxBase, SandboxCall
from tools.sandbox_plan import sandbox_env

PRLIMIT_OPTIONS = {"cpu_s": "--cpu", "address_space_bytes": "--as", "processes": "--nproc",
                   "file_size_bytes": "--fsize", "core_bytes": "--core", "open_files": "--nofile"}  # fmt: skip
RLIMITS = {"cpu_s": resource.RLIMIT_CPU, "address_space_bytes": resource.RLIMIT_AS, "processes": resource.RLIMIT_NPROC,
           "file_size_bytes": resource.RLIMIT_FSIZE, "core_bytes": resource.RLIMIT_CORE,
           "open_files": resource.RLIMIT_NOFILE}  # fmt: skip
HELPERS = ("prlimit", "setpriv")  # util-linux, next to bwrap


class BwrapSandbox(SandboxBase):
    """bubblewrap: the command sees a new, mostly empty root.

    Protects: the host's files (only /usr, /lib*, the dynamic loader's /etc files, Python's directories and
    the tool's import roots are visible, read-only; the workspace is the only writable host directory; /tmp is
    a private 64 MiB tmpfs; no /root, /home, /run, secrets or sockets), the network (empty network
    namespace: no interfaces but its own loopback), other processes (new PID and IPC namespaces), the
    terminal (new session), privileges (uid 65534 with no groups when started as root, no capabilities,
    NO_NEW_PRIVS), resources (rlimits, set by prlimit before bwrap starts),
    the kernel's riskier interfaces (seccomp, loaded by bwrap before exec: no ptrace, io_uring, bpf, perf,
    userfaultfd, keyrings, mounts, new namespaces, kernel modules, TIOCSTI; socket() only for AF_UNIX).

    Does NOT protect against: kernel exploits through the system calls that stay allowed (shared kernel),
    reading world-readable files under /usr, using the CPU and memory within its limits, or covert timing
    channels. When metagent is not root, the process limit counts every process of the user (the sandbox
    gets the user's current count plus 64), as in the tiers without a user namespace.
    """

    name = "bwrap"
    protects = (
        "host files: only /usr, Python and the workspace are visible; only the workspace is writable",
        "network: empty network namespace",
        "processes: own PID/IPC/UTS namespaces, killed as a whole on timeout",
        "privileges: runs as uid 65534 when metagent runs as root; no capabilities; no_new_privs",
        "resources: CPU time, address space, process count, file size limits",
        "kernel surface: seccomp filter (no ptrace, io_uring, bpf, mounts, namespaces; only unix sockets)",
    )
    does_not_protect = ("kernel exploits through the system calls that stay allowed (shared kernel)",)

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def _launch(
        self, call: SandboxCall, plan: dict[str, Any], binds: list[Bind], stops: ProcessLimits
    ) -> SandboxResult:
        helpers = {name: shutil.which(name) for name in HELPERS}
        problem = helpers_problem()
        if problem is not None:
            raise ConfigError(f"the bwrap sandbox cannot start: {problem}.")
        workspace = Path(plan["cwd"])
        drop: list[str] = []
        if plan.get("uid") is not None:
            drop = [str(helpers["setpriv"]), "--reuid", str(plan["uid"]), "--regid", str(plan["gid"]),
                    "--clear-groups", "--inh-caps=-all", "--no-new-privs", "--"]  # fmt: skip
        with _filter_fd() as filter_fd:
            command = [str(helpers["prlimit"]), *prlimit_options(plan["limits"]), "--", self.executable]
            command += [*self._options(binds, workspace), "--seccomp", str(filter_fd), "--", *drop, *call.argv]
            return run_process(command, sandbox_env(workspace), stops, stdin=call.stdin, pass_fds=(filter_fd,))

    def _options(self, binds: list[Bind], workspace: Path) -> list[str]:
        """bwrap's options before --seccomp: namespaces, privileges, and the new root."""
        argv = ["--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid"]
        argv += ["--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if os.geteuid() == 0:
            # No user namespace: setpriv needs these two to become uid 65534, which then leaves it none.
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
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
        return [*argv, "--remount-ro", "/dev", "--chdir", str(workspace)]


def helpers_problem() -> str | None:
    """Why the programs bwrap is started with are missing, or None."""
    missing = [name for name in HELPERS if shutil.which(name) is None]
    return f"{' and '.join(missing)} (util-linux) not installed" if missing else None


def prlimit_options(limits: dict[str, int]) -> list[str]:
    """prlimit's options for the plan's limits, soft = hard, never above the hard limit this process has
    (only root may raise one; sandbox_init.set_limits does the same)."""
    options = []
    for key, value in limits.items():
        _, hard = resource.getrlimit(RLIMITS[key])
        target = value if hard == resource.RLIM_INFINITY else min(value, hard)
        options.append(f"{PRLIMIT_OPTIONS[key]}={target}")
    return options


@functools.cache
def _unix_only_filter() -> bytes:
    return seccomp.packed_filter((seccomp.AF_UNIX,))


@contextmanager
def _filter_fd() -> Iterator[int]:
    """A memfd holding the seccomp filter (socket() for AF_UNIX only: the network namespace is empty anyway),
    at offset 0 for bwrap to read; closed here once the call is over."""
    fd = os.memfd_create("metagent-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, _unix_only_filter())
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


__all__ = ["BwrapSandbox", "helpers_problem", "prlimit_options"]
