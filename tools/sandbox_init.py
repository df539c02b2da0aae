"""The first program inside every sandbox: resource limits, mounts (unshare mode), privilege drop, exec.

It runs as `python -I -S -c <this file's source> <plan as JSON> -- <argv>`, so it needs nothing but the
standard library and no file of this project inside the sandbox. Steps, in order:

1. rlimits (CPU seconds, address space, processes, file size, no core dumps, open files);
2. in unshare mode only, as root of the new mount namespace: hide host directories (/root, /home, /tmp,
   /run...) under empty tmpfs mounts, then bind back the directories the command needs (Python, the
   workspace read-write) at their own paths, read-only except the workspace;
3. when started as root: drop to the sandbox user (uid/gid 65534 by default) with no supplementary groups,
   so no capability is left; as root of a user namespace instead: empty the capability bounding set;
4. PR_SET_NO_NEW_PRIVS, so no setuid binary or file capability can raise privileges again;
5. chdir to the workspace and exec the command (PATH from the scrubbed environment).

Setup failures exit 125, an unrunnable command 126, a missing one 127, with a "sandbox:" line on stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
            4096: MS_RELATIME}  # fmt: skip
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
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
    plan: dict[str, Any] = json.loads(args[0])
    argv = args[2:]
    try:
        os.umask(0o022)
        set_limits(plan["limits"])
        if plan.get("mounts") is not None:
            mount_view(plan["mounts"], plan.get("hide", []), plan.get("tmpfs_bytes", 64 << 20))
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
    except (SetupError, OSError) as e:
        fail(125, str(e))
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        fail(127, f"command not found: {argv[0]}")
    except OSError as e:
        fail(126, f"cannot execute {argv[0]}: {e.strerror}{_hint(plan)}")


def fail(code: int, message: str) -> None:
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
