"""Run one child process in its own session: feed stdin, read stdout/stderr up to a cap, enforce a
deadline, and kill the child's whole process group when it is over.

The group is killed with SIGTERM, then SIGKILL after a short grace, and always before the child is reaped,
so the group id cannot have been reused by an unrelated process. A descendant that moved itself to another
session (setsid) escapes the group kill; the sandboxes with a PID namespace (bwrap, unshare) do not depend
on it, because the kernel kills everything in the namespace when its first process dies.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

TERM_GRACE_S = 1.0  # the wait ends as soon as the group leader exits; the landlock supervisor needs its cleanup time
DRAIN_S = 0.2  # how long to keep reading pipes a stray descendant may hold open
EXIT_POLL_S = 0.05  # while the pipes are quiet, how often to check whether the child has exited
WATCH_POLL_S = 0.01  # how often the watches run while the pipes are quiet (each may rate-limit itself further)
_CHUNK = 65536


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    elapsed_s: float = 0.0
    stopped: str | None = None  # why the host stopped it early, besides the timeout and the output cap
    changes: str = ""  # what came back into the workspace (tools/staging.py), one line per kind


@dataclass(frozen=True)
class ProcessLimits:
    """When run_process stops a child: after timeout_s, at output_cap_bytes of stdout+stderr, or as soon as
    one of `watches` (each called with the child's pid, every WATCH_POLL_S at most) returns a reason."""

    timeout_s: float
    output_cap_bytes: int
    watches: tuple[Callable[[int], str | None], ...] = ()


@dataclass
class _Capture:
    cap: int
    out: bytearray
    err: bytearray
    truncated: bool = False
    watches: tuple[Callable[[int], str | None], ...] = ()
    pid: int = 0
    stopped: str | None = None

    @property
    def stop(self) -> bool:
        """Whether the child must be stopped now: output cap reached, or a watch gave a reason."""
        for watch in self.watches:
            if self.stopped is not None:
                break
            self.stopped = watch(self.pid)
        return self.truncated or self.stopped is not None

    def add(self, is_err: bool, data: bytes) -> None:
        room = self.cap - len(self.out) - len(self.err)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        (self.err if is_err else self.out).extend(data)


def run_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    limits: ProcessLimits,
    stdin: str | None = None,
    pass_fds: Sequence[int] = (),
) -> SandboxResult:
    """Run argv to completion or until a limit (timeout, output cap, watch) stops it, whichever is first.
    `pass_fds` stay open in the child (every other descriptor is closed)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd="/",
        start_new_session=True,  # its own session and process group: killpg reaches all of it
        close_fds=True,
        pass_fds=tuple(pass_fds),
        umask=0o022,  # files the command creates: rw-r--r--, whatever the host's umask
    )
    capture = _Capture(limits.output_cap_bytes, bytearray(), bytearray(), watches=limits.watches, pid=proc.pid)
    deadline = started + limits.timeout_s
    try:
        timed_out = _pump(proc, stdin.encode() if stdin is not None else None, capture, deadline)
        if not timed_out and not capture.stop:
            timed_out = not _wait_exited(proc.pid, deadline, capture)
    finally:
        # Whatever happened, nothing of this call outlives it.
        _kill_group(proc.pid, graceful=not _exited(proc.pid))
        _drain(proc, capture)
        proc.wait()
    return SandboxResult(
        exit_code=proc.returncode,
        stdout=capture.out.decode("utf-8", "replace"),
        stderr=capture.err.decode("utf-8", "replace"),
        timed_out=timed_out,
        truncated=capture.truncated,
        elapsed_s=time.monotonic() - started,
        stopped=capture.stopped,
    )


def _pump(proc: subprocess.Popen[bytes], data: bytes | None, capture: _Capture, deadline: float) -> bool:
    """Move bytes until both output pipes close; True when the deadline passed first."""
    if proc.stdout is None or proc.stderr is None:  # never: Popen was given PIPE for both
        raise RuntimeError("child process has no output pipes")
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, False)
    sel.register(proc.stderr, selectors.EVENT_READ, True)
    pending = memoryview(data or b"")
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, None)
    try:
        while any(key.events & selectors.EVENT_READ for key in sel.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            events = sel.select(min(remaining, WATCH_POLL_S if capture.watches else EXIT_POLL_S))
            if capture.stop:
                return False
            if not events and _exited(proc.pid):
                return False  # a descendant may hold the pipes open; what is left is drained after the kill
            for key, _ in events:
                if key.data is None and proc.stdin is not None:
                    pending = _feed(sel, proc.stdin, pending)
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                capture.add(key.data, chunk)
                if capture.truncated:
                    return False
        return False
    finally:
        sel.close()
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()


def _feed(sel: selectors.BaseSelector, pipe: IO[bytes], pending: memoryview) -> memoryview:
    try:
        written = os.write(pipe.fileno(), pending[:_CHUNK])
    except BlockingIOError:
        return pending
    except BrokenPipeError:  # the child stopped reading: fine, it decides what to do with its input
        written = len(pending)
    pending = pending[written:]
    if not pending:
        sel.unregister(pipe)
        pipe.close()
    return pending


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (a zombie keeps its pid and group id reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _wait_exited(pid: int, deadline: float, capture: _Capture) -> bool:
    delay = 0.001
    while not _exited(pid):
        if time.monotonic() >= deadline or capture.stop:
            return capture.stopped is not None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def _kill_group(pgid: int, graceful: bool) -> None:
    try:
        if graceful:
            os.killpg(pgid, signal.SIGTERM)
            end = time.monotonic() + TERM_GRACE_S
            while not _exited(pgid) and time.monotonic() < end:
                time.sleep(0.01)
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _drain(proc: subprocess.Popen[bytes], capture: _Capture) -> None:
    """Read what is left in the pipes after the kill, but never wait on a descendant that kept them open."""
    end = time.monotonic() + DRAIN_S
    for pipe, is_err in ((proc.stdout, False), (proc.stderr, True)):
        if pipe is None:
            continue
        os.set_blocking(pipe.fileno(), False)
        while time.monotonic() < end and not capture.truncated:
            try:
                chunk = os.read(pipe.fileno(), _CHUNK)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if not chunk:
                break
            capture.add(is_err, chunk)
        pipe.close()
