"""The staging copy of the workspace: what goes in, what comes back, and what never does. The tests play the
sandboxed code by changing the copy directly, then judge the real workspace and the host's files."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.errors import ConfigError
from tools.sandbox import ProcessSandbox, probe
from tools.staging import MAX_DEPTH, Staged, stage


@pytest.fixture
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="metagent-ws-") as d:
        yield Path(d)


@pytest.fixture
def outside() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="metagent-outside-") as d:
        yield Path(d)


@contextmanager
def staged_copy(workspace: Path, cap: int = 1 << 20) -> Iterator[Staged]:
    staged = stage(workspace, cap)
    try:
        yield staged
    finally:
        staged.remove()


def test_copy_holds_files_and_dirs_but_no_links_or_fifos(workspace: Path, outside: Path) -> None:
    (workspace / "a.txt").write_text("a")
    (workspace / "sub").mkdir()
    (workspace / "sub" / "b.txt").write_text("b")
    (outside / "secret").write_text("s3cret")
    (workspace / "link").symlink_to(outside / "secret")
    (workspace / "dirlink").symlink_to(outside)
    os.mkfifo(workspace / "pipe")
    with staged_copy(workspace) as staged:
        names = sorted(str(p.relative_to(staged.root)) for p in staged.root.rglob("*"))
        assert names == ["a.txt", "sub", "sub/b.txt"]
        assert (staged.root / "sub" / "b.txt").read_text() == "b"
    assert not any(Path(tempfile.gettempdir()).glob(f"{staged.root.name}*"))  # removed


def test_new_and_changed_files_come_back_unchanged_ones_are_not_rewritten(workspace: Path) -> None:
    (workspace / "keep.txt").write_text("keep")
    (workspace / "edit.txt").write_text("old")
    before = (workspace / "keep.txt").stat().st_mtime_ns
    with staged_copy(workspace) as staged:
        (staged.root / "edit.txt").write_text("new contents")
        (staged.root / "deep" / "er").mkdir(parents=True)
        (staged.root / "deep" / "er" / "made.txt").write_text("made")
        changes = staged.collect(workspace)
    assert sorted(changes.written) == ["deep/er/made.txt", "edit.txt"] and changes.skipped == []
    assert (workspace / "edit.txt").read_text() == "new contents"
    assert (workspace / "deep" / "er" / "made.txt").read_text() == "made"
    assert (workspace / "keep.txt").stat().st_mtime_ns == before
    assert sorted(p.name for p in workspace.iterdir()) == ["deep", "edit.txt", "keep.txt"]  # no temp files left
    assert changes.summary() == "[files written: deep/er/made.txt, edit.txt]"


def test_deletions_come_back_unless_the_workspace_file_changed_meanwhile(workspace: Path) -> None:
    (workspace / "gone.txt").write_text("x")
    (workspace / "raced.txt").write_text("y")
    with staged_copy(workspace) as staged:
        (staged.root / "gone.txt").unlink()
        (staged.root / "raced.txt").unlink()
        time.sleep(0.01)
        (workspace / "raced.txt").write_text("changed by someone else")
        changes = staged.collect(workspace)
    assert changes.deleted == ["gone.txt"]
    assert not (workspace / "gone.txt").exists()
    assert (workspace / "raced.txt").read_text() == "changed by someone else"


def test_links_and_fifos_made_in_the_copy_are_never_followed_or_copied(workspace: Path, outside: Path) -> None:
    target = outside / "host.txt"
    target.write_text("host data")
    with staged_copy(workspace) as staged:
        (staged.root / "sym").symlink_to(target)
        os.link(target, staged.root / "hard")  # a second link to a host file
        os.mkfifo(staged.root / "fifo")
        started = time.monotonic()
        changes = staged.collect(workspace)
    assert time.monotonic() - started < 2  # a FIFO is never opened for reading
    assert sorted(changes.skipped) == ["fifo", "hard", "sym"] and changes.written == []
    assert list(workspace.iterdir()) == []
    assert target.read_text() == "host data"


def test_a_symlink_planted_in_the_workspace_cannot_redirect_a_write(workspace: Path, outside: Path) -> None:
    (workspace / "out").mkdir()
    with staged_copy(workspace) as staged:
        (staged.root / "out" / "result.txt").write_text("payload")
        # Meanwhile something replaces the workspace's directory with a link to the outside.
        (workspace / "out").rmdir()
        (workspace / "out").symlink_to(outside)
        changes = staged.collect(workspace)
    assert changes.skipped == ["out/result.txt"]
    assert list(outside.iterdir()) == []


def test_a_workspace_over_the_cap_is_refused_with_a_clear_error(workspace: Path) -> None:
    (workspace / "big.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="workspace_cap_mb"):
        stage(workspace, cap_bytes=1024)


def test_over_cap_is_reported_and_collect_caps_what_comes_back(workspace: Path) -> None:
    with staged_copy(workspace, cap=10_000) as staged:
        assert staged.over_cap() is None
        (staged.root / "big.bin").write_bytes(b"x" * 20_000)
        time.sleep(0.06)  # over_cap walks the copy at most every POLL_S
        assert "cap" in (staged.over_cap() or "")
        changes = staged.collect(workspace)
    assert changes.skipped == ["big.bin"] and not (workspace / "big.bin").exists()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_call_that_outgrows_the_cap_is_stopped_and_its_changes_discarded(mode: str, workspace: Path) -> None:
    if mode == "bwrap" and probe("bwrap") is not None:
        pytest.skip(f"bwrap not available: {probe('bwrap')}")
    from tools.sandbox import BwrapSandbox

    sandbox = BwrapSandbox() if mode == "bwrap" else ProcessSandbox()
    (workspace / "keep.txt").write_text("keep")
    script = "echo changed > keep.txt; i=0; while true; do head -c 100000 /dev/zero > f$i; i=$((i+1)); done"
    started = time.monotonic()
    result = sandbox.run(["/bin/sh", "-c", script], workspace=workspace, timeout_s=20, memory_mb=256,
                         output_cap_bytes=4096, workspace_cap_bytes=2 << 20)  # fmt: skip
    assert time.monotonic() - started < 10 and not result.timed_out
    assert result.stopped is not None and "cap" in result.stopped
    assert sorted(p.name for p in workspace.iterdir()) == ["keep.txt"]
    assert (workspace / "keep.txt").read_text() == "keep"


def _nest(top: Path, levels: int) -> None:
    """`levels` nested directories under top, made relative to each one's parent (no path length limit)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir("d" * 200, dir_fd=fd)
        child = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)


def test_a_tree_too_deep_for_paths_and_recursion_is_stopped_skipped_and_removed(workspace: Path) -> None:
    with staged_copy(workspace) as staged:
        _nest(staged.root, 1500)  # 300 KB of path: past PATH_MAX and Python's recursion limit
        (staged.root / "ok.txt").write_text("fine")
        time.sleep(0.06)
        assert "levels deep" in (staged.over_cap() or "")
        changes = staged.collect(workspace)
        root = staged.root
    assert changes.written == ["ok.txt"]
    assert changes.skipped == ["/".join(["d" * 200] * MAX_DEPTH) + f"/ (more than {MAX_DEPTH} levels deep)"]
    assert sorted(p.name for p in workspace.iterdir()) == ["ok.txt"]
    assert not root.exists()
