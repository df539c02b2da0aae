"""The sandbox, judged by evidence on the host: files that do (not) appear, connections that do not arrive,
processes that no longer exist. Every available mode runs the same tests; unavailable ones are skipped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.errors import ConfigError
from agent.types import ToolCall
from tools import Broker, ToolRegistry, builtin_tools, describe_sandbox, detect_sandbox
from tools.process import SandboxResult
from tools.sandbox import (
    BwrapSandbox,
    LandlockSandbox,
    ProcessSandbox,
    Sandbox,
    UnshareSandbox,
    landlock_problem,
    probe,
    python_binary,
)

from .sandboxed_tools import fail, inspect_sandbox, scratch_only, sleep_long

MODES = ["bwrap", "landlock", "unshare", "none"]
IS_ROOT = os.geteuid() == 0


def make_sandbox(mode: str) -> Sandbox:
    if mode == "none":
        return ProcessSandbox()
    if mode == "landlock":
        # the kernel check only: as root its probe also wants this Python reachable by uid 65534, which only
        # the tests that run Python need (they skip through needs_python)
        problem = landlock_problem()
        if problem is not None:
            pytest.skip(f"landlock sandbox not available here: {problem}")
        return LandlockSandbox()
    problem = probe(mode)  # type: ignore[arg-type]
    if problem is not None:
        pytest.skip(f"{mode} sandbox not available here: {problem}")
    return BwrapSandbox() if mode == "bwrap" else UnshareSandbox()


@pytest.fixture(params=MODES)
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    return make_sandbox(request.param)


@pytest.fixture
def workspace() -> Iterator[Path]:
    # Directly under /tmp (not pytest's 0700 tmp_path), so the process-only mode's uid 65534 can reach it.
    path = Path(tempfile.mkdtemp(prefix="metagent-ws-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sh(sandbox: Sandbox, workspace: Path, script: str, **limits: float) -> SandboxResult:
    return sandbox.run(
        ["/bin/sh", "-c", script],
        workspace=workspace,
        timeout_s=limits.get("timeout_s", 10.0),
        memory_mb=int(limits.get("memory_mb", 256)),
        output_cap_bytes=int(limits.get("output_cap_bytes", 65536)),
    )


def needs_python(sandbox: Sandbox, workspace: Path) -> None:
    result = sandbox.run([python_binary(), "-I", "-S", "-c", "pass"], workspace=workspace, timeout_s=10,
                         memory_mb=256, output_cap_bytes=4096)  # fmt: skip
    if result.exit_code != 0:
        pytest.skip(f"{sandbox.name}: Python cannot run in this mode here: {result.stderr.strip()}")


def test_runs_code_with_cwd_and_home_in_a_copy_of_the_workspace(sandbox: Sandbox, workspace: Path) -> None:
    (workspace / "seen.txt").write_text("host file\n")
    result = sh(sandbox, workspace, 'echo "$PWD $HOME"; cat seen.txt; echo oops >&2; exit 3')
    assert result.exit_code == 3, result.stderr
    cwd, home = result.stdout.splitlines()[0].split()
    assert cwd == home and cwd != str(workspace)  # a staging copy, never the workspace itself
    assert result.stdout.splitlines()[1:] == ["host file"] and result.stderr == "oops\n"
    assert not Path(cwd).exists()  # removed once the call is over
    assert not result.timed_out and not result.truncated and result.elapsed_s < 5


def test_runs_python(sandbox: Sandbox, workspace: Path) -> None:
    needs_python(sandbox, workspace)
    result = sandbox.run([python_binary(), "-I", "-"], workspace=workspace, timeout_s=10, memory_mb=256,
                         output_cap_bytes=4096, stdin="import sys\nprint(6 * 7, sys.stdin.read())")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "42 \n"


def test_workspace_is_writable(sandbox: Sandbox, workspace: Path) -> None:
    (workspace / "from_host.txt").write_text("host\n")  # root-owned when the tests run as root
    result = sh(sandbox, workspace, "echo sandbox >> from_host.txt && mkdir -p d && echo new > d/new.txt")
    assert result.exit_code == 0, result.stderr
    assert (workspace / "from_host.txt").read_text() == "host\nsandbox\n"
    assert (workspace / "d" / "new.txt").read_text() == "new\n"


@pytest.mark.parametrize("mode", ["bwrap", "landlock", "unshare"])
def test_writes_outside_the_workspace_do_not_reach_the_host(mode: str, workspace: Path) -> None:
    sandbox = make_sandbox(mode)
    open_dir = Path(tempfile.mkdtemp(prefix="metagent-open-", dir="/tmp"))
    open_dir.chmod(0o1777)  # world-writable: file permissions alone would not stop the sandbox user
    token = uuid.uuid4().hex
    targets = [open_dir / "planted.txt", workspace.parent / f"escaped-{token}", Path(f"/tmp/planted-{token}")]
    try:
        script = "; ".join(f"echo x > {t} 2>/dev/null" for t in targets) + "; true"
        result = sh(sandbox, workspace, script)
        assert result.exit_code == 0, result.stderr
        assert [t for t in targets if t.exists()] == []
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
        for t in targets:
            t.unlink(missing_ok=True)


def test_no_network(sandbox: Sandbox, workspace: Path) -> None:
    """A listener on the host's loopback gets no connection from an isolated sandbox (and does get one from
    the process-only mode, which shows this test can tell the difference)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        sh(sandbox, workspace, f"exec bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' 2>/dev/null", timeout_s=5)
        try:
            connection, _ = listener.accept()
            connection.close()
            connected = True
        except TimeoutError:
            connected = False
    assert connected is (not sandbox.isolated)


