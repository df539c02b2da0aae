"""File tools stay inside the workspace: no '..', no absolute paths outside, no symlink escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.types import ToolCall
from tools import Broker, ToolContext, ToolRegistry, builtin_tools
from tools.base import ToolError
from tools.files import READ_CAP_BYTES, list_dir, read_file, write_file


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    (workspace / "notes.txt").write_text("hello")
    return ToolContext(workspace=workspace)


def test_read_write_list(ctx: ToolContext) -> None:
    assert read_file("notes.txt", ctx) == "hello"
    assert write_file("sub/dir/new.txt", "fresh", ctx) == "wrote 5 bytes to sub/dir/new.txt"
    assert (ctx.workspace / "sub/dir/new.txt").read_text() == "fresh"
    assert read_file("./sub/../sub/dir/new.txt", ctx) == "fresh"
    listing = list_dir(ctx)
    assert listing == ".:\nnotes.txt (5 bytes)\nsub/"
    assert list_dir(ctx, "sub") == "sub:\ndir/"
    assert read_file(str(ctx.workspace / "notes.txt"), ctx) == "hello"  # absolute, but inside


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd", "/"])
def test_paths_outside_the_workspace_are_refused(ctx: ToolContext, path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        read_file(path, ctx)
    with pytest.raises(ToolError, match="outside the workspace"):
        write_file(path, "x", ctx)
    assert (ctx.workspace.parent / "secret.txt").read_text() == "top secret"


def test_symlink_escapes_are_refused(ctx: ToolContext) -> None:
    outside = ctx.workspace.parent
    (ctx.workspace / "link.txt").symlink_to(outside / "secret.txt")
    (ctx.workspace / "linkdir").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the workspace"):
        read_file("link.txt", ctx)
    with pytest.raises(ToolError, match="outside the workspace"):
        read_file("linkdir/secret.txt", ctx)
    with pytest.raises(ToolError, match="outside the workspace"):
        write_file("linkdir/planted.txt", "x", ctx)
    with pytest.raises(ToolError, match="outside the workspace"):
        list_dir(ctx, "linkdir")
    assert not (outside / "planted.txt").exists()
    assert (outside / "secret.txt").read_text() == "top secret"


def test_symlinks_inside_the_workspace_are_fine(ctx: ToolContext) -> None:
    (ctx.workspace / "alias.txt").symlink_to(ctx.workspace / "notes.txt")
    assert read_file("alias.txt", ctx) == "hello"
    assert "alias.txt -> (link)" in list_dir(ctx)


def test_missing_and_wrong_kinds_of_paths(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="'nope.txt' does not exist"):
        read_file("nope.txt", ctx)
    with pytest.raises(ToolError, match="not a regular file|is a directory"):
        (ctx.workspace / "d").mkdir()
        read_file("d", ctx)
    with pytest.raises(ToolError, match="workspace directory itself"):
        write_file(".", "x", ctx)


def test_read_is_capped_and_binary_is_not_shown(ctx: ToolContext) -> None:
    (ctx.workspace / "big.txt").write_text("a" * (READ_CAP_BYTES + 10))
    text = read_file("big.txt", ctx)
    assert text.startswith("aaa") and f"showing the first {READ_CAP_BYTES}" in text
    (ctx.workspace / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert read_file("blob.bin", ctx) == "blob.bin is a binary file (3 bytes); not shown"


def test_through_the_broker_errors_are_observations(tmp_path: Path) -> None:
    broker = Broker(ToolRegistry(builtin_tools()), ToolSettings.model_validate({}), tmp_path / "ws")
    result = broker.call(ToolCall("1", "read_file", {"path": "../../etc/shadow"}))
    assert not result.ok and "outside the workspace" in (result.error or "")
    written = broker.call(ToolCall("2", "write_file", {"path": "a.txt", "content": "hi"}))
    assert written.ok and (tmp_path / "ws" / "a.txt").read_text() == "hi"
    assert os.stat(tmp_path / "ws" / "a.txt").st_size == 2
