"""Sandbox spawn latency per tier against a plain subprocess, all measured in this run.

    .venv/bin/python benchmarks/sandbox.py [--runs N] [--with-site]

For every tier usable here (bwrap, landlock, unshare, and the process-only "none"), times `Sandbox.run` of
`python -I -S -c pass` (with --with-site also `python -I -c pass`, which imports site) in an empty
workspace, end to end: staging the workspace, the wrapper, the init program (rlimits, seccomp, Landlock,
uid drop), the command, reaping and collecting. The baseline is `subprocess.run` of the same command;
"py+exec" is a Python (-I -S) that only execs the command: the floor for any tier whose init program is
itself a Python, as all of them are today.
Calls are interleaved (one of each per round) so load on the machine falls on all of them alike.

Prints p50/p90 in ms and the ratio to the baseline, checks the issue's goals (tier a, bwrap: p50 under
50 ms; tier b, landlock: p50 under 20 ms), and writes the numbers as JSON next to the printed copy under
benchmarks/results/. Runs as whoever starts it: as root the command runs as uid 65534, and tiers without
their own mounts (landlock, none) need a Python that uid can reach; the reason is printed when a tier is
not usable. Not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIERS = ("bwrap", "landlock", "unshare", "none")
GOALS_MS = {"bwrap": 50.0, "landlock": 20.0}  # p50, from the issue: tier (a) and tier (b)
WARMUP_RUNS = 2


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def usable_tiers() -> tuple[dict[str, Any], dict[str, str]]:
    """The sandboxes that work here, and why the others do not."""
    from agent.errors import ConfigError
    from tools.sandbox import detect_sandbox

    found: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for tier in TIERS:
        try:
            found[tier] = detect_sandbox(tier)  # type: ignore[arg-type]
        except ConfigError as e:
            missing[tier] = str(e).split(". Install")[0]
    return found, missing


def callers(command: list[str], sandboxes: dict[str, Any], workspace: Path) -> dict[str, Callable[[], None]]:
    """One zero-argument call per series: the baseline first, then each tier."""

    def baseline() -> None:
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)

    def exec_chain() -> None:  # the floor of a design whose init program is a Python that then execs
        hop = f"import os; os.execv({command[0]!r}, {command!r})"
        subprocess.run([command[0], "-I", "-S", "-c", hop], check=True, stdin=subprocess.DEVNULL, capture_output=True)

    def tier_call(sandbox: Any) -> Callable[[], None]:
        def call() -> None:
            result = sandbox.run(command, workspace=workspace, timeout_s=30.0, memory_mb=512, output_cap_bytes=4096)
            if result.exit_code != 0:
                raise RuntimeError(f"{sandbox.name}: exit {result.exit_code}: {result.stderr.strip()[-300:]}")

        return call

    tiers = {name: tier_call(sb) for name, sb in sandboxes.items()}
    return {"subprocess": baseline, "py+exec": exec_chain, **tiers}


def drop_failing(calls: dict[str, Callable[[], None]], missing: dict[str, str]) -> dict[str, Callable[[], None]]:
    """Keep the series whose call works once here; say why the others do not (e.g. "none" as root with a
    Python that uid 65534 cannot reach: it is not probed like the isolated tiers)."""
    kept = {}
    for name, call in calls.items():
        try:
            call()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            if name == "subprocess":
                raise
            missing[name] = str(e)
            continue
        kept[name] = call
    return kept


def measure(calls: dict[str, Callable[[], None]], runs: int) -> dict[str, list[float]]:
    """Milliseconds per call, interleaved round by round after a short warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(WARMUP_RUNS + runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            elapsed_ms = (time.perf_counter() - started) * 1000
            if round_number >= WARMUP_RUNS:
                samples[name].append(elapsed_ms)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    base = samples["subprocess"]
    base_p50, base_p90 = percentile(base, 50), percentile(base, 90)
    rows: dict[str, dict[str, Any]] = {}
    for name, data in samples.items():
        p50, p90 = percentile(data, 50), percentile(data, 90)
        rows[name] = {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "p50_ratio": round(p50 / base_p50, 2),
                      "p90_ratio": round(p90 / base_p90, 2), "samples_ms": [round(x, 2) for x in data]}  # fmt: skip
        if name in GOALS_MS:
            rows[name]["goal_p50_ms"] = GOALS_MS[name]
            rows[name]["goal_met"] = p50 < GOALS_MS[name]
    return rows


def show(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'':<11}{'p50 ms':>8}{'p90 ms':>8}{'p50 x':>8}{'p90 x':>8}   goal (p50)")
    for name, row in rows.items():
        goal = ""
        if "goal_p50_ms" in row:
            goal = f"< {row['goal_p50_ms']:.0f} ms: {'met' if row['goal_met'] else 'NOT met'}"
        print(f"  {name:<11}{row['p50_ms']:8.1f}{row['p90_ms']:8.1f}{row['p50_ratio']:7.2f}x{row['p90_ratio']:7.2f}x"
              f"   {goal}")  # fmt: skip


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per series (default 30)")
    parser.add_argument("--with-site", action="store_true", help="also time `python -I -c pass` (imports site)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    from tools.sandbox import python_binary

    python = python_binary()
    sandboxes, missing = usable_tiers()
    print(f"python {python}; uid {os.geteuid()}; {args.runs} runs per series after {WARMUP_RUNS} warm-up, "
          f"interleaved; load average {os.getloadavg()}")  # fmt: skip
    commands = {"python -I -S -c pass": [python, "-I", "-S", "-c", "pass"]}
    if args.with_site:
        commands["python -I -c pass"] = [python, "-I", "-c", "pass"]
    report: dict[str, Any] = {"python": python, "uid": os.geteuid(), "runs": args.runs, "unusable": missing,
                              "load_average_before": os.getloadavg(), "commands": {}}  # fmt: skip
    shown: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="metagent-bench-") as scratch:
        for title, command in commands.items():
            calls = drop_failing(callers(command, sandboxes, Path(scratch)), missing)
            for tier in [t for t in missing if t not in shown]:
                print(f"  {tier}: not usable here: {missing[tier]}")
                shown.add(tier)
            rows = summarize(measure(calls, args.runs))
            show(title, rows)
            report["commands"][title] = rows
    report["load_average_after"] = os.getloadavg()
    print(f"\nload average after: {report['load_average_after']}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import recorded

    with recorded("sandbox") as text_path:
        numbers = main()
    json_path = text_path.with_suffix(".json")
    json_path.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    print(f"numbers written to {json_path}")