def test_environment_secrets_do_not_enter(sandbox: Sandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"OPENAI_API_KEY": "sk-test-123", "AWS_SECRET_ACCESS_KEY": "aws-test-456", "GH_TOKEN": "ghp-789"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    result = sh(sandbox, workspace, "env > env.txt")
    assert result.exit_code == 0, result.stderr
    seen = (workspace / "env.txt").read_text()
    assert "HOME=/" in seen and "PATH=" in seen  # the file came back whole: absent names are not a fluke
    for name, value in secrets.items():
        assert name not in seen and value not in seen


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_timeout_kills_the_whole_process_group(sandbox: Sandbox, workspace: Path) -> None:
    seconds = f"29.{uuid.uuid4().int % 10**6:06d}"  # a sleep no other process on this host runs
    script = f"sleep {seconds} & echo $! > child.pid; (sleep {seconds}; echo late > late.txt) & sleep {seconds}"
    result = sh(sandbox, workspace, script, timeout_s=1.0)
    assert result.timed_out and 0.9 < result.elapsed_s < 3
    assert (workspace / "child.pid").read_text().strip().isdigit()
    deadline = time.monotonic() + 2
    while _processes_with(f"sleep\x00{seconds}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep\x00{seconds}") == []
    assert not (workspace / "late.txt").exists()


def test_a_background_process_does_not_hold_the_run_open(sandbox: Sandbox, workspace: Path) -> None:
    seconds = f"28.{uuid.uuid4().int % 10**6:06d}"
    result = sh(sandbox, workspace, f"sleep {seconds} & echo started", timeout_s=5)
    assert result.exit_code == 0 and result.stdout == "started\n" and not result.timed_out
    assert result.elapsed_s < 2
    deadline = time.monotonic() + 2
    while _processes_with(f"sleep\x00{seconds}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep\x00{seconds}") == []


def test_output_cap_stops_the_child(sandbox: Sandbox, workspace: Path) -> None:
    result = sh(sandbox, workspace, "yes metagent", output_cap_bytes=4096, timeout_s=10)
    assert result.truncated and not result.timed_out
    assert len(result.stdout.encode()) == 4096 and result.stdout.startswith("metagent\n")
    assert result.elapsed_s < 3


def test_memory_limit(sandbox: Sandbox, workspace: Path) -> None:
    needs_python(sandbox, workspace)
    code = "b = bytearray(600 * 1024 * 1024)\nprint('allocated')"
    result = sandbox.run([python_binary(), "-I", "-c", code], workspace=workspace, timeout_s=10, memory_mb=200,
                         output_cap_bytes=4096)  # fmt: skip
    assert result.exit_code != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_memory_of_the_whole_process_tree_is_limited(sandbox: Sandbox, workspace: Path) -> None:
    """Each process stays under the per-process limit; six of them together do not."""
    needs_python(sandbox, workspace)
    code = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "b = bytearray(90 * 1024 * 1024)\n"
        "open(f'alive-{os.getpid()}', 'w').close()\n"
        "time.sleep(20)\n"
    )
    started = time.monotonic()
    result = sandbox.run([python_binary(), "-I", "-c", code], workspace=workspace, timeout_s=15, memory_mb=200,
                         output_cap_bytes=4096)  # fmt: skip
    assert time.monotonic() - started < 10 and not result.timed_out, result
    assert result.stopped is not None and "memory" in result.stopped
    assert list(workspace.iterdir()) == []  # a stopped call brings nothing back


