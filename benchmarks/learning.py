"""The learning benchmark: what metagent gains from adapters, taught kinds and its own episodes, on held-out data.

    .venv/bin/python benchmarks/learning.py [--sections adapters,...] [--quick] [--seed N] [--reuse]

Sections (each in its own module, listed in that module's SECTIONS dict):
  adapters    learning_adapters.py: LoRA adapters trained in the run on generated data (tool calling on
              held-out functions; invoice-record extraction on held-out vendors), base vs adapter, free vs
              constrained decoding, on the bundled model
  classifier, episodes: learning_memory.py, when present
Prints one table (task x model x setting x metric, with n and the baseline measured in the same run), keeps a
copy of everything printed in benchmarks/results/learning-<time>.txt and the numbers in the .json next to it.
--quick is a smoke run with tiny sizes: its numbers mean nothing. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.learning_table import Options, Row, SectionResult, render  # noqa: E402

SECTION_MODULES = ("benchmarks.learning_adapters", "benchmarks.learning_memory")
Section = Callable[[Options], SectionResult]


def available_sections() -> dict[str, Section]:
    """Every section of the section modules that exist, in module order."""
    found: dict[str, Section] = {}
    for name in SECTION_MODULES:
        if importlib.util.find_spec(name) is not None:
            found.update(importlib.import_module(name).SECTIONS)
    return found


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Section]]:
    """The command line, checked (before anything is recorded), and the sections it chose, in order."""
    sections = available_sections()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(sections),
                        help=f"comma-separated, from: {', '.join(sections)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, the numbers mean nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as configured)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "metagent-learning"),
                        help="generated data, trained adapters, caches")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse trained artifacts in --work-dir whose recorded data hash matches")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in sections]
    if unknown or not chosen:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(sections)}")
    return args, {name: sections[name] for name in chosen}


def main(args: argparse.Namespace, chosen: dict[str, Section]) -> dict[str, Any]:
    options = Options(quick=args.quick, seed=args.seed, work_dir=Path(args.work_dir), threads=args.threads,
                      reuse=args.reuse)
    print(f"learning benchmark: sections {', '.join(chosen)}; quick={args.quick}; seed={args.seed}; "
          f"load average {os.getloadavg()}")
    rows: list[Row] = []
    report: dict[str, Any] = {"options": {**vars(args), "sections": list(chosen)}, "sections": {}}
    for name, section in chosen.items():
        started = time.perf_counter()
        result = section(options)
        wall_s = round(time.perf_counter() - started, 1)
        print(f"section {name}: {wall_s} s")
        rows += result.rows
        report["sections"][name] = {"wall_s": wall_s, "rows": [r.to_dict() for r in result.rows],
                                    "details": result.details}
    print()
    print(render(rows))
    report["load_average_after"] = os.getloadavg()
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import recorded

    parsed = parse()
    with recorded("learning") as text_path:
        numbers = main(*parsed)
    json_path = text_path.with_suffix(".json")
    json_path.write_text(json.dumps(numbers, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"numbers written to {json_path}")
