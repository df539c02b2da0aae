"""The memory of a call's whole process tree, watched from the host.

RLIMIT_AS bounds each process of a sandboxed call, not their sum: six forks of a 128 MiB program hold six
times that. `TreeMemory` is polled by the process runner while the call runs; it sums the resident memory of
the child and all its descendants (daemons reparented to a supervisor included; pages shared between them
are counted in each, which errs on the safe side) from one pass over /proc/*/stat, and gives a reason to
stop the call once the sum passes the limit.

What this does NOT do: stop an allocation as it happens. Between two polls (POLL_S, longer when the scan is
slow) a tree can overshoot by what it allocates in that time; each process stays capped by its own
RLIMIT_AS. A cgroup's memory.max would be exact, but cgroups are not delegated to unprivileged users on most
systems, so they are not used.
"""

from __future__ import annotations

import os
import time

POLL_S = 0.01  # with a scan of ~1 ms: a fast machine's six-process bomb got 80 MiB past the limit in 50 ms
_PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeMemory:
    """A watch for tools.process.ProcessLimits: `watch(pid)` is a reason to stop when the tree under pid holds
    more than `limit_bytes`, else None."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.peak_bytes = 0
        self._next_poll = 0.0

    def __call__(self, pid: int) -> str | None:
        now = time.monotonic()
        if now < self._next_poll:
            return None
        used = tree_rss_bytes(pid)
        # Scanning /proc costs a few ms with many processes: poll less often then (at most ~20% of a core).
        self._next_poll = time.monotonic() + max(POLL_S, 4 * (time.monotonic() - now))
        self.peak_bytes = max(self.peak_bytes, used)
        if used > self.limit_bytes:
            return (f"its processes used {used >> 20} MiB of memory together, over the limit of "
                    f"{self.limit_bytes >> 20} MiB ([tools] memory_mb)")  # fmt: skip
        return None


def tree_rss_bytes(root: int) -> int:
    """Resident memory of root and every process below it, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)  # field 4, ppid
            rss[pid] = int(fields[21]) * _PAGE  # field 24, rss in pages
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total
