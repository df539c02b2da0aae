"""Who runs the sandbox in the escape battery, and what the host plants for the attempts to find.

Two privileges:

    root  when pytest runs as root, harness.py runs as root and calls the sandbox; the code then runs as
          uid 65534. The planted home is world-readable and -writable (except the private key, 0600 as in
          life), so what stops an attempt is the sandbox, not file permissions.
    user  an unprivileged user runs the sandbox, as most users will: when pytest runs as root, harness.py
          under a fresh dedicated uid (setpriv); otherwise the user running pytest, in this process. The
          planted files belong to that user, as in a real home directory.

The harness runs the project's Python when the sandbox's uid can run it; otherwise (e.g. a Python under a
0700 /root, which the landlock tier cannot bring into view) a private venv made from an interpreter of the
same version that it can run, importing this repository and the project's packages. The dedicated user
always gets its own venv, so "write into site-packages" is possible for it without a sandbox.

Each principal also runs a decoy as the sandbox's uid: `sh -c 'sleep 600; : <token>'` with another token
in its environment, the target of the /proc, ptrace and kill attempts.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from tools.sandbox import Sandbox, detect_sandbox

from .evidence import alive, pids, proc_info

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("harness.py")
NOBODY = 65534
SECRET_VAR = "MGB_HOST_SECRET"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
HARNESS_START_S = 60.0


@dataclass(frozen=True)
class Secrets:
    env: str = field(default_factory=lambda: "env" + secrets.token_hex(16))
    key: str = field(default_factory=lambda: "key" + secrets.token_hex(16))
    pub: str = field(default_factory=lambda: "pub" + secrets.token_hex(16))
    decoy_env: str = field(default_factory=lambda: "den" + secrets.token_hex(16))
    decoy_cmd: str = field(default_factory=lambda: "dcm" + secrets.token_hex(16))

    def all(self) -> list[str]:
        return [self.env, self.key, self.pub, self.decoy_env, self.decoy_cmd]


class Unusable(Exception):
    """This principal cannot run here; the message says why (the tests skip with it)."""


class Principal:
    """One privilege's host side: its home, decoy, and the way it calls the sandbox."""

    def __init__(self, privilege: str, base: Path) -> None:
        self.privilege = privilege
        self.secrets = Secrets()
        self.dir = base / privilege
        self.in_process = os.geteuid() != 0  # pytest itself is the unprivileged user; else a harness calls
        if privilege == "root" and self.in_process:
            raise Unusable("the root combination needs pytest to run as root")
        dedicated = privilege == "user" and not self.in_process
        self.host_uid = _free_uid() if dedicated else os.geteuid()
        self.sandbox_uid = NOBODY if privilege == "root" else self.host_uid
        self.dedicated_uid = self.host_uid if dedicated else None
        self.python = sys.executable
        self.harness: subprocess.Popen[str] | None = None
        self.decoy: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._sandboxes: dict[str, Sandbox | str] = {}
        self.canaries: dict[str, str | None] = {}  # per tier: why a plain attempt cannot run, or None
        self.dir.mkdir(mode=0o777 if privilege == "root" else 0o755)
        os.chmod(self.dir, 0o777 if privilege == "root" else 0o755)
        self.home = self.dir / "home"
        self.open_dir = self.dir / "open"
        self.inherited_file = self.dir / "inherited.log"
        self.site_packages = Path(sysconfig.get_paths()["purelib"])
        self._plant()
        if not self.in_process:
            self.python, self.site_packages = self._interpreter()
            self._start_harness()
        self.start_decoy()

    # --- the planted home -------------------------------------------------------------------------

    def _plant(self) -> None:
        self.open_dir.mkdir()
        self.open_dir.chmod(0o1777)
        self.replant()

    def replant(self) -> None:
        """(Re)write the planted home, e.g. after an attempt that escaped changed or deleted a file in it."""
        shared = self.privilege == "root"  # world-accessible, so only the sandbox stands in the way
        files = {
            ".ssh/id_rsa": (f"-----BEGIN OPENSSH PRIVATE KEY-----\n{self.secrets.key}\n", 0o600),
            ".ssh/id_rsa.pub": (f"ssh-ed25519 {self.secrets.pub} user@host\n", 0o644),
            ".bashrc": ("# the user's shell start-up file\n", 0o666 if shared else 0o644),
            "notes.txt": ("the user's own notes\n", 0o666 if shared else 0o644),
            ".config/metagent/settings.toml": ('[tools]\nsandbox = "auto"\n', 0o666 if shared else 0o644),
            ".local/share/metagent/checkpoints.sqlite": ("SQLite format 3\0checkpoints", 0o666 if shared else 0o600),
        }
        for rel, (text, mode) in files.items():
            path = self.home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_text(text)
            path.chmod(mode)
        for d in [self.home, *{(self.home / rel).parent for rel in files}]:
            d.chmod(0o777 if shared else 0o700)
        self.inherited_file.write_text("")
        self.inherited_file.chmod(0o666 if shared else 0o644)
        for path in (self.dir, self.open_dir, self.inherited_file):
            self._give(path)
        self._give(self.home, recursive=True)

    def _give(self, path: Path, recursive: bool = False) -> None:
        """Hand planted paths to the dedicated uid (the harness user owns its home, like a real user)."""
        if self.dedicated_uid is None:
            return
        os.chown(path, self.host_uid, self.host_uid, follow_symlinks=False)
        for root, dirs, files in os.walk(path) if recursive else ():
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), self.host_uid, self.host_uid, follow_symlinks=False)

    def protected(self) -> list[Path]:
        """The planted files outside the workspace that no attempt may change or expose."""
        return [p for p in self.home.rglob("*") if p.is_file()] + [self.inherited_file]

    # --- the harness -----------------------------------------------------------------

    def _as_user(self) -> list[str]:
        return [] if self.host_uid == os.geteuid() else _as_uid(self.host_uid)

    def _runs(self, python: str) -> bool:
        """Whether the sandbox's uid can run this interpreter (and it is this Python's version)."""
        prefix = [] if self.sandbox_uid == os.geteuid() else _as_uid(self.sandbox_uid)
        check = "import sys; print('%d.%d' % sys.version_info[:2])"
        probe = subprocess.run([*prefix, "/usr/bin/env", "-i", python, "-I", "-c", check],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        return probe.returncode == 0 and probe.stdout.strip() == _version()

    def _interpreter(self) -> tuple[str, Path]:
        """The harness's Python and the site-packages the attempts go after: the project's own when the
        sandbox's uid can run it and no dedicated user must own its site-packages; otherwise a private venv
        owned by the harness user, from an interpreter of this version that the sandbox's uid can run (the
        project's may live under a private home, e.g. a 0700 /root)."""
        if self.dedicated_uid is None and self._runs(sys.executable):
            return sys.executable, Path(sysconfig.get_paths()["purelib"])
        version = _version()
        base_executable: str = getattr(sys, "_base_executable", sys.executable)
        candidates = [os.path.realpath(base_executable), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        base = next((c for c in dict.fromkeys(candidates) if self._runs(c)), None)
        if base is None:
            raise Unusable(f"no Python {version} that uid {self.sandbox_uid} may run (tried {candidates})")
        venv = self.dir / "venv"
        made = subprocess.run([*self._as_user(), "/usr/bin/env", "-i", base, "-m", "venv", "--without-pip", str(venv)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if made.returncode != 0:
            raise Unusable(f"uid {self.host_uid} could not create a venv with {base}: {made.stderr.strip()}")
        site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
        pth = site / "metagent-battery.pth"
        pth.write_text(f"{REPO}\n{sysconfig.get_paths()['purelib']}\n")
        os.chown(pth, self.host_uid, self.host_uid)
        return str(venv / "bin" / "python"), site

    def _start_harness(self) -> None:
        env = {"PATH": SAFE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8", SECRET_VAR: self.secrets.env,
               "MGB_INHERITED_FILE": str(self.inherited_file)}  # fmt: skip
        with open(self.dir / "harness.log", "ab") as log:  # a file, so a chatty harness can never block
            self.harness = subprocess.Popen(
                [*self._as_user(), self.python, str(HARNESS)], cwd=self.home, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=_read_replies, args=(self.harness, self._replies), daemon=True).start()
        try:
            self._ask({"op": "ping"}, HARNESS_START_S)
        except RuntimeError as e:
            raise Unusable(f"the harness could not start as uid {self.host_uid} (is the repo and venv "
                           f"readable by it?): {e}") from e  # fmt: skip

    def _ask(self, request: dict[str, Any], limit_s: float, watch: Callable[[], None] | None = None) -> dict[str, Any]:
        if self.harness is None or self.harness.stdin is None:
            raise RuntimeError("no harness")
        try:
            self.harness.stdin.write(json.dumps(request) + "\n")
            self.harness.stdin.flush()
        except OSError as e:
            raise RuntimeError(f"the harness is gone (exit {self.harness.poll()}): {e}") from e
        waited = 0.0
        while waited < limit_s:
            try:
                line = self._replies.get(timeout=0.02)
            except queue.Empty:
                waited += 0.02
                if watch is not None:
                    watch()
                continue
            if line is None:
                err = (self.dir / "harness.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the harness ended (exit {self.harness.wait()}): {err}")
            reply: dict[str, Any] = json.loads(line)
            return reply
        raise RuntimeError(f"the harness did not answer within {limit_s:.0f} s")

    # --- calling the sandbox ----------------------------------------------------------------------

    def problem(self, tier: str) -> str | None:
        """Why `tier` cannot run for this principal here, or None."""
        if tier not in self._sandboxes:
            if self.in_process:
                try:
                    self._sandboxes[tier] = detect_sandbox(tier)  # type: ignore[arg-type]
                except ConfigError as e:
                    self._sandboxes[tier] = str(e)
            else:
                self._sandboxes[tier] = self._ask({"op": "probe", "tier": tier}, HARNESS_START_S).get("error", "")
        found = self._sandboxes[tier]
        return found if isinstance(found, str) and found else None

    def call(self, tier: str, request: dict[str, Any], watch: Callable[[], None]) -> dict[str, Any]:
        """Run one sandbox call; `watch` runs on the host every ~20 ms until it returns."""
        limit_s = float(request["timeout_s"]) + 60
        if not self.in_process:
            return self._ask({"op": "run", "tier": tier, **request}, limit_s, watch)
        sandbox = self._sandboxes[tier]
        if isinstance(sandbox, str):
            raise RuntimeError(sandbox)
        box: list[Any] = []
        inherited = os.open(self.inherited_file, os.O_WRONLY | os.O_APPEND)  # as the harness holds one
        os.set_inheritable(inherited, True)

        def work() -> None:
            limits = {k: request[k] for k in ("timeout_s", "memory_mb", "output_cap_bytes", "stdin")}
            try:
                box.append(sandbox.run(request["argv"], workspace=Path(request["workspace"]), **limits))
            except BaseException as e:  # reported in the test's thread
                box.append(e)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.02)
                watch()
        finally:
            os.close(inherited)
        if not box or isinstance(box[0], BaseException):
            raise RuntimeError(f"the sandbox call failed: {box[0] if box else 'no result'}")
        r = box[0]
        return {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "stdout_len": len(r.stdout),
                "stderr_len": len(r.stderr), "timed_out": r.timed_out, "truncated": r.truncated}  # fmt: skip

    # --- processes the battery spares or kills ----------------------------------------------------

    def start_decoy(self) -> None:
        prefix = [] if self.sandbox_uid == os.geteuid() else _as_uid(self.sandbox_uid)
        env = {"PATH": SAFE_PATH, "MGB_DECOY_SECRET": self.secrets.decoy_env}
        self.decoy = subprocess.Popen([*prefix, "/bin/sh", "-c", f"sleep 600; : {self.secrets.decoy_cmd}"],
                                      env=env, cwd="/", start_new_session=True)  # fmt: skip

    def decoy_pid(self) -> int:
        """The decoy's pid, restarting it when an earlier attempt killed it (that attempt has failed)."""
        if self.decoy is None or not alive(self.decoy.pid):
            self._stop(self.decoy)
            self.start_decoy()
        assert self.decoy is not None  # just started
        return self.decoy.pid

    def spared(self) -> tuple[set[int], set[int]]:
        """Pids and session ids that belong to the battery itself (harness, decoy)."""
        pids = {self.harness.pid} if self.harness is not None else set()
        sids = {self.decoy.pid} if self.decoy is not None else set()
        return pids, sids

    def revive(self) -> None:
        """Restart the harness and the decoy when an earlier attempt killed them (that attempt has failed)."""
        if self.harness is not None and self.harness.poll() is not None:
            self._stop(self.harness)
            self._replies = queue.Queue()
            self._start_harness()
        self.decoy_pid()

    def harness_alive(self) -> bool:
        if self.harness is None:
            return True
        try:
            return self._ask({"op": "ping"}, 10.0).get("pid") == self.harness.pid
        except RuntimeError:
            return False

    @staticmethod
    def _stop(proc: subprocess.Popen[Any] | None) -> None:
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def close(self) -> None:
        self._stop(self.decoy)
        if self.harness is not None and self.harness.stdin is not None:
            with contextlib.suppress(OSError):
                self.harness.stdin.close()
        self._stop(self.harness)


def _version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _read_replies(harness: subprocess.Popen[str], replies: queue.Queue[str | None]) -> None:
    """Move one harness's answers to its queue; None when it has ended."""
    for line in harness.stdout or ():
        replies.put(line)
    replies.put(None)


def _as_uid(uid: int) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise Unusable("setpriv (util-linux) is not installed, so nothing can run as another uid")
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def _free_uid() -> int:
    """A uid no process uses and no account names, fresh for this session."""
    with open("/etc/passwd") as f:
        named = {int(line.split(":")[2]) for line in f if line.count(":") >= 2 and line.split(":")[2].isdigit()}
    used = {info.uid for info in map(proc_info, pids()) if info is not None}
    while True:
        uid = 200000 + secrets.randbelow(100000)
        if uid not in named and uid not in used:
            return uid
