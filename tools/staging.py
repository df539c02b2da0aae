"""A per-call copy of the workspace for sandboxed code, and the safe way its results come back.

Sandboxed code never writes the real workspace. Each call gets a staging directory holding a copy of the
workspace's regular files and directories; the sandbox sees only that copy (read-write). While the call runs,
`Staged.over_cap` is polled by the process runner, which kills the call once the copy holds more than the cap
(bytes or entries). When the call is over and every process of it is gone, `Staged.collect` brings the changes
back:

    new or changed regular files  copied into the workspace (written to a temporary name, then renamed)
    files deleted in the copy     deleted from the workspace, unless the workspace file changed meanwhile
    symlinks, hard links (a file with several links), FIFOs, sockets, devices
                                  never followed, never copied: listed as skipped

Walks go through directory descriptors and stop MAX_DEPTH levels down (a deeper tree stops the call while it
runs; what is deeper is neither copied in nor back); the copy is deleted without recursion, whatever its depth.

Every workspace operation goes through directory descriptors opened with O_NOFOLLOW, so a symlink planted in
the workspace by anything cannot redirect a write outside it. The cap is hard for the workspace itself (it
never grows past it through a sandboxed call); on the host disk the copy may overshoot it by what the code
writes in one poll interval (POLL_S) before it is killed, and it is deleted right after the call.

Not protected: two calls changing the same file at once (the later collection wins); the content of files the
code reads (it may read everything in the workspace).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ConfigError

POLL_S = 0.05
MAX_ENTRIES = 10_000  # files and directories in one staged copy
MAX_DEPTH = 32  # directory levels below the workspace that are copied and watched
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK

# (size, mtime_ns) of each regular file at copy time, by path relative to the workspace
Manifest = dict[str, tuple[int, int]]


@dataclass
class Changes:
    """What `collect` did, for the tool's report."""

    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self, limit: int = 20) -> str:
        """One line per kind, at most `limit` names each; empty when nothing changed."""
        lines = []
        for label, names in (("files written", self.written), ("files deleted", self.deleted),
                             ("not copied back (links, FIFOs, devices)", self.skipped)):  # fmt: skip
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                lines.append(f"[{label}: {', '.join(sorted(names)[:limit])}{more}]")
        return "\n".join(lines)


@dataclass
class Staged:
    """A staging copy of one workspace. Use `stage()` to make one."""

    root: Path
    cap_bytes: int
    manifest: Manifest
    _next_poll: float = 0.0

    def over_cap(self, pid: int = 0) -> str | None:
        """Why the call must stop (the copy is over its cap), or None. Cheap to call often: it walks the copy
        at most every POLL_S seconds. (`pid`, the call's process, is not needed: a ProcessLimits watch.)"""
        now = time.monotonic()
        if now < self._next_poll:
            return None
        size, entries, too_deep = _usage(self.root)
        # A big copy takes a while to walk: poll less often, so watching costs at most ~20% of a core.
        self._next_poll = now + max(POLL_S, 5 * (time.monotonic() - now))
        if size > self.cap_bytes:
            return f"the workspace grew past its cap of {_mib(self.cap_bytes)} ([tools] workspace_cap_mb)"
        if entries > MAX_ENTRIES:
            return f"the workspace grew past {MAX_ENTRIES} files and directories"
        if too_deep:
            return f"the workspace nests directories more than {MAX_DEPTH} levels deep"
        return None

    def collect(self, workspace: Path) -> Changes:
        """Bring the copy's changes back into the workspace (see the module docstring)."""
        changes = Changes()
        seen: set[str] = set()
        ws_fd = os.open(workspace, _OPEN_DIR)
        try:
            budget = [self.cap_bytes]
            too_deep: list[str] = []
            for rel, info in _walk(self.root, too_deep):
                if stat.S_ISDIR(info.st_mode):
                    continue
                seen.add(rel)
                if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                    changes.skipped.append(rel)
                elif self.manifest.get(rel) != (info.st_size, info.st_mtime_ns):
                    if _copy_back(self.root / rel, ws_fd, rel, budget):
                        changes.written.append(rel)
                    else:
                        changes.skipped.append(rel)
            changes.skipped += [f"{rel}/ (more than {MAX_DEPTH} levels deep)" for rel in too_deep]
            for rel, before in self.manifest.items():
                if rel not in seen and _delete_if_unchanged(ws_fd, rel, before):
                    changes.deleted.append(rel)
        finally:
            os.close(ws_fd)
        return changes

    def remove(self) -> None:
        remove_tree(self.root)


def stage(workspace: Path, cap_bytes: int, owner: tuple[int, int] | None = None) -> Staged:
    """Copy the workspace's regular files and directories into a new staging directory (owned by `owner`
    (uid, gid) when given). ConfigError when the workspace is already over the cap."""
    root = Path(tempfile.mkdtemp(prefix="metagent-stage-"))
    try:
        manifest = _copy_in(workspace, root, cap_bytes)
        if owner is not None:
            _chown_tree(root, *owner)
    except BaseException:
        remove_tree(root)
        raise
    return Staged(root, cap_bytes, manifest)


