"""Adapter training speed and effect on the bundled SmolLM2-135M (CPU unless a GPU is present).

    .venv/bin/python benchmarks/bench_training.py [--examples 100] [--epochs 3] [--threads N] [--dpo]

A toy house task the project invents: reminders rewritten into a fixed one-line format, with the time in
24-hour form ("Remind me to call Alice on Friday at 3pm" -> "REMINDER | task: call Alice | day: Friday |
time: 15:00"). The base model never answers in that format. The data is generated (seeded), written to a
JSONL file, and trained on through `train_adapter` exactly as `metagent adapters train` does; the held-out
share (20%) is never trained on. With --dpo it then trains on preference pairs of the same task (chosen:
the right 24-hour time; rejected: am and pm mixed up) starting from the SFT adapter, and reports held-out
preference accuracy before (the SFT adapter) and after.

Prints, all measured in this run: held-out loss, exact match and the share of fields (task, day, time) right,
before (= the base model) and after,
training wall time and examples/s, the forgetting guard's general-set loss, and the whole run's time.
Not a test: numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import recorded  # noqa: E402

NAMES = ["Alice", "Bob", "Carla", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko", "Liam"]
TASKS = ["call {n}", "email {n}", "meet {n} for lunch", "send {n} the report", "pick up {n} at the station",
         "buy a gift for {n}", "text {n} about the party", "review {n}'s draft"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FORMS = ["Remind me to {task} on {day} at {time}.", "Please set a reminder: {task}, {day}, {time}.",
         "Can you remind me on {day} at {time} to {task}?", "{day} {time}: {task}. Remind me please."]


def reminder(rng: random.Random) -> tuple[str, str, str]:
    """(request, the house-format reply, the same reply with a wrong time)."""
    task = rng.choice(TASKS).format(n=rng.choice(NAMES))
    day, hour, minute = rng.choice(DAYS), rng.randint(1, 12), rng.choice([0, 15, 30, 45])
    pm = rng.random() < 0.5
    spoken = f"{hour}{'' if minute == 0 else f':{minute:02d}'}{'pm' if pm else 'am'}"
    h24 = hour % 12 + (12 if pm else 0)
    request = rng.choice(FORMS).format(task=task, day=day, time=spoken)
    reply = f"REMINDER | task: {task} | day: {day} | time: {h24:02d}:{minute:02d}"
    wrong = f"REMINDER | task: {task} | day: {day} | time: {(h24 + 12) % 24:02d}:{minute:02d}"  # am/pm mixed up
    return request, reply, wrong


def write_data(folder: Path, count: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    rows = [reminder(rng) for _ in range(count)]
    chat, pairs = folder / "reminders.jsonl", folder / "reminder-pairs.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a, _ in rows), encoding="utf-8")
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": w,
                                         "kind": "reminders"}) + "\n" for q, a, w in rows), encoding="utf-8")
    return chat, pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dpo", action="store_true", help="also train a DPO adapter on pairs of the same task")
    parser.add_argument("--dpo-lr", type=float, default=2e-3)
    parser.add_argument("--nll-weight", type=float, default=1.0, help="DPO: weight of the chosen reply's loss")
    args = parser.parse_args()
    import torch

    from agent.config import Settings
    from agent.training import Hyperparameters, TrainBase, TrainRequest, train_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="metagent-bench-training-"))
    settings = Settings.load(env={**os.environ, "METAGENT_HOME": str(work / "home")})
    with recorded("training"):
        print(f"load average {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
              f"{args.examples} examples, {args.epochs} epochs, lr {args.lr}")
        chat, pairs = write_data(work, args.examples, seed=0)
        base = TrainBase.load(settings, progress=print)
        hyper = Hyperparameters(epochs=args.epochs, lr=args.lr)
        sft = TrainRequest("reminders", chat, base, settings.adapters_dir, kinds=("reminders",), hyper=hyper,
                           scorer=fields_right)
        started = time.perf_counter()
        report = train_adapter(sft, progress=_plain)
        print_report("sft", report, time.perf_counter() - started)
        if args.dpo:  # SFT then DPO: the preferences start from the SFT adapter, which is also the reference
            dpo = TrainRequest("reminders-dpo", pairs, base, settings.adapters_dir, method="dpo",
                               hyper=Hyperparameters(epochs=args.epochs, lr=args.dpo_lr, nll_weight=args.nll_weight),
                               from_adapter=("reminders", report.path), scorer=fields_right)
            started = time.perf_counter()
            print_report("dpo from the sft adapter", train_adapter(dpo, progress=_plain), time.perf_counter() - started)


def fields_right(example: Any, reply: Any) -> float:
    """The share of the three fields (task, day, time) the reply gets right in the house format."""
    want = dict(part.split(": ", 1) for part in example.target.split(" | ")[1:])
    parts = reply.text.strip().split(" | ")
    if parts[0] != "REMINDER":
        return 0.0
    got = dict(part.split(": ", 1) for part in parts[1:] if ": " in part)
    return sum(got.get(key) == value for key, value in want.items()) / len(want)


def _plain(event: Any) -> None:
    if event.stage != "train":
        print(f"  {event.message}", flush=True)
    elif event.done % max(1, event.total // 10) == 0 or event.done == event.total:
        print(f"  step {event.done}/{event.total} epoch {event.epoch} loss {event.loss:.3f}", flush=True)


def print_report(method: str, report: Any, wall_s: float) -> None:
    meta, before, after, general = report.meta, report.before, report.after, report.general
    print(f"\n{method}: {meta.train_examples} trained, {meta.held_out_examples} held out, on {meta.device}")
    print(f"{'held-out':<24}{'base (before)':>16}{'adapter (after)':>18}")
    for label, key in (("loss / token", "loss"), ("exact match", "exact_match"), ("fields right", "score"),
                       ("preference accuracy", "preference_accuracy"), ("reward margin", "reward_margin")):
        b, a = getattr(before, key), getattr(after, key)
        if b is not None and a is not None:
            print(f"{label:<24}{b:>16.3f}{a:>18.3f}")
    print(f"training {meta.train_s:.1f} s, {meta.examples_per_s:.2f} examples/s "
          f"({meta.train_examples} x {meta.hyperparameters['epochs']} epochs); whole run {wall_s:.1f} s")
    print(f"general-set loss base {general.base_loss:.3f}, with adapter {general.adapter_loss:.3f} "
          f"({general.change_pct:+.1f}%){' WORSE than the threshold' if general.worse else ''}")


if __name__ == "__main__":
    main()
