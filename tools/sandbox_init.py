"""The first program inside the landlock, unshare and none sandboxes (bwrap does without it, see
tools/sandbox_bwrap.py): resource limits, mounts (unshare mode), privilege drop, Landlock
(landlock mode), seccomp, exec.

It runs as `python -I -S -c <bootstrap> <plan> -- <argv>` (the plan: a dict, marshalled, in hex), so it
needs nothing but the standard library and no file of this project inside the sandbox: the bootstrap
(tools.sandbox_plan.init_source) defines `tools.seccomp` and `tools.landlock` from their compiled code, then
runs this file's. Steps, in order:

1. rlimits (CPU seconds, address space, processes, file size, no core dumps, open files);
2. in unshare mode only, as root of the new mount namespace: hide host directories (/root, /home, /tmp,
   /run...) under empty tmpfs mounts, then bind back the directories the command needs (Python, the
   workspace read-write) at their own paths, read-only except the workspace;
3. in landlock mode only: become a child subreaper and fork (see `supervise`); the child goes on, under a
   Landlock ruleset built before the fork (tools/landlock.py);
4. when started as root: drop to the sandbox user (uid/gid 65534 by default) with no supplementary groups,
   so no capability is left; as root of a user namespace instead: empty the capability bounding set;
5. PR_SET_NO_NEW_PRIVS, so no setuid binary or file capability can raise privileges again;
6. chdir to the workspace, install the seccomp filter (tools/seccomp.py; which socket families are allowed
   comes from the plan), restore the signals Python ignores, and exec the command (PATH from the scrubbed
   environment).

Setup failures exit 125, an unrunnable command 126, a missing one 127, with a "sandbox:" line on stderr.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import sys
import time

from tools import landlock, seccomp

# Every millisecond of this program's start is paid on each sandboxed call, so it imports neither `typing`
# nor `signal` (both pull in enum and functools) nor `json` (re): `_signal` is the C module behind `signal`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any, NoReturn
else:
    import _signal as signal

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
            4096: MS_RELATIME}  # fmt: skip
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
SUPERVISOR_GRACE_S = 0.1  # shorter than the host's grace (tools/process.py), so cleanup ends before its SIGKILL
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STICKY_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
LIMITS = {
    "cpu_s": resource.RLIMIT_CPU,
    "address_space_bytes": resource.RLIMIT_AS,
    "processes": resource.RLIMIT_NPROC,
    "file_size_bytes": resource.RLIMIT_FSIZE,
    "core_bytes": resource.RLIMIT_CORE,
    "open_files": resource.RLIMIT_NOFILE,
}


class SetupError(Exception):
    pass


def main(args: list[str]) -> None:
    plan: dict[str, Any] = marshal.loads(bytes.fromhex(args[0]))
    argv = args[2:]
    if plan.get("supervise"):
        supervise(plan, argv)
    try:
        os.umask(0o022)
        set_limits(plan["limits"])
        if plan.get("mounts") is not None:
            mount_view(plan["mounts"], plan.get("hide", []), plan.get("tmpfs_bytes", 64 << 20))
        enter(plan)
    except (SetupError, OSError, seccomp.SeccompError) as e:
        fail(125, str(e))
    execute(argv, plan)


def enter(plan: dict[str, Any]) -> None:
    """The steps every mode shares, after which only exec is left: drop privileges, NO_NEW_PRIVS, enter the
    workspace, install the seccomp filter (last: it would refuse some of the steps before)."""
    if plan.get("uid") is not None:
        drop_user(int(plan["uid"]), int(plan["gid"]))
    elif plan.get("drop_bounding_caps") and os.getuid() == 0:
        # Root of a user namespace: exec would hand it every capability of the namespace again.
        drop_bounding_caps()
    libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    try:
        os.chdir(plan["cwd"])
    except OSError as e:
        raise SetupError(f"cannot enter the workspace {plan['cwd']}: {e.strerror}{_hint(plan)}") from e
    rules = plan.get("seccomp")
    if rules is not None:
        families = rules.get("socket_families")
        try:
            seccomp.install(None if families is None else tuple(families))
        except seccomp.SeccompError:
            if rules.get("required", True):
                raise


def execute(argv: list[str], plan: dict[str, Any]) -> NoReturn:
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec, so give them back.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, *STOP_SIGNALS):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        fail(127, f"command not found: {argv[0]}")
    except OSError as e:
        fail(126, f"cannot execute {argv[0]}: {e.strerror}{_hint(plan)}")


def supervise(plan: dict[str, Any], argv: list[str]) -> NoReturn:
    """Landlock and process-only modes: stay outside the sandbox as a child subreaper, run the command in a
    child (under Landlock in landlock mode), and
    when it ends (or the host sends SIGTERM/SIGINT/SIGHUP, or the host dies: PR_SET_PDEATHSIG) kill every
    process left below, including double-forked and setsid'ed daemons, which the kernel reparents here.
    Exits like the command did.

    The child cannot signal or ptrace this process: Landlock's signal scope (ABI 6) and the seccomp filter
    stop it, and /proc is outside its rules. Not covered: if this process is SIGKILLed (the host escalates
    only after its grace, longer than ours), whatever is left is reparented to the host's subreaper or init.
    """
    rules = plan.get("landlock")
    try:
        os.umask(0o022)
        set_limits(plan["limits"])
        ruleset = None if rules is None else landlock.build_ruleset(rules["read_only"], rules["read_write"])
        for option, value in ((PR_SET_CHILD_SUBREAPER, 1), (PR_SET_PDEATHSIG, signal.SIGTERM)):
            if libc().prctl(option, value, 0, 0, 0) != 0:
                raise SetupError(f"prctl({option}) failed: {os.strerror(ctypes.get_errno())}")
    except (SetupError, OSError, landlock.LandlockError) as e:
        fail(125, str(e))
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until each side has its handlers
    pid = os.fork()
    if pid == 0:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            if ruleset is not None:
                landlock.restrict_self(ruleset)
            enter(plan)
        except (SetupError, OSError, landlock.LandlockError, seccomp.SeccompError) as e:
            fail(125, str(e))
        execute(argv, plan)
    if ruleset is not None:
        os.close(ruleset)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the command alone reads the input: its end of the pipe closes with it
    os.close(null)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _, status = os.waitpid(pid, 0)
    kill_descendants()
    exit_like(status)


def _stop(signum: int, frame: object) -> None:
    """The host wants the call over: TERM what is below, a short grace, then KILL it all; then die of the
    same signal, as the command would have."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for pid in children():
        _signal(pid, signal.SIGTERM)
    end = time.monotonic() + SUPERVISOR_GRACE_S
    while reap() and time.monotonic() < end:
        time.sleep(0.005)
    kill_descendants()
    exit_like(signum)  # a raw signal number is a valid wait status: "killed by signum"


