"""File tools confined to the workspace: read_file, write_file, list_dir.

A path is resolved against the workspace (symlinks included) and refused unless it stays inside. The file
is then opened component by component from a descriptor of the workspace with O_NOFOLLOW, so a symlink
swapped in after the check (e.g. by sandboxed code running at the same time) is refused, not followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from pydantic import Field

from tools.base import ToolContext, ToolError
from tools.function_tool import tool

READ_CAP_BYTES = 64 * 1024
WRITE_CAP_BYTES = 1024 * 1024
LIST_CAP_ENTRIES = 200

PathArg = Annotated[str, Field(description="a path relative to the workspace, e.g. 'notes/todo.txt'")]


def confine(workspace: Path, path: str) -> tuple[Path, tuple[str, ...]]:
    """(resolved root, path parts below it) for a path that stays in the workspace; ToolError otherwise."""
    root = workspace.resolve()
    if "\x00" in path:
        raise ToolError("the path contains a NUL character")
    target = (root / path).resolve()  # an absolute `path` replaces root: it is checked like any other
    if target != root and root not in target.parents:
        raise ToolError(
            f"path {path!r} is outside the workspace (it resolves to {target}). Use a path relative to the "
            "workspace, e.g. 'notes.txt' or 'data/input.csv', without '..' or links leading out."
        )
    return root, target.relative_to(root).parts


@contextmanager
def _open_dir(root: Path, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
    """A descriptor of root/parts, walked without following any symlink (creating directories if asked)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise ToolError(_explain(e, "/".join(parts))) from e
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _explain(error: OSError, shown: str) -> str:
    reasons = {
        "ENOENT": "does not exist",
        "ENOTDIR": "is not a directory (or a part of it is a file)",
        "ELOOP": "is a symbolic link, which file tools do not follow",
        "EISDIR": "is a directory",
        "EACCES": "is not accessible",
    }
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{shown!r} {reasons.get(name, error.strerror or 'cannot be opened')}"


@tool(filesystem="workspace")
def read_file(path: PathArg, ctx: ToolContext) -> str:
    """Read a text file from the workspace (the first 64 KiB of a larger file)."""
    root, parts = confine(ctx.workspace, path)
    if not parts:
        raise ToolError(f"{path!r} is the workspace directory itself; use list_dir to see its files")
    with _open_dir(root, parts[:-1]) as dir_fd:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            raise ToolError(_explain(e, path)) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ToolError(f"{path!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(READ_CAP_BYTES)
    if b"\x00" in data:
        return f"{path} is a binary file ({info.st_size} bytes); not shown"
    text = data.decode("utf-8", "replace")
    if info.st_size > READ_CAP_BYTES:
        text += f"\n[file has {info.st_size} bytes; showing the first {READ_CAP_BYTES}]"
    return text


@tool(filesystem="workspace", side_effects=True, approval="side_effects")
def write_file(
    path: PathArg, content: Annotated[str, Field(description="the full text to write")], ctx: ToolContext
) -> str:
    """Write text to a file in the workspace, replacing it if it exists (parent directories are created)."""
    data = content.encode("utf-8")
    if len(data) > WRITE_CAP_BYTES:
        raise ToolError(f"content is {len(data)} bytes; at most {WRITE_CAP_BYTES} can be written at once")
    root, parts = confine(ctx.workspace, path)
    if not parts:
        raise ToolError(f"{path!r} is the workspace directory itself; give a file name, e.g. 'notes.txt'")
    with _open_dir(root, parts[:-1], create=True) as dir_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=dir_fd)
        except OSError as e:
            raise ToolError(_explain(e, path)) from e
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return f"wrote {len(data)} bytes to {'/'.join(parts)}"


@tool(filesystem="workspace")
def list_dir(
    ctx: ToolContext,
    path: Annotated[str, Field(description="a directory relative to the workspace; '.' is the workspace")] = ".",
) -> str:
    """List the files and directories in a workspace directory, with sizes."""
    root, parts = confine(ctx.workspace, path)
    lines = []
    with _open_dir(root, parts) as dir_fd:  # stat while the directory descriptor is open
        entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
        for entry in entries[:LIST_CAP_ENTRIES]:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                lines.append(f"{entry.name} -> (link)")
            elif stat.S_ISDIR(info.st_mode):
                lines.append(f"{entry.name}/")
            else:
                lines.append(f"{entry.name} ({info.st_size} bytes)")
    if len(entries) > LIST_CAP_ENTRIES:
        lines.append(f"... and {len(entries) - LIST_CAP_ENTRIES} more")
    shown = "/".join(parts) or "."
    return f"{shown}: empty directory" if not lines else f"{shown}:\n" + "\n".join(lines)
