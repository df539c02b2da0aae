"""A seccomp filter for sandboxed code: the kernel refuses the system calls that code has no business making.

Standard library only (ctypes): `tools.sandbox_init` installs it as the last step before exec, inside every
sandbox tier, and it is injected there as source text (no project file is on disk inside the sandbox).

The filter is classic BPF, built from the tables below, checked in this order:

1. the calling convention must be the one this table was written for (x86_64 or aarch64), else the
   process is killed: on x86_64 this stops 32-bit `int 0x80` calls, whose numbers mean other calls;
2. on x86_64, x32 calls (number >= 0x40000000, another numbering of the same calls) fail with EPERM;
3. every call in DENIED fails with EPERM, and clone3 with ENOSYS (glibc then falls back to clone, whose
   flags a filter can read: clone3 passes them in memory, which a filter cannot);
4. calls in ARGUMENT_RULES are checked on one argument (low 32 bits, which is all the kernel reads of
   those int arguments): clone with a namespace flag, socket with an address family not allowed, ioctl
   TIOCSTI/TIOCLINUX, personality other than the default;
5. everything else is allowed.

Does NOT protect against: bugs in the calls that stay allowed (read, write, mmap, futex... a kernel
exploit through them still works), file access (that is the mount view's or Landlock's job), resource use
(rlimits), or anything already open before the filter was installed. The filter is inherited by every
child and cannot be removed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# classic BPF opcodes: load word at absolute offset, jumps on a constant, return a constant
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
NR_OFFSET, ARCH_OFFSET = 0, 4  # struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6]
X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1

# machine -> (AUDIT_ARCH_* value, column in SYSCALLS)
ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}

# name -> (x86_64 number, aarch64 number); None where the call does not exist on that architecture.
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "kcmp": (312, 272),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    "unshare": (272, 97), "setns": (308, 268),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "syslog": (103, 116), "quotactl": (179, 60), "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18), "fanotify_init": (300, 262),
    "uselib": (134, None), "iopl": (172, None), "ioperm": (173, None),
    "personality": (135, 92), "ioctl": (16, 29), "clone": (56, 220), "clone3": (435, 435), "socket": (41, 198),
}  # fmt: skip

# Each denied call, with why sandboxed code must not have it. They fail with EPERM.
DENIED: dict[str, str] = {
    "ptrace": "reads and writes the memory and registers of other processes of the same user",
    "process_vm_readv": "reads another process's memory",
    "process_vm_writev": "writes another process's memory",
    "pidfd_getfd": "copies an open file descriptor out of another process",
    "kcmp": "compares kernel objects of other processes (an information leak, ptrace-gated)",
    "io_uring_setup": "io_uring runs file and network operations that seccomp never sees; many kernel bugs",
    "io_uring_enter": "see io_uring_setup",
    "io_uring_register": "see io_uring_setup",
    "bpf": "loads programs into the kernel; a frequent exploit path",
    "perf_event_open": "kernel profiling: side channels and a frequent exploit path",
    "userfaultfd": "pauses the kernel mid-copy, the classic way to win kernel races",
    "keyctl": "the kernel keyring is shared by the user's processes and not namespaced",
    "add_key": "see keyctl",
    "request_key": "see keyctl",
    "mount": "changes the mount view the sandbox relies on",
    "umount2": "could uncover what the sandbox's mounts hide",
    "pivot_root": "changes the root the sandbox set up",
    "chroot": "with an open directory, a way out of a chroot-like view",
    "open_tree": "new mount API: same power as mount",
    "move_mount": "new mount API: same power as mount",
    "fsopen": "new mount API: same power as mount",
    "fsconfig": "new mount API: same power as mount",
    "fsmount": "new mount API: same power as mount",
    "fspick": "new mount API: same power as mount",
    "mount_setattr": "new mount API: changes mount flags (e.g. drops read-only)",
    "open_tree_attr": "new mount API: same power as mount",
    "unshare": "new namespaces (a user namespace gives root-like capabilities inside: a large attack surface)",
    "setns": "joins another namespace",
    "kexec_load": "replaces the running kernel",
    "kexec_file_load": "replaces the running kernel",
    "init_module": "loads kernel code",
    "finit_module": "loads kernel code",
    "delete_module": "unloads kernel code",
    "reboot": "reboots or halts the machine",
    "swapon": "changes the machine's swap",
    "swapoff": "changes the machine's swap",
    "acct": "process accounting for the whole machine",
    "name_to_handle_at": "file handles bypass path checks (the 'shocker' container escape)",
    "open_by_handle_at": "opens any file of a mounted file system by handle, outside the sandbox's view",
    "syslog": "reads the kernel log (addresses that defeat KASLR)",
    "quotactl": "changes disk quotas",
    "quotactl_fd": "changes disk quotas",
    "lookup_dcookie": "kernel profiling helper, not needed",
    "fanotify_init": "watches file access machine-wide",
    "uselib": "obsolete library loader",
    "iopl": "direct hardware I/O port access",
    "ioperm": "direct hardware I/O port access",
}

CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
PERSONALITY_DEFAULT, PERSONALITY_QUERY = 0x0, 0xFFFFFFFF


class SeccompError(Exception):
    """The filter cannot be built for this machine or the kernel refused it."""


def _stmt(code: int, k: int) -> tuple[int, int, int, int]:
    return (code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> tuple[int, int, int, int]:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise SeccompError(f"BPF jump out of range ({jt}, {jf})")
    return (code, jt, jf, k)


def _arg_low(index: int) -> tuple[int, int, int, int]:
    """Load the low 32 bits of argument `index` (both supported architectures are little-endian)."""
    return _stmt(LD_ABS, 16 + 8 * index)


def _errno(code: int) -> tuple[int, int, int, int]:
    return _stmt(RET, RET_ERRNO | code)


def _check_arg(nr: int, body: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """If the call is `nr`, run body (which always returns); else fall through to the next check.

    Every check reloads the call number first, because body overwrote the accumulator."""
    return [_stmt(LD_ABS, NR_OFFSET), _jump(JEQ, nr, 0, len(body)), *body]


def _clone_rule() -> list[tuple[int, int, int, int]]:
    # flags are argument 0 on both architectures; namespace flags fail, every other clone is allowed
    return [_arg_low(0), _jump(JSET, CLONE_NAMESPACES, 0, 1), _errno(errno.EPERM), _stmt(RET, RET_ALLOW)]


def _socket_rule(families: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    body = [_arg_low(0)]
    for i, family in enumerate(families):
        # jump over the remaining family checks and the EPERM return to the ALLOW
        body.append(_jump(JEQ, family, len(families) - i, 0))
    return [*body, _errno(errno.EPERM), _stmt(RET, RET_ALLOW)]


def _ioctl_rule() -> list[tuple[int, int, int, int]]:
    # TIOCSTI pushes keystrokes into the terminal's input; TIOCLINUX can read and paste the console
    return [_arg_low(1), _jump(JEQ, TIOCSTI, 2, 0), _jump(JEQ, TIOCLINUX, 1, 0), _stmt(RET, RET_ALLOW),
            _errno(errno.EPERM)]  # fmt: skip


def _personality_rule() -> list[tuple[int, int, int, int]]:
    # other personalities switch off address randomisation or map page 0 (READ_IMPLIES_EXEC, MMAP_PAGE_ZERO...)
    return [_arg_low(0), _jump(JEQ, PERSONALITY_DEFAULT, 1, 0), _jump(JEQ, PERSONALITY_QUERY, 0, 1),
            _stmt(RET, RET_ALLOW), _errno(errno.EPERM)]  # fmt: skip


def build_filter(machine: str, socket_families: tuple[int, ...] | None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions. `socket_families`: the address families socket() may
    create (e.g. (AF_UNIX,)); None allows every family (the process-only mode, which has the network)."""
    if machine not in ARCHES:
        raise SeccompError(f"no system call table for machine {machine!r} (supported: {', '.join(ARCHES)})")
    audit_arch, column = ARCHES[machine]
    numbers: dict[str, int] = {}
    for name, nums in SYSCALLS.items():
        number = nums[column]
        if number is not None:
            numbers[name] = number
    prog = [_stmt(LD_ABS, ARCH_OFFSET), _jump(JEQ, audit_arch, 1, 0), _stmt(RET, RET_KILL_PROCESS)]
    prog.append(_stmt(LD_ABS, NR_OFFSET))
    if machine == "x86_64":
        prog += [_jump(JGE, X32_SYSCALL_BIT, 0, 1), _errno(errno.EPERM)]
    for name in DENIED:
        if name in numbers:
            prog += [_jump(JEQ, numbers[name], 0, 1), _errno(errno.EPERM)]
    prog += [_jump(JEQ, numbers["clone3"], 0, 1), _errno(errno.ENOSYS)]
    rules = [("clone", _clone_rule()), ("ioctl", _ioctl_rule()), ("personality", _personality_rule())]
    if socket_families is not None:
        rules.append(("socket", _socket_rule(tuple(socket_families))))
    for name, body in rules:
        prog += _check_arg(numbers[name], body)
    prog.append(_stmt(RET, RET_ALLOW))
    return prog