def children() -> list[int]:
    """This process's children, from /proc (CONFIG_PROC_CHILDREN's children files are often missing).

    The same /proc/*/stat scan as tools.proctree.tree_rss_bytes, kept apart on purpose: inside the sandbox
    only the modules the bootstrap carries (tools/sandbox_plan.py) exist, and each one added costs every call."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def reap() -> bool:
    """Reap every child that has exited; False once no child is left at all."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        return False
    return True


def kill_descendants() -> None:
    """SIGKILL the children until none is left. Only direct children are signalled: they cannot be reaped by
    anyone else, so their pids cannot have been reused. Killing one reparents its own children here (we are
    a subreaper), and the next round gets them."""
    while reap():
        for pid in children():
            _signal(pid, signal.SIGKILL)
        time.sleep(0.001)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def exit_like(status: int) -> NoReturn:
    """Exit with the command's wait status: the same exit code, or death by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"sandbox: {message}\n")
    sys.stderr.flush()
    os._exit(code)


def _hint(plan: dict[str, Any]) -> str:
    if plan.get("uid") is None:
        return ""
    return (
        f" (the sandbox runs as uid {plan['uid']}: it needs read and execute permission on the path and "
        "every parent directory; use the bwrap or unshare sandbox, which mount what they need)"
    )


def libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def set_limits(limits: dict[str, int]) -> None:
    for key, value in limits.items():
        which = LIMITS[key]
        _, hard = resource.getrlimit(which)
        target = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (target, target))


def mount_view(mounts: list[list[Any]], hide: list[str], tmpfs_bytes: int) -> None:
    """Hide `hide` under tmpfs, then bind each [source, read_only] back at its own path."""
    lib = libc()
    # Open the sources first: once their parent is hidden, only these descriptors still reach them.
    opened = [(os.open(src, os.O_PATH | os.O_DIRECTORY), src, bool(ro)) for src, ro in mounts]
    for path in hide:
        if os.path.isdir(path) and not os.path.islink(path):
            mode = "1777" if path in STICKY_DIRS else "0755"
            _mount(lib, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={tmpfs_bytes}")
    for fd, dest, read_only in opened:
        os.makedirs(dest, exist_ok=True)
        _mount(lib, f"/proc/self/fd/{fd}", dest, None, MS_BIND | MS_REC, None)
        # Keep the flags the kernel locks on a mount we do not own (user namespace), add ours.
        kept = sum(ms for st, ms in ST_TO_MS.items() if os.statvfs(dest).f_flag & st)
        flags = kept | MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
        if not read_only:
            flags &= ~MS_RDONLY
        _mount(lib, None, dest, None, flags, None)
        os.close(fd)


def _mount(lib: Any, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    if lib.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise SetupError(f"mount {source or ''} on {target} failed: {os.strerror(err)}")


def drop_user(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SetupError(f"could not drop privileges to uid {uid}")


def drop_bounding_caps() -> None:
    """Root of a user namespace would get every capability back on exec; an empty bounding set prevents it."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    lib = libc()
    for cap in range(last + 1):
        if lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SetupError(f"could not drop capability {cap}: {os.strerror(ctypes.get_errno())}")
    with open("/proc/self/status") as f:
        inheritable = next(line.split()[1] for line in f if line.startswith("CapInh:"))
    if int(inheritable, 16) != 0:
        raise SetupError("inheritable capabilities are set; refusing to run the command with them")


if __name__ == "__main__":
    main(sys.argv[1:])
