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

It also keeps one inheritable descriptor open on the file named by MGB_INHERITED_FILE (an append-mode
file outside the workspace), so the battery can check that no sandbox hands it to the child.
This program prints only metadata; the battery judges by evidence on the host, never by these answers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.errors import ConfigError  # noqa: E402
from tools.sandbox import Sandbox, detect_sandbox  # noqa: E402

OUTPUT_SHOWN = 4096


def answer(request: dict[str, Any], sandboxes: dict[str, Sandbox]) -> dict[str, Any]:
    op = request.get("op")
    if op == "ping":
        return {"pid": os.getpid()}
    tier = str(request.get("tier"))
    if tier not in sandboxes:
        try:
            sandboxes[tier] = detect_sandbox(tier)  # type: ignore[arg-type]
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
    sandboxes: dict[str, Sandbox] = {}
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line), sandboxes)
        except Exception as e:  # report and keep serving: one bad request must not end the session
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
