"""What the escape battery reads on the host to judge an attempt: the process table, memory counters,
the workspace's files and links, protected files' state, and loopback listeners.

Nothing here trusts what the sandboxed code printed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READ_LIMIT_BYTES = 80 << 20
Address = tuple[str, int] | str  # an IP address and port, or a unix socket path ("\0..." abstract)


@dataclass(frozen=True)
class Proc:
    pid: int
    uid: int
    sid: int
    state: str
    comm: str
    threads: int
    rss_kb: int


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def proc_info(pid: int) -> Proc | None:
    """One process's row, or None when it is gone (or unreadable)."""
    status, stat_line = _read(f"/proc/{pid}/status"), _read(f"/proc/{pid}/stat")
    if status is None or stat_line is None:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    after_comm = stat_line.rsplit(")", 1)[-1].split()  # state ppid pgrp session ...
    return Proc(
        pid=pid,
        uid=int(fields.get("Uid", "-1").split()[0]),
        sid=int(after_comm[3]),
        state=after_comm[0],
        comm=fields.get("Name", "").strip(),
        threads=int(fields.get("Threads", "1").strip()),
        rss_kb=int(fields.get("VmRSS", "0 kB").split()[0]),
    )


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def suspects(tag: str, uid: int | None, spared: set[int], spared_sids: set[int]) -> list[Proc]:
    """Live (non-zombie) processes that belong to an attempt: named with its tag (inherited across fork),
    with the tag on their command line, or, when `uid` is given (a uid used by nothing but the battery),
    any process of that uid except the spared pids and sessions (the harness, the decoy)."""
    found = []
    for pid in pids():
        if pid in spared:
            continue
        tagged = (_read(f"/proc/{pid}/comm") or "").strip() == tag
        if not tagged and uid is None:
            tagged = tag in (_read(f"/proc/{pid}/cmdline") or "")
            if not tagged:
                continue
        info = proc_info(pid)  # its status, not the /proc entry's owner: a process that changed uid shows root
        if info is None or info.state == "Z" or info.sid in spared_sids:
            continue
        if tagged or info.uid == uid or tag in (_read(f"/proc/{pid}/cmdline") or ""):
            found.append(info)
    return found


def alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and info.state not in ("Z", "X")


def stopped_or_traced(pid: int) -> bool:
    """True when the process is stopped (T), traced (t) or has a tracer attached."""
    status = _read(f"/proc/{pid}/status") or ""
    tracer = next((line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:")), "0")
    info = proc_info(pid)
    return tracer != "0" or (info is not None and info.state in ("T", "t"))


def namespaces(pid: int, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def open_file_kinds(pid: int) -> set[str]:
    """The targets of a process's descriptors, e.g. 'anon_inode:[io_uring]'."""
    kinds = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                kinds.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return kinds


def meminfo_kb(key: str) -> int:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _read_regular(path: Path) -> bytes:
    """A regular file's first bytes, never blocking on a FIFO or a device (the host follows symlinks here,
    as a host tool reading the artifact would)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(READ_LIMIT_BYTES)
    finally:
        os.close(fd)


def walk(root: Path) -> Iterator[Path]:
    """Every entry under root, depth first without recursion (a tree may be thousands deep), never
    descending into a symlinked directory."""
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            yield Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)


def exposed(workspace: Path, secrets: list[str]) -> list[str]:
    """Workspace entries through which the host would now read one of the secrets."""
    found = []
    for path in walk(workspace):
        try:
            data = _read_regular(path)
        except OSError:
            continue
        found += [f"{path.relative_to(workspace)} holds {s[:8]}..." for s in secrets if s.encode() in data]
    return found


def unsafe_entries(workspace: Path, outside: list[Path]) -> list[str]:
    """Workspace entries a host tool must not meet: symlinks resolving outside the workspace, hard links to
    the given outside files, FIFOs, sockets and device nodes."""
    real_ws = os.path.realpath(workspace)
    inodes = {}
    for path in outside:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            inodes[(info.st_dev, info.st_ino)] = path
    found = []
    for path in walk(workspace):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        rel = path.relative_to(workspace)
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(path)
            if target != real_ws and not target.startswith(real_ws + os.sep):
                found.append(f"{rel} is a symlink to {target}")
        elif (info.st_dev, info.st_ino) in inodes:
            found.append(f"{rel} is a hard link to {inodes[(info.st_dev, info.st_ino)]}")
        elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            found.append(f"{rel} is a {stat.filemode(info.st_mode)[0]} node (FIFO, socket or device)")
    return found


def remove_tree(path: Path) -> None:
    """Delete a directory however deep an attempt made it (shutil.rmtree recurses, and fails on ~1000 levels)."""
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


def fingerprint(path: Path) -> tuple[object, ...]:
    """What must not change about a protected host file: existence, mode, owner, size, content."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ("absent",)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
    return (info.st_mode, info.st_uid, info.st_size, digest)


class Listener:
    """A host socket on loopback (TCP, UDP or unix) that records whether anything reached it."""

    def __init__(self, family: socket.AddressFamily, kind: socket.SocketKind, address: Address) -> None:
        self.sock = socket.socket(family, kind)
        self.sock.bind(address)
        self.kind = kind
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    def reached(self) -> bool:
        """Whether a connection or datagram arrived (pending or already waiting)."""
        try:
            if self.kind == socket.SOCK_STREAM:
                conn, _ = self.sock.accept()
                conn.close()
            else:
                self.sock.recvfrom(65536)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            raise
        return True

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def listening(family: socket.AddressFamily, kind: socket.SocketKind, address: Address) -> Iterator[Listener]:
    listener = Listener(family, kind, address)
    try:
        yield listener
    finally:
        listener.close()


def can_connect(family: socket.AddressFamily, address: Address) -> bool:
    """Whether the host reaches a listener at address right now (one quick try)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.05)
        try:
            s.connect(address)
        except OSError:
            return False
    return True
