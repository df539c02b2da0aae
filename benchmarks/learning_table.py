"""What every section of benchmarks/learning.py returns, and the table the benchmark prints.

A section is a function `(Options) -> SectionResult` listed in its module's `SECTIONS` dict
(learning_adapters.py: "adapters"; learning_memory.py: "classifier", "episodes"). A row is one number: a
task, a model variant, a decoding or setting, a metric, the value, how many held-out examples it was
measured on, and the baseline's value of the same metric measured in the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Options:
    quick: bool  # a smoke run: tiny sizes, numbers mean nothing
    seed: int
    work_dir: Path  # generated data, trained adapters, caches
    threads: int = 0  # torch CPU threads; 0 = as configured
    reuse: bool = False  # reuse artifacts in work_dir whose recorded data hash matches (sections say which)


@dataclass(frozen=True)
class Row:
    task: str
    model: str
    setting: str  # e.g. "constrained" / "free" decoding, "k=5"
    metric: str
    value: float | None
    n: int
    base: float | None = None  # the baseline's value of this metric, same setting, same run
    unit: str = "%"  # "%": value and base are shares in [0, 1], printed as percentages; else printed as is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SectionResult:
    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping in the JSON


def render(rows: list[Row]) -> str:
    """A fixed-width table, one row per number, with the gain over the baseline where there is one."""
    header = ("task", "model", "setting", "metric", "value", "n", "base", "gain")
    cells = [header] + [
        (r.task, r.model, r.setting, r.metric, _shown(r.value, r.unit), str(r.n), _shown(r.base, r.unit),
         _gain(r.value, r.base, r.unit))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shown(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if unit == "%" else f"{value:.3g} {unit}".rstrip()


def _gain(value: float | None, base: float | None, unit: str) -> str:
    if value is None or base is None:
        return ""
    return f"{100 * (value - base):+.1f} pt" if unit == "%" else f"{value - base:+.3g} {unit}".rstrip()