def packed_filter(socket_families: tuple[int, ...] | None, machine: str | None = None) -> bytes:
    """The filter as the kernel reads it (struct sock_filter, 8 bytes each): what `install` loads, and what
    bubblewrap's `--seccomp FD` reads."""
    prog = build_filter(machine or os.uname().machine, socket_families)
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def install(socket_families: tuple[int, ...] | None, machine: str | None = None) -> None:
    """Set NO_NEW_PRIVS and install the filter on the calling thread (the sandbox init is single-threaded);
    it is inherited by every process started after. Raises SeccompError when the kernel refuses."""
    packed = packed_filter(socket_families, machine)
    buffer = ctypes.create_string_buffer(packed, len(packed))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(packed) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompError(f"PR_SET_NO_NEW_PRIVS failed: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise SeccompError(f"the kernel refused the seccomp filter: {os.strerror(ctypes.get_errno())}")


def available() -> str | None:
    """Why seccomp filters cannot be used here, or None when the kernel supports them."""
    if os.uname().machine not in ARCHES:
        return f"no system call table for machine {os.uname().machine!r}"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().split()
    except OSError:
        return "the kernel has no seccomp filter support (/proc/sys/kernel/seccomp/actions_avail is missing)"
    missing = {"errno", "kill_process", "allow"} - set(actions)
    return f"the kernel lacks seccomp actions {sorted(missing)}" if missing else None
