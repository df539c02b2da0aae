"""Trusted host code for the escape battery: runs sandbox calls on the battery's behalf.

The battery starts this program as a dedicated unprivileged uid (`setpriv --reuid N ...`), so the sandbox is
exercised the way a normal user runs metagent, and as root, so the attempts' processes and environment are
apart from pytest's. It reads one JSON request per line on stdin and answers one JSON line
on stdout:

    {"op": "ping"}                                   -> {"pid": <this process>}
    {"op": "probe", "tier": "bwrap"}                 -> {"ok": true} or {"error": "<why not usable>"}
    {"op": "run", "tier": ..., "argv": [...], "stdin": "...", "workspace": "...",
     "timeout_s": 2.0, "memory_mb": 256, "output_cap_bytes": 65536}
                                                     -> the SandboxResult's fields (output cut to 4 KiB,
                                                        with the captured lengths)

The pseudo-tier "host" runs the attempt with no sandbox at all (its own session, the harness's environment,
cwd in the workspace, an output cap and a timeout, nothing else): METAGENT_BATTERY_TIERS=host shows that
each attempt's evidence does see an escape.

It also keeps one inheritable descriptor open on the file named by MGB_INHERITED_FILE (an append-mode
file outside the workspace), so the battery can check that no sandbox hands it to the child.
This program prints only metadata; the battery judges by evidence on the host, never by these answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.errors import ConfigError  # noqa: E402
from tools.process import SandboxResult  # noqa: E402
from tools.sandbox import Sandbox, detect_sandbox  # noqa: E402

OUTPUT_SHOWN = 4096


class NoSandbox:
    """The "host" pseudo-tier: NOT a sandbox, a careless runner that lets every attempt escape: it passes
    inheritable descriptors on and, at the timeout or the output cap, kills only the process it started."""

    name = "host"

    def run(self, argv: list[str], *, workspace: Path, timeout_s: float, memory_mb: int, output_cap_bytes: int,
            stdin: str | None = None) -> SandboxResult:  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=workspace, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, close_fds=False)  # fmt: skip
        threading.Thread(target=_feed, args=(proc, stdin or ""), daemon=True).start()
        assert proc.stdout is not None  # a pipe was asked for
        output, timed_out = b"", False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while len(output) < output_cap_bytes:
                left = started + timeout_s - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(min(left, 0.05)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
        proc.kill()
        proc.wait()
        proc.stdout.close()
        text = output[:output_cap_bytes].decode("utf-8", "replace")
        return SandboxResult(proc.returncode, text, "", timed_out, len(output) >= output_cap_bytes,
                             time.monotonic() - started)  # fmt: skip


def _feed(proc: subprocess.Popen[bytes], data: str) -> None:
    with contextlib.suppress(OSError):
        assert proc.stdin is not None  # a pipe was asked for
        proc.stdin.write(data.encode())
        proc.stdin.close()


def answer(request: dict[str, Any], sandboxes: dict[str, Sandbox | NoSandbox]) -> dict[str, Any]:
    op = request.get("op")
    if op == "ping":
        return {"pid": os.getpid()}
    tier = str(request.get("tier"))
    if tier not in sandboxes:
        try:
            sandboxes[tier] = NoSandbox() if tier == "host" else detect_sandbox(tier)  # type: ignore[arg-type]
        except ConfigError as e:
            return {"error": str(e)}
    if op == "probe":
        return {"ok": True}
    if op != "run":
        return {"error": f"unknown op {op!r}"}
    result = sandboxes[tier].run(
        request["argv"],
        workspace=Path(request["workspace"]),
        timeout_s=float(request["timeout_s"]),
        memory_mb=int(request["memory_mb"]),
        output_cap_bytes=int(request["output_cap_bytes"]),
        stdin=request.get("stdin"),
    )
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout[:OUTPUT_SHOWN],
        "stderr": result.stderr[:OUTPUT_SHOWN],
        "stdout_len": len(result.stdout),
        "stderr_len": len(result.stderr),
        "timed_out": result.timed_out,
        "truncated": result.truncated,
        "elapsed_s": result.elapsed_s,
    }


def main() -> None:
    inherited = os.environ.get("MGB_INHERITED_FILE")
    if inherited:
        fd = os.open(inherited, os.O_WRONLY | os.O_APPEND)
        os.set_inheritable(fd, True)
    sandboxes: dict[str, Sandbox | NoSandbox] = {}
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line), sandboxes)
        except Exception as e:  # report and keep serving: one bad request must not end the session
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
