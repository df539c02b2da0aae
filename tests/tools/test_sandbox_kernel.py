"""The kernel-level parts of the sandbox: the seccomp filter (tools/seccomp.py), Landlock (tools/landlock.py)
and the Landlock tier's supervisor (tools/sandbox_init.py).

Unit checks of the filter run a child of our own that installs it and reports the errno of each call.
Checks of the tiers are judged on the host: files that do not appear, secrets that do not come back, host
processes that are still alive, sandbox processes that no longer exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import seccomp
from tools.process import SandboxResult
from tools.sandbox import (
    BwrapSandbox,
    LandlockSandbox,
    ProcessSandbox,
    Sandbox,
    UnshareSandbox,
    _warn_unsandboxed,
    describe_sandbox,
    landlock_problem,
    probe,
)
from tools.sandbox_plan import init_source, process_limit, python_binary

TOOLS = Path(__file__).resolve().parents[2] / "tools"
IS_ROOT = os.geteuid() == 0
SANDBOX_UID = 65534 if IS_ROOT else os.getuid()
NO_FILTER = seccomp.available()
needs_seccomp = pytest.mark.skipif(NO_FILTER is not None, reason=f"seccomp unavailable: {NO_FILTER}")
LANDLOCK = landlock_problem()
needs_landlock = pytest.mark.skipif(LANDLOCK is not None, reason=f"landlock tier unavailable: {LANDLOCK}")

# A child of ours that loads tools/seccomp.py from its source (as the sandbox bootstrap does), installs the
# filter (argv[2]: the socket families as JSON, or "none" for no filter), and prints each call's errno.
PROBE_SOURCE = r"""
import ctypes, errno, json, os, socket, sys
ns = {}
exec(compile(open(sys.argv[1]).read(), "seccomp", "exec"), ns)
if sys.argv[2] != "none":
    ns["install"](tuple(json.loads(sys.argv[2])), sys.argv[3] if len(sys.argv) > 3 else None)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
column = 0 if os.uname().machine == "x86_64" else 1
def raw(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_ulong(a) for a in args])
    return errno.errorcode.get(ctypes.get_errno(), "?") if result == -1 else "ok"
def call(name, *args):
    return raw(ns["SYSCALLS"][name][column], *args)
def sock(family):
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
seen = {
    "ptrace": call("ptrace", 0, 0, 0, 0),  # PTRACE_TRACEME: allowed for anyone without the filter
    "unshare_user": call("unshare", 0x10000000),
    "io_uring_setup": call("io_uring_setup", 1, 0),  # NULL params: EFAULT without the filter
    "bpf": call("bpf", 0, 0, 0),
    "keyctl": call("keyctl", 0, 0),
    "clone_newuser": call("clone", 0x10000000 | 0x200, 0, 0, 0, 0),  # with CLONE_FS: EINVAL, never a child
    "clone3": call("clone3", 0, 0),
    "personality_no_aslr": call("personality", 0x0040000),
    "personality_query": call("personality", 0xFFFFFFFF),
    "ioctl_tiocsti": call("ioctl", 0, 0x5412, 0),
    "socket_inet": sock(socket.AF_INET),
    "socket_unix": sock(socket.AF_UNIX),
    "socketpair": "ok" if socket.socketpair() else "",
}
if column == 0:
    seen["x32_getpid"] = raw(0x40000000 | 39)