def _copy_in(workspace: Path, root: Path, cap_bytes: int) -> Manifest:
    manifest: Manifest = {}
    total = 0
    for rel, info in _walk(workspace):
        dest = root / rel
        if stat.S_ISDIR(info.st_mode):
            dest.mkdir(mode=0o755)
            continue
        if not stat.S_ISREG(info.st_mode):
            continue  # links, FIFOs, sockets, devices stay out of the sandbox's view
        total += info.st_size
        if total > cap_bytes:
            raise ConfigError(
                f"the workspace {workspace} holds more than its cap of {_mib(cap_bytes)}; remove files from it "
                "or raise [tools] workspace_cap_mb"
            )
        if _copy_file(workspace / rel, dest):
            copied = dest.stat()
            os.utime(dest, ns=(info.st_atime_ns, info.st_mtime_ns))
            os.chmod(dest, (copied.st_mode | 0o600) & 0o777)
            manifest[rel] = (info.st_size, info.st_mtime_ns)
    return manifest


def _copy_file(src: Path, dest: Path) -> bool:
    """Copy a regular file's bytes without following a link (False when it changed kind meanwhile)."""
    try:
        fd = os.open(src, _OPEN_READ)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with open(dest, "xb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    return True


def _walk(top: Path, too_deep: list[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under top, parents before children, through directory descriptors
    (no path grows past PATH_MAX); never follows a link. Directories MAX_DEPTH levels down are listed but not
    entered: their paths go to `too_deep`."""
    fd = os.open(top, _OPEN_DIR)
    try:
        yield from _walk_fd(fd, "", 1, too_deep if too_deep is not None else [])
    finally:
        os.close(fd)


def _walk_fd(fd: int, prefix: str, depth: int, too_deep: list[str]) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(fd) as it:
        names = [entry.name for entry in it]
    for name in names:
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        yield prefix + name, info
        if not stat.S_ISDIR(info.st_mode):
            continue
        if depth >= MAX_DEPTH:
            too_deep.append(prefix + name)
            continue
        try:
            child = os.open(name, _OPEN_DIR, dir_fd=fd)
        except OSError:
            continue
        try:
            yield from _walk_fd(child, f"{prefix}{name}/", depth + 1, too_deep)
        finally:
            os.close(child)


def _usage(top: Path) -> tuple[int, int, bool]:
    """(bytes allocated, entries, whether directories nest deeper than MAX_DEPTH) under top."""
    size = entries = 0
    too_deep: list[str] = []
    try:
        for _, info in _walk(top, too_deep):
            entries += 1
            if stat.S_ISREG(info.st_mode):
                size += max(info.st_size, info.st_blocks * 512)
            if entries > MAX_ENTRIES:
                break
    except OSError:
        pass
    return size, entries, bool(too_deep)


def remove_tree(root: Path) -> None:
    """Delete a directory tree of any depth without recursion limits or over-long paths: subtrees deeper than
    MAX_DEPTH are moved up to the top and deleted in the next pass. Never follows a link."""
    try:
        root_fd = os.open(root, _OPEN_DIR)
    except OSError:
        return
    try:
        for _ in range(100_000):  # each pass removes MAX_DEPTH levels of every subtree
            with os.scandir(root_fd) as it:
                if next(it, None) is None:
                    break
            _clear(root_fd, root_fd, 1)
    except OSError:
        pass
    finally:
        os.close(root_fd)
    try:
        os.rmdir(root)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)


def _clear(fd: int, root_fd: int, depth: int) -> None:
    with os.scandir(fd) as it:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
    for name, is_dir in names:
        if not is_dir:
            _unlink_quietly(name, fd)
        elif depth >= MAX_DEPTH:
            os.rename(name, f".deep-{time.monotonic_ns()}", src_dir_fd=fd, dst_dir_fd=root_fd)
        else:
            child = os.open(name, _OPEN_DIR, dir_fd=fd)
            try:
                _clear(child, root_fd, depth + 1)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=fd)


def _open_parent(ws_fd: int, rel: str, create: bool) -> int | None:
    """A descriptor of rel's parent directory inside the workspace, each step opened with O_NOFOLLOW (None when
    a step is missing, or is not a real directory)."""
    fd = os.dup(ws_fd)
    for part in rel.split("/")[:-1]:
        try:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, _OPEN_DIR, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _copy_back(src: Path, ws_fd: int, rel: str, budget: list[int]) -> bool:
    try:
        fd = os.open(src, _OPEN_READ)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > budget[0]:
            return False
        parent = _open_parent(ws_fd, rel, create=True)
        if parent is None:
            return False
        name = rel.rsplit("/", 1)[-1]
        tmp = f".{name}.metagent-{os.getpid()}-{time.monotonic_ns()}"
        try:
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent)
            with os.fdopen(out_fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.utime(tmp, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=parent)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError:
            _unlink_quietly(tmp, parent)
            return False
        finally:
            os.close(parent)
    budget[0] -= info.st_size
    return True


def _delete_if_unchanged(ws_fd: int, rel: str, before: tuple[int, int]) -> bool:
    parent = _open_parent(ws_fd, rel, create=False)
    if parent is None:
        return False
    name = rel.rsplit("/", 1)[-1]
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and (info.st_size, info.st_mtime_ns) == before:
            os.unlink(name, dir_fd=parent)
            return True
        return False
    except OSError:
        return False
    finally:
        os.close(parent)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for rel, _ in _walk(root):
        os.chown(root / rel, uid, gid, follow_symlinks=False)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"
