"""One escape attempt's host side: its workspace, its tag, the call, and what was left afterwards.

Every attempt is Python run by the python tool's command (`python -I -` with the code on stdin). A prelude
names all of the attempt's processes with a fresh tag (prctl PR_SET_NAME, inherited by every fork and
thread), so the host finds them in the process table even after they leave the sandbox's process group,
and gives the attempt the host paths it goes after (an attacker is assumed to know them).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .evidence import Proc, exposed, fingerprint, suspects, unsafe_entries
from .principal import Principal

SLACK_S = 5.0  # a call may end this much after its timeout (2 shared cores, TERM grace, teardown)
SETTLE_S = 1.5  # how long the host waits for killed processes to disappear from the table
DANGEROUS_OPT_IN = "METAGENT_BATTERY_DANGEROUS"
# Read at import: the suite's autouse fixture clears METAGENT_* variables before each test.
DANGEROUS_ALLOWED = bool(os.environ.get(DANGEROUS_OPT_IN) or os.environ.get("CI"))

PRELUDE = '''
import ctypes, json, os, sys, time
P = json.loads({params!r})
TAG = P["tag"]
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.prctl(15, TAG.encode(), 0, 0, 0)  # PR_SET_NAME: every fork and thread inherits it
open(TAG + ".marker", "w").close()  # shows where this call's files live (a copy must not outlive the call)


def save(name, data):
    """Keep what the attempt got in the workspace, where the host looks for it."""
    try:
        with open(name, "ab") as f:
            f.write(data if isinstance(data, bytes) else str(data).encode())
    except OSError:
        pass


def read(path, limit=1 << 20):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def pids():
    return [p for p in listdir("/proc") if p.isdigit()]


def attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        return e

'''


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str  # shown for diagnosis only: the battery never judges by what the attempt printed
    stderr: str
    stdout_len: int
    stderr_len: int
    timed_out: bool
    truncated: bool
    timeout_s: float
    wall_s: float  # measured by the host around the call
    leftovers: list[Proc]
    stray_copies: list[Path]  # directories outside the workspace still holding the call's files


class Host:
    """The host side of one attempt on one tier for one principal."""

    def __init__(self, principal: Principal, tier: str, workspace: Path) -> None:
        self.principal = principal
        self.tier = tier
        self.workspace = workspace
        self.tag = "mg" + secrets.token_hex(6) + "x"  # 15 characters: the most a process name keeps
        self.before = {path: fingerprint(path) for path in principal.protected()}

    def changed(self) -> list[Path]:
        """Protected host files (the planted home, the inherited-descriptor file) that differ from before."""
        return [path for path, before in self.before.items() if fingerprint(path) != before]

    @property
    def secrets(self) -> list[str]:
        return self.principal.secrets.all()

    def params(self) -> dict[str, Any]:
        p = self.principal
        return {
            "tag": self.tag,
            "home": str(p.home),
            "key": str(p.home / ".ssh" / "id_rsa"),
            "pub": str(p.home / ".ssh" / "id_rsa.pub"),
            "bashrc": str(p.home / ".bashrc"),
            "notes": str(p.home / "notes.txt"),
            "settings": str(p.home / ".config" / "metagent" / "settings.toml"),
            "checkpoints": str(p.home / ".local" / "share" / "metagent" / "checkpoints.sqlite"),
            "site_packages": str(p.site_packages),
            "open_dir": str(p.open_dir),
            "inherited_file": str(p.inherited_file),
            "workspace": str(self.workspace),
            "decoy_pid": p.decoy_pid(),
            "harness_pid": p.harness.pid if p.harness is not None else os.getpid(),
        }

    def run(
        self,
        body: str,
        *,
        timeout_s: float = 3.0,
        memory_mb: int = 256,
        output_cap_bytes: int = 65536,
        watch: Callable[[], None] | None = None,
    ) -> Outcome:
        """Run the attempt; `watch` runs on the host every ~20 ms while the call is in flight."""
        code = PRELUDE.format(params=json.dumps(self.params())) + textwrap.dedent(body)
        request = {"argv": [self.principal.python, "-I", "-"], "stdin": code, "workspace": str(self.workspace),
                   "timeout_s": timeout_s, "memory_mb": memory_mb, "output_cap_bytes": output_cap_bytes}  # fmt: skip
        started = time.monotonic()
        raw = self.principal.call(self.tier, request, watch or (lambda: None))
        wall_s = time.monotonic() - started
        if "error" in raw:
            raise RuntimeError(f"the harness could not run the attempt: {raw['error']}")
        return Outcome(
            exit_code=raw["exit_code"], stdout=raw["stdout"], stderr=raw["stderr"], stdout_len=raw["stdout_len"],
            stderr_len=raw["stderr_len"], timed_out=raw["timed_out"], truncated=raw["truncated"],
            timeout_s=timeout_s, wall_s=wall_s, leftovers=self.settle(), stray_copies=self.stray_copies(),
        )  # fmt: skip

    def stray_copies(self) -> list[Path]:
        """Temporary directories (e.g. a staging copy) that still hold the attempt's marker file."""
        found: set[Path] = set()
        for tmp in {"/tmp", tempfile.gettempdir()}:
            found.update(p.parent for p in Path(tmp).glob(f"*/{self.tag}.marker"))
        return sorted(found)

    def running(self) -> list[Proc]:
        """The attempt's live processes now (tagged, or of the dedicated uid but not the battery's own)."""
        spared_pids, spared_sids = self.principal.spared()
        return suspects(self.tag, self.principal.dedicated_uid, spared_pids, spared_sids)

    def settle(self) -> list[Proc]:
        """What is still running after the call, once killed processes had a moment to disappear."""
        end = time.monotonic() + SETTLE_S
        left = self.running()
        while left and time.monotonic() < end:
            time.sleep(0.05)
            left = self.running()
        return left

    def tagged(self) -> list[Proc]:
        """The attempt's live processes that carry its tag (not the sandbox's own helper processes)."""
        spared_pids, spared_sids = self.principal.spared()
        return suspects(self.tag, None, spared_pids, spared_sids)

    def exposed(self) -> list[str]:
        """Workspace entries through which the host now reads one of the planted secrets."""
        return exposed(self.workspace, self.secrets)

    def unsafe_entries(self) -> list[str]:
        """Symlinks out of the workspace, hard links to protected files, FIFOs, sockets, devices."""
        return unsafe_entries(self.workspace, self.principal.protected())

    def kill_leftovers(self) -> None:
        for proc in self.running():
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def unprivileged_only(self, what: str) -> None:
        """Skip attempts that would hurt processes that are not ours if they escaped as root, or the
        developer's own session when pytest itself runs as the unprivileged user (unless opted in)."""
        if self.principal.privilege == "root":
            pytest.skip(f"never as root: {what} could reach processes that are not ours if it escaped")
        if self.principal.in_process and not DANGEROUS_ALLOWED:
            pytest.skip(f"{what} would run as the user running pytest; set {DANGEROUS_OPT_IN}=1 (or CI) to allow")


def assert_ended(out: Outcome) -> None:
    """The call came back in time and nothing of it is left running."""
    assert out.wall_s <= out.timeout_s + SLACK_S, f"the call took {out.wall_s:.1f} s (timeout {out.timeout_s} s)"
    assert out.leftovers == [], f"left running after the call: {out.leftovers}"
    assert out.stray_copies == [], f"the call's files outlived it in {out.stray_copies}"
