"""Benchmarks print as they go and keep what they printed: a copy of stdout goes to
benchmarks/results/<name>-<UTC time>.txt, with the machine's details at the top."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

RESULTS = Path(__file__).resolve().parent / "results"


class _Tee:
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def recorded(name: str) -> Iterator[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.txt"
    with path.open("w", encoding="utf-8") as file:
        file.write(f"# {name} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}), load average {os.getloadavg()}\n")
        real = sys.stdout
        sys.stdout = _Tee(real, file)
        try:
            yield path
        finally:
            sys.stdout = real
    print(f"results written to {path}")
