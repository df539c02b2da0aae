"""Landlock: the kernel limits which files a process (and everything it starts) may open, without namespaces.

Standard library only (ctypes): `tools.sandbox_init` uses it inside the Landlock tier, where it is injected as
source text. The same system call numbers (444-446) serve x86_64 and aarch64.

`build_ruleset` handles every right the running kernel's ABI knows, so anything not granted is denied:

    filesystem   read+execute under the read-only roots, everything but device creation under the
                 read-write ones, read/write /dev/null, read /dev/urandom, /dev/random, /dev/zero; nothing
                 else (no /proc, no /etc beyond what the caller lists, no /tmp, no /dev/shm)
    network      ABI >= 4: TCP bind and connect are handled and no port is granted
    scopes       ABI >= 6: no connecting to abstract unix sockets and no signals to processes outside the
                 domain (so the code cannot kill or stop the supervisor or any other host process)

Does NOT restrict: path walks and metadata (stat, readlink work anywhere), chmod, chown, utime and xattrs
on files the process may reach by its permissions, UDP, raw and unix path sockets (the seccomp filter
stops socket() instead), or file descriptors opened before restrict_self.
"""

from __future__ import annotations

import ctypes
import os
import stat

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

# ABI -> every filesystem right it knows (REFER came in 2, TRUNCATE in 3, IOCTL_DEV in 5)
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may hold
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
READ_WRITE = ((1 << 16) - 1) & ~(MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV)
DEVICES = {"/dev/null": READ_FILE | WRITE_FILE | TRUNCATE, "/dev/zero": READ_FILE, "/dev/urandom": READ_FILE,
           "/dev/random": READ_FILE}  # fmt: skip
SIGNAL_SCOPE_ABI = 6


class LandlockError(Exception):
    """Landlock is missing, too old, or refused a rule."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The Landlock ABI of the running kernel, 0 when Landlock is not built in or not enabled at boot."""
    abi = _libc().syscall(CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def handled_rights(abi: int) -> tuple[int, int, int]:
    """(filesystem, network, scope) rights a ruleset handles at this ABI: all it knows."""
    fs = FS_RIGHTS_BY_ABI[min(abi, 5)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= SIGNAL_SCOPE_ABI else 0
    return fs, net, scoped


def build_ruleset(read_only: list[str], read_write: list[str], min_abi: int = SIGNAL_SCOPE_ABI) -> int:
    """A ruleset file descriptor granting READ_ONLY under `read_only`, READ_WRITE under `read_write` and the
    DEVICES, nothing else. Paths that do not exist are skipped. Call it before dropping privileges (it opens
    the paths); apply it with `restrict_self`."""
    abi = abi_version()
    if abi < min_abi:
        found = f"ABI {abi}" if abi else "not available"
        raise LandlockError(f"Landlock ABI {min_abi} or later is needed; this kernel's Landlock is {found}")
    fs, net, scoped = handled_rights(abi)
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with the ABI; older kernels want less
    libc = _libc()
    fd = int(libc.syscall(CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)))
    if fd < 0:
        raise LandlockError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        grants = [(p, READ_ONLY) for p in read_only] + [(p, READ_WRITE) for p in read_write] + list(DEVICES.items())
        for path, access in grants:
            _add_path(libc, fd, path, access & fs)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add_path(libc: ctypes.CDLL, ruleset_fd: int, path: str, access: int) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= FILE_RIGHTS
        rule = _PathBeneathAttr(access, target)
        if libc.syscall(ADD_RULE, ruleset_fd, RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise LandlockError(f"landlock_add_rule for {path} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)


def restrict_self(ruleset_fd: int) -> None:
    """Set NO_NEW_PRIVS and enforce the ruleset on the calling thread and everything it starts from now on;
    closes the descriptor. There is no way back."""
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise LandlockError(f"PR_SET_NO_NEW_PRIVS failed: {os.strerror(ctypes.get_errno())}")
    result = libc.syscall(RESTRICT_SELF, ruleset_fd, ctypes.c_uint32(0))
    os.close(ruleset_fd)
    if result != 0:
        raise LandlockError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
