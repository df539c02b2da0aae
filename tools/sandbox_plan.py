"""What every sandbox tier hands to its init program: the environment, the directories Python needs, the
init program itself (a bootstrap carrying tools/seccomp.py, tools/landlock.py and tools/sandbox_init.py as
source text), and the process limit.
"""

from __future__ import annotations

import base64
import functools
import marshal
import os
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def process_limit(margin: int) -> int:
    """RLIMIT_NPROC for the command. The kernel counts every process (thread) of the real uid, not only the
    sandbox's: as root the command runs as the dedicated uid 65534 and gets `margin`; a normal user
    gets the processes it already runs plus `margin` (its other programs starting meanwhile eat into
    that margin). Tiers with a user namespace override this: there the count starts from zero."""
    if os.geteuid() == 0:
        return margin
    return _tasks_of(os.getuid()) + margin


def _tasks_of(uid: int) -> int:
    """Threads of every process whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        except OSError:
            continue
        if int(fields.get(b"Uid", b"-1").split()[0]) == uid:
            count += int(fields.get(b"Threads", b"1"))
    return count


def sandbox_env(workspace: Path) -> dict[str, str]:
    """The whole environment of a sandboxed command: fixed values, never inherited secrets."""
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(workspace),
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "PYTHONUNBUFFERED": "1",  # ignored under python -I, read by python without it
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    tz = os.environ.get("TZ", "")
    if tz and all(c.isalnum() or c in "/_+-:" for c in tz):
        env["TZ"] = tz
    return env


def python_binary() -> str:
    return os.path.realpath(sys.executable)


def python_roots() -> list[str]:
    """The directories the running Python needs: its installation and the virtual environment."""
    exe_root = str(Path(python_binary()).parent.parent)
    return [real_path(Path(sys.base_prefix)), real_path(Path(sys.prefix)), exe_root]


def real_path(path: Path) -> str:
    return os.path.realpath(path)


def minimal_roots(paths: Sequence[str]) -> list[str]:
    """Unique existing directories, without those inside another one of the list."""
    unique = sorted({p for p in paths if os.path.isdir(p)})
    return [p for p in unique if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in unique)]


_BOOTSTRAP = """import binascii, marshal, sys, zlib
seccomp_code, landlock_code, init_code = marshal.loads(zlib.decompress(binascii.a2b_base64("{codes}")))
def _module(name, code):
    module = type(sys)(name)
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module
_package = type(sys)("tools")
_package.__path__ = []
sys.modules["tools"] = _package
_package.seccomp = _module("tools.seccomp", seccomp_code)
_package.landlock = _module("tools.landlock", landlock_code)
exec(init_code, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""
MAX_ARG_BYTES = 128 << 10  # the kernel's limit on one argument of exec (MAX_ARG_STRLEN)


@functools.cache
def init_source() -> str:
    """What `python -I -S -c` runs first in every tier: a bootstrap that defines the modules `tools.seccomp`
    and `tools.landlock` (no project file exists inside the sandbox), then runs sandbox_init.py as __main__.

    The three are compiled here and passed marshalled, compressed and in base64: compiling them at every start
    cost ~10 ms, and Python decodes and parses a long -c argument slowly (~6 ms for 87 KB of hex; ~27 KB
    now). The marshal format belongs to the interpreter that wrote it, and the init runs under this very one
    (python_binary())."""
    here = Path(__file__).parent
    codes = tuple(
        compile((here / name).read_text(encoding="utf-8"), f"<metagent tools/{name}>", "exec", optimize=2)
        for name in ("seccomp.py", "landlock.py", "sandbox_init.py")
    )
    source = _BOOTSTRAP.format(codes=base64.b64encode(zlib.compress(marshal.dumps(codes), 9)).decode())
    if len(source.encode()) >= MAX_ARG_BYTES:
        raise RuntimeError(f"the sandbox init program is {len(source.encode())} bytes; exec takes < {MAX_ARG_BYTES}")
    return source


def encode_plan(plan: dict[str, Any]) -> str:
    """The plan argument of the init program: marshalled (no json import needed to read it), in hex."""
    return marshal.dumps(plan).hex()
