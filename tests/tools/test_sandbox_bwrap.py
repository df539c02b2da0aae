"""Tier (a) without a Python init program (tools/sandbox_bwrap.py): prlimit, bwrap and setpriv must still
give the command every protection the init gave it. Judged by what the command's own /proc files say,
written into the workspace and read on the host, and by the host's process table."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from tools import sandbox_bwrap
from tools.sandbox import BwrapSandbox, detect_sandbox, probe, python_binary
from tools.sandbox_bwrap import prlimit_options

IS_ROOT = os.geteuid() == 0
BWRAP_PROBLEM = probe("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap not usable here: {BWRAP_PROBLEM}")


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="metagent-ws-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def limits_of(text: str) -> dict[str, str]:
    """`Max processes  64  64  processes` -> {"Max processes": "64"} (the soft limit)."""
    found = {}
    for line in text.splitlines()[1:]:
        name, values = line[:26].strip(), line[26:].split()
        found[name] = values[0]
    return found


@needs_bwrap
def test_command_runs_with_limits_seccomp_and_no_privileges(workspace: Path) -> None:
    script = "cat /proc/self/status > status.txt; cat /proc/self/limits > limits.txt; umask > umask.txt"
    result = BwrapSandbox().run(["/bin/sh", "-c", script], workspace=workspace, timeout_s=20.0, memory_mb=300,
                                output_cap_bytes=4096)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    status = status_fields((workspace / "status.txt").read_text())
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapEff"] == status["CapPrm"] == status["CapInh"] == status["CapAmb"] == "0000000000000000"
    if IS_ROOT:
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        assert status["Groups"] == ""
    limits = limits_of((workspace / "limits.txt").read_text())
    assert limits["Max address space"] == str(300 << 20)
    assert limits["Max cpu time"] == "21" and limits["Max core file size"] == "0"
    assert limits["Max open files"] == "256" and limits["Max file size"] == str(64 << 20)
    if IS_ROOT:
        assert limits["Max processes"] == "64"
    assert (workspace / "umask.txt").read_text().strip() == "0022"


@needs_bwrap
def test_seccomp_filter_refuses_inet_sockets_and_namespaces(workspace: Path) -> None:
    """The filter is bwrap's --seccomp: a socket other than AF_UNIX and unshare() fail with EPERM."""
    code = (
        "import ctypes, socket\n"
        "def attempt(f):\n"
        "    try: f(); return 'allowed'\n"
        "    except OSError as e: return str(e.errno)\n"
        "open('inet.txt', 'w').write(attempt(lambda: socket.socket(socket.AF_INET)))\n"
        "open('unix.txt', 'w').write(attempt(lambda: socket.socket(socket.AF_UNIX)))\n"
        "def new_user_namespace():\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    if libc.unshare(0x10000000) != 0: raise OSError(ctypes.get_errno(), 'unshare')\n"
        "open('unshare.txt', 'w').write(attempt(new_user_namespace))\n"
    )
    result = BwrapSandbox().run([python_binary(), "-I", "-c", code], workspace=workspace, timeout_s=20.0, memory_mb=300,
                                output_cap_bytes=4096)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (workspace / "inet.txt").read_text() == "1"  # EPERM from the filter
    assert (workspace / "unix.txt").read_text() == "allowed"  # the test can tell
    assert (workspace / "unshare.txt").read_text() == "1"


def test_prlimit_options_never_ask_for_more_than_the_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    hard = {resource.RLIMIT_NOFILE: 128, resource.RLIMIT_CPU: resource.RLIM_INFINITY}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, hard.get(which, resource.RLIM_INFINITY)))
    assert prlimit_options({"open_files": 256, "cpu_s": 31}) == ["--nofile=128", "--cpu=31"]


def test_missing_util_linux_helpers_make_bwrap_unusable(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "prlimit" else real_which(name))
    assert sandbox_bwrap.helpers_problem() == "prlimit (util-linux) not installed"
    with pytest.raises(ConfigError, match="prlimit"):
        BwrapSandbox("/usr/bin/bwrap").run(["true"], workspace=workspace, timeout_s=5.0, memory_mb=64,
                                           output_cap_bytes=64)  # fmt: skip
    probe.cache_clear()
    try:
        if shutil.which("bwrap") is not None:
            with pytest.raises(ConfigError, match="prlimit"):
                detect_sandbox("bwrap")
    finally:
        probe.cache_clear()