@pytest.mark.skipif(not IS_ROOT, reason="privileges are only dropped when metagent runs as root")
def test_root_drops_privileges(sandbox: Sandbox, workspace: Path) -> None:
    script = "id -u > uid.txt; cat /etc/shadow > shadow.txt 2>/dev/null; ls -A /root > root.txt 2>/dev/null; true"
    result = sh(sandbox, workspace, script)
    assert result.exit_code == 0, result.stderr
    assert (workspace / "uid.txt").read_text().strip() == "65534"
    assert (workspace / "shadow.txt").read_text() == ""
    assert ".bashrc" not in (workspace / "root.txt").read_text() if (workspace / "root.txt").exists() else True


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_user_namespace_variant_used_when_not_root(mode: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When metagent is not root both modes add a user namespace; exercise that path here too."""
    sandbox = make_sandbox(mode)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = sh(sandbox, workspace, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo ok > ns.txt")
    assert result.exit_code == 0, result.stderr
    assert "CapEff:\t0000000000000000" in result.stdout and "NoNewPrivs:\t1" in result.stdout
    assert (workspace / "ns.txt").read_text() == "ok\n"


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_python_tool_and_sandboxed_function_tools_through_the_broker(mode: str, workspace: Path) -> None:
    sandbox = make_sandbox(mode)
    registry = ToolRegistry([*builtin_tools(), inspect_sandbox, scratch_only, sleep_long, fail])
    broker = Broker(registry, ToolSettings.model_validate({"sandbox": mode}), workspace, sandbox=sandbox)
    (workspace / "data.txt").write_text("21")
    code = "n = int(open('data.txt').read())\nprint(n * 2)\nopen('out.txt', 'w').write('done')"
    # like an interactive session, the value of the final expression (write() returns 4) is shown too
    assert broker.call(ToolCall("1", "python", {"code": code})).output == "42\n4\n[files written: out.txt]"
    assert (workspace / "out.txt").read_text() == "done"
    failed = broker.call(ToolCall("2", "python", {"code": "1/0"}))
    assert not failed.ok and failed.error is not None
    assert failed.error.startswith("exit code 1") and failed.error.endswith("ZeroDivisionError: division by zero")

    inspected = broker.call(ToolCall("3", "inspect_sandbox", {"note": "hi"}), user_id="ann")
    assert inspected.ok, inspected.error
    expected_uid = 65534 if IS_ROOT else os.getuid()
    seen = json.loads(inspected.output)
    assert seen["uid"] == expected_uid and seen["user"] == "ann"
    assert seen["cwd"] == seen["workspace"] != str(workspace)  # the function works in the staging copy
    assert (workspace / "note.txt").read_text() == "hi"
    assert broker.call(ToolCall("4", "scratch_only", {})).output == "[]"  # not the workspace
    started = time.monotonic()
    assert broker.call(ToolCall("5", "sleep_long", {})).error == "timed out after 1 s"
    assert time.monotonic() - started < 3
    assert broker.call(ToolCall("6", "fail", {"x": 3})).error == "ValueError: bad value 3"


def test_detection_and_description(monkeypatch: pytest.MonkeyPatch) -> None:
    loud = describe_sandbox("none")
    assert loud["active"] == "none" and not loud["isolated"] and "NOT SANDBOXED" in loud["why"]
    assert any("NETWORK" in line for line in loud["does_not_protect"])
    assert isinstance(detect_sandbox("none"), ProcessSandbox)
    with pytest.raises(ConfigError, match="unknown sandbox mode"):
        detect_sandbox("docker")  # type: ignore[arg-type]

    probe.cache_clear()
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    try:
        with pytest.raises(ConfigError, match="'bwrap' is not usable here: `bwrap` is not installed"):
            detect_sandbox("bwrap")
        fallback = detect_sandbox("auto")
        expected = next((m for m in ("landlock", "unshare") if probe(m) is None), "none")  # auto's order
        assert fallback.name == expected
        described = describe_sandbox("auto")
        assert described["active"] == expected and described["modes"]["bwrap"] == "`bwrap` is not installed"
    finally:
        probe.cache_clear()