print(json.dumps(seen))
"""

# The same Python-level work every tier must survive: threads, subprocess, fork-based multiprocessing.
WORKLOAD = r"""
import json, multiprocessing, subprocess, sys, threading
out = []
t = threading.Thread(target=out.append, args=("thread",)); t.start(); t.join()
out.append(subprocess.run(["/bin/sh", "-c", "echo sub"], capture_output=True, text=True).stdout.strip())
ctx = multiprocessing.get_context("fork")
parent, child = ctx.Pipe()
p = ctx.Process(target=child.send, args=("fork",)); p.start(); out.append(parent.recv()); p.join()
out.append(p.exitcode)
print(json.dumps(out))
"""


def _probe_child(families: str, machine: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-I", "-c", PROBE_SOURCE, str(TOOLS / "seccomp.py"), families]
    return subprocess.run([*args, *([machine] if machine else [])], capture_output=True, text=True, timeout=30)


def test_syscall_table_matches_the_kernel_headers() -> None:
    """The numbers are data typed in by hand: check them against the installed kernel headers."""
    headers = {0: Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), 1: Path("/usr/include/asm-generic/unistd.h")}
    if not any(h.exists() for h in headers.values()):
        pytest.skip("no kernel headers installed to compare with")
    for column, header in headers.items():
        if not header.exists():
            continue
        defined = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)\b", header.read_text()))
        for name, numbers in seccomp.SYSCALLS.items():
            if numbers[column] is not None and name in defined:
                assert numbers[column] == int(defined[name]), f"{name} in {header}"
    assert set(seccomp.DENIED) <= set(seccomp.SYSCALLS)


def test_unknown_machine_is_refused() -> None:
    with pytest.raises(seccomp.SeccompError, match="no system call table for machine 'mips'"):
        seccomp.build_filter("mips", None)


@needs_seccomp
def test_denied_calls_fail_with_eperm_and_the_rest_works() -> None:
    unfiltered = _probe_child("none")
    assert unfiltered.returncode == 0, unfiltered.stderr
    before = json.loads(unfiltered.stdout)
    # without the filter these succeed or fail for other reasons: the test can tell the difference
    assert before["socket_inet"] == "ok" and before["personality_query"] == "ok"
    assert before["io_uring_setup"] != "EPERM" and before["clone3"] != "ENOSYS"
    assert before["clone_newuser"] == "EINVAL" and before["x32_getpid"] != "EPERM"

    filtered = _probe_child(json.dumps([socket.AF_UNIX]))
    assert filtered.returncode == 0, filtered.stderr
    seen = json.loads(filtered.stdout)
    for name in ("ptrace", "unshare_user", "io_uring_setup", "bpf", "keyctl", "clone_newuser",
                 "personality_no_aslr", "ioctl_tiocsti", "socket_inet"):  # fmt: skip
        assert seen[name] == "EPERM", (name, seen)
    assert seen["clone3"] == "ENOSYS"
    assert seen["socket_unix"] == seen["socketpair"] == seen["personality_query"] == "ok"
    if os.uname().machine == "x86_64":
        assert seen["x32_getpid"] == "EPERM"


@needs_seccomp
def test_no_socket_family_at_all_still_allows_socketpair() -> None:
    seen = json.loads(_probe_child("[]").stdout)
    assert seen["socket_inet"] == seen["socket_unix"] == "EPERM" and seen["socketpair"] == "ok"


@needs_seccomp
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="needs a machine other than the table's")
def test_a_foreign_calling_convention_kills_the_process() -> None:
    """A filter for aarch64 installed on x86_64 sees every call as the wrong arch: the first one kills."""
    result = _probe_child("[]", machine="aarch64")
    assert result.returncode == -signal.SIGSYS


@needs_seccomp
def test_cpython_threads_subprocess_and_fork_run_under_the_filter() -> None:
    code = f"exec(open({str(TOOLS / 'seccomp.py')!r}).read()); install((1,))\n" + WORKLOAD
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["thread", "sub", "fork", 0]


def test_init_program_fits_in_one_exec_argument() -> None:
    assert len(init_source().encode()) < 128 << 10


# --- the tiers -------------------------------------------------------------------------------------------


def make(mode: str) -> Sandbox:
    if mode == "none":
        return ProcessSandbox()
    if mode == "landlock":
        # Not probe(): as root the probe also needs Python reachable by uid 65534, which tests do without.
        if LANDLOCK is not None:
            pytest.skip(f"landlock tier unavailable: {LANDLOCK}")
        return LandlockSandbox()
    problem = probe(mode)  # type: ignore[arg-type]
    if problem is not None:
        pytest.skip(f"{mode} sandbox unavailable: {problem}")
    return BwrapSandbox() if mode == "bwrap" else UnshareSandbox()


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="metagent-ws-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(sandbox: Sandbox, workspace: Path, argv: list[str], timeout_s: float = 20.0) -> SandboxResult:
    return sandbox.run(argv, workspace=workspace, timeout_s=timeout_s, memory_mb=512, output_cap_bytes=1 << 16)


def sandbox_python(sandbox: Sandbox, workspace: Path) -> str:
    """This Python, or a system one where the sandbox user cannot reach it (as root, Landlock has no mount
    namespace to bind it in, and e.g. /root is 0700)."""
    for candidate in (python_binary(), "/usr/bin/python3"):
        if os.path.exists(candidate) and run(sandbox, workspace, [candidate, "-I", "-S", "-c", "pass"]).exit_code == 0:
            return candidate
    pytest.skip(f"{sandbox.name}: no Python the sandbox user can run")


@needs_seccomp
@pytest.mark.parametrize("mode", ["bwrap", "landlock", "unshare"])
def test_each_isolated_tier_applies_the_filter(mode: str, workspace: Path) -> None:
    sandbox = make(mode)
    python = sandbox_python(sandbox, workspace)
    (workspace / "seccomp.py").write_text((TOOLS / "seccomp.py").read_text())
    probe_code = PROBE_SOURCE.replace('sys.argv[2] != "none"', "False")  # the tier installed it already
    result = run(sandbox, workspace, [python, "-I", "-c", probe_code, "seccomp.py", "none"])
    assert result.exit_code == 0, result.stderr
    seen = json.loads(result.stdout)
    for name in ("ptrace", "unshare_user", "io_uring_setup", "socket_inet"):
        assert seen[name] == "EPERM", (mode, name, seen)
    assert seen["socket_unix"] == ("EPERM" if mode == "landlock" else "ok")
    workload = run(sandbox, workspace, [python, "-I", "-c", WORKLOAD])
    assert workload.exit_code == 0, workload.stderr
    assert json.loads(workload.stdout) == ["thread", "sub", "fork", 0]


@pytest.mark.parametrize("mode", ["bwrap", "landlock", "unshare", "none"])
def test_signals_python_ignores_are_restored_before_exec(mode: str, workspace: Path) -> None:
    """Python ignores SIGPIPE; the command must not inherit that (`yes | head` would report broken pipes)."""
    result = run(make(mode), workspace, ["/bin/sh", "-c", "yes | head -n 1; grep SigIgn /proc/self/status || true"])
    assert result.exit_code == 0 and result.stdout.startswith("y\n"), result.stderr
    assert "Broken pipe" not in result.stderr


@needs_landlock
def test_landlock_tier_reads_only_what_its_rules_allow(workspace: Path) -> None:
    secret_dir = Path(tempfile.mkdtemp(prefix="metagent-secret-", dir="/tmp"))
    secret_dir.chmod(0o755)
    secret = secret_dir / "token.txt"
    token = uuid.uuid4().hex
    secret.write_text(token)
    secret.chmod(0o644)  # world-readable: file permissions alone would not stop the sandbox user
    try:
        script = (
            f"cat {secret} > stolen.txt; cat /etc/passwd > passwd.txt; ls /proc > proc.txt; ls {secret_dir} > ls.txt"
        )
        result = run(make("landlock"), workspace, ["/bin/sh", "-c", script + "; true"])
        assert result.exit_code == 0, result.stderr
        assert (workspace / "stolen.txt").read_text() == ""  # the redirection ran, the read was refused
        assert (workspace / "passwd.txt").read_text() == ""
        assert (workspace / "proc.txt").read_text() == "" and (workspace / "ls.txt").read_text() == ""
        control = run(ProcessSandbox(), workspace, ["/bin/sh", "-c", f"cat {secret} > stolen.txt"])
        assert control.exit_code == 0 and (workspace / "stolen.txt").read_text() == token  # the test can tell
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


@needs_landlock
def test_landlock_tier_writes_only_the_workspace(workspace: Path) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="metagent-open-", dir="/tmp"))
    open_dir.chmod(0o1777)
    token = uuid.uuid4().hex
    targets = [open_dir / "planted.txt", Path(f"/tmp/planted-{token}"), Path(f"/dev/shm/planted-{token}")]
    try:
        script = "; ".join(f"echo x > {t}" for t in targets) + "; echo ok > inside.txt; true"
        result = run(make("landlock"), workspace, ["/bin/sh", "-c", script])
        assert result.exit_code == 0, result.stderr
        assert [t for t in targets if t.exists()] == []
        assert (workspace / "inside.txt").read_text() == "ok\n"
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
        for t in targets:
            t.unlink(missing_ok=True)


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("mode", ["landlock", "none"])
@pytest.mark.parametrize("timeout_s", [20.0, 1.0])
def test_supervisor_leaves_no_daemon_behind(mode: str, workspace: Path, timeout_s: float) -> None:
    """A setsid'ed, double-forked sleep that ignores SIGTERM leaves the process group and its parent; the
    supervisor must still kill it, whether the command ends by itself or the host stops it at the timeout."""
    if mode == "landlock" and LANDLOCK is not None:
        pytest.skip(f"landlock tier unavailable: {LANDLOCK}")
    seconds = f"27.{uuid.uuid4().int % 10**6:06d}"
    daemon = f"(trap '' TERM HUP; setsid sleep {seconds} </dev/null >/dev/null 2>&1 &) ; echo started"
    script = daemon + ("" if timeout_s > 5 else f"; sleep {seconds}")
    started = time.monotonic()
    result = run(make(mode), workspace, ["/bin/sh", "-c", script], timeout_s=timeout_s)
    assert result.stdout == "started\n" and result.timed_out is (timeout_s < 5), result.stderr
    assert time.monotonic() - started < timeout_s + 3
    assert _processes_with(f"sleep\x00{seconds}") == []  # gone when run() returns, not later


@needs_landlock
def test_landlock_supervisor_cleans_up_when_the_host_dies(workspace: Path) -> None:
    """The metagent process is SIGKILLed mid-call: the supervisor (its child, in its own session) must still
    take the command and a setsid'ed daemon down with it."""
    seconds = f"25.{uuid.uuid4().int % 10**6:06d}"
    script = f"(setsid sleep {seconds} </dev/null >/dev/null 2>&1 &); sleep {seconds}"
    host = (
        f"import sys; sys.path.insert(0, {str(TOOLS.parent)!r}); from pathlib import Path\n"
        "from tools.sandbox import LandlockSandbox\n"
        f"LandlockSandbox().run(['/bin/sh', '-c', {script!r}], workspace=Path({str(workspace)!r}), timeout_s=60, "
        "memory_mb=256, output_cap_bytes=4096)"
    )
    metagent = subprocess.Popen([sys.executable, "-I", "-c", host])
    try:
        deadline = time.monotonic() + 20
        while len(_processes_with(f"sleep\x00{seconds}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_processes_with(f"sleep\x00{seconds}")) == 2  # the command and the daemon run
    finally:
        metagent.kill()
        metagent.wait()
    deadline = time.monotonic() + 3
    while _processes_with(f"sleep\x00{seconds}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep\x00{seconds}") == []


@needs_landlock
def test_landlock_supervisor_reports_the_commands_status(workspace: Path) -> None:
    sandbox = make("landlock")
    assert run(sandbox, workspace, ["/bin/sh", "-c", "exit 3"]).exit_code == 3
    assert run(sandbox, workspace, ["/bin/sh", "-c", "kill -KILL $$"]).exit_code == -signal.SIGKILL
    assert run(sandbox, workspace, ["/no/such/command"]).exit_code == 127


@needs_landlock
def test_landlock_tier_cannot_signal_host_processes(workspace: Path) -> None:
    """A decoy of the sandbox's own uid (so file-permission rules would allow the kill) and the supervisor
    (the command's parent) survive `kill -9` from inside: Landlock scopes signals to the sandbox."""
    seconds = f"26.{uuid.uuid4().int % 10**6:06d}"
    as_sandbox_user = (lambda: (os.setgid(SANDBOX_UID), os.setuid(SANDBOX_UID))) if IS_ROOT else None
    decoy = subprocess.Popen(["sleep", seconds], preexec_fn=as_sandbox_user)  # noqa: PLW1509
    try:
        script = f"kill -9 {decoy.pid} $PPID {os.getpid()} 2> errors.txt; echo $? > status.txt"
        result = run(make("landlock"), workspace, ["/bin/sh", "-c", script])
        assert result.exit_code == 0, result.stderr  # the supervisor was not killed
        assert decoy.poll() is None  # the decoy is alive
        assert (workspace / "status.txt").read_text().strip() != "0"
        assert "not permitted" in (workspace / "errors.txt").read_text()
    finally:
        decoy.kill()
        decoy.wait()


@needs_landlock
def test_landlock_tier_cannot_reach_a_loopback_listener(workspace: Path) -> None:
    sandbox = make("landlock")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        run(sandbox, workspace, ["/bin/bash", "-c", f"echo hi > /dev/tcp/127.0.0.1/{port}"])
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_landlock
def test_process_limit_is_applied(workspace: Path) -> None:
    result = run(make("landlock"), workspace, ["/bin/bash", "-c", "ulimit -u"])
    assert result.exit_code == 0, result.stderr
    assert int(result.stdout) >= 64 and (int(result.stdout) == 64) is IS_ROOT


def test_process_limit_for_a_normal_user_counts_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert process_limit(64) == (64 if IS_ROOT else process_limit(64))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    # the test's own process and its threads belong to the current uid, so the margin comes on top
    assert process_limit(64) >= 64 + 1


def test_unsandboxed_mode_warns_once(workspace: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _warn_unsandboxed.cache_clear()
    sandbox = ProcessSandbox()
    for _ in range(2):
        assert run(sandbox, workspace, ["/bin/true"]).exit_code == 0
    assert capfd.readouterr().err.count("UNSANDBOXED") == 1


def test_doctor_lists_every_tier_and_the_kernel_features() -> None:
    described = describe_sandbox("auto")
    assert set(described["modes"]) == {"bwrap", "landlock", "unshare"}
    assert all(v == "usable" or isinstance(v, str) and v for v in described["modes"].values())
    assert described["seccomp"].startswith("applied") is (NO_FILTER is None)
    assert (described["landlock_abi"] == "not available") is (LANDLOCK is not None and "not enabled" in LANDLOCK)
