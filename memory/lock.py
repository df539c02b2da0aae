"""The store lock: one process at a time owns a Chroma directory.

Chroma's `PersistentClient` is not process-safe: two processes writing one directory corrupt its HNSW index.
So the process that opens the store takes an exclusive OS lock (flock through `filelock`) on `<home>/store.lock`
and keeps it until it closes the store; the kernel drops it when the process dies, so a crash never leaves a
stale lock behind. Next to it, `store.owner` records who holds it (pid, command line, since when), which is
what a second process shows the user when it gives up waiting.

What this does not do: it does not protect a directory from a process that ignores the lock (an old
metagent, or Chroma used directly), and it does not work across hosts on a network filesystem whose flock
is not shared. Several processes or hosts share one store through a Chroma server instead
(`VectorStore.http`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from agent.errors import ConfigError, StoreLockedError

OWNER_SUFFIX = ".owner"


class StoreLock:
    """An exclusive, process-wide lock on a store directory, with its owner recorded beside it."""

    def __init__(self, lock_file: Path, wait_s: float, guarded: Path | None = None) -> None:
        self.lock_file = lock_file
        self.guarded = guarded or lock_file.parent  # what the lock protects, for messages
        self.owner_file = lock_file.with_suffix(OWNER_SUFFIX)
        self.wait_s = wait_s
        # thread_local=False: the store may be closed from another thread than the one that opened it.
        self._lock = FileLock(str(lock_file), thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> None:
        """Take the lock, waiting up to `wait_s`; raise StoreLockedError naming the holder otherwise."""
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=max(self.wait_s, 0.0))
        except Timeout:
            raise StoreLockedError(self._locked_message()) from None
        except OSError as e:
            raise ConfigError(f"cannot create the store lock {self.lock_file}: {e}; check the data directory") from e
        self._write_owner()

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            self.owner_file.unlink(missing_ok=True)
        finally:
            self._lock.release(force=True)

    def _write_owner(self) -> None:
        owner = {"pid": os.getpid(), "command": _command_line(), "since": time.time()}
        tmp = self.owner_file.with_suffix(OWNER_SUFFIX + ".tmp")
        tmp.write_text(json.dumps(owner), encoding="utf-8")
        os.replace(tmp, self.owner_file)

    def _locked_message(self) -> str:
        owner = read_owner(self.owner_file)
        if owner is None:
            who = "another process (its owner file is missing)"
        elif owner.get("pid") == os.getpid():
            who = f"this process (pid {owner['pid']}) through another VectorStore: open one and share it"
        else:
            who = f"process {owner.get('pid', '?')} ({owner.get('command', '?')})"
        return (
            f"the vector store in {self.guarded} is in use by {who}; waited {self.wait_s:g} s "
            f"for its lock ({self.lock_file}). "
            "Only one process may use it at a time (Chroma's embedded store is not process-safe). "
            "Close that process (for example an open `metagent chat`) and try again."
        )


def read_owner(owner_file: Path) -> dict[str, object] | None:
    """The recorded holder of a lock, or None when nothing readable is recorded."""
    try:
        data = json.loads(owner_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _command_line() -> str:
    # /proc shows the real command (e.g. `metagent chat`), sys.argv only the script; fall back off Linux.
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
        parts = [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]
    except OSError:
        parts = [sys.executable, *sys.argv]
    # Only the program and its first few words (`metagent chat`, `python -m agent.cli ingest`): the rest can be
    # a user's request, and the owner file is readable by anyone who can read the data directory.
    words = " ".join(parts[:4]).split()
    command = " ".join(words[:4]) + (" ..." if len(parts) > 4 else "")
    return command if len(command) <= 120 else command[:117] + "..."
