"""`metagent adapters list|show|remove|train` (parsing lives in agent/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.adapter_meta import AdapterMeta, HeldOutMetrics
from agent.adapters import AdapterInfo, AdapterRegistry
from agent.config import Settings
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.training import Hyperparameters, TrainEvent, TrainReport

EXIT_OK = 0
DPO_LR = 2e-3  # measured: 2e-4 barely moved the bundled model in 30 steps (README)
PLAIN_LINES_PER_RUN = 10  # without a terminal, a training run prints about this many step lines
# soft_wrap: report lines stay whole when piped (a terminal still wraps them), so they can be grepped.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def adapters(args: argparse.Namespace, settings: Settings) -> int:
    handlers = {"list": list_adapters, "show": show, "remove": remove, "train": train}
    result: int = handlers[args.action](args, settings)
    return result


def list_adapters(args: argparse.Namespace, settings: Settings) -> int:
    found = AdapterRegistry(settings).list()
    if args.json:
        print(json.dumps([_as_dict(a) for a in found], ensure_ascii=False))
        return EXIT_OK
    if not found:
        out.print(f"no adapters in {settings.adapters_dir} (each adapter is a PEFT directory there; "
                  "make one with `metagent adapters train`)")
        return EXIT_OK
    table = Table("adapter", "kinds", "base model", "trained", "held-out after", "path", "status")
    for a in found:
        trained = f"{a.meta.method} {a.meta.created[:10]}" if a.meta else "-"
        table.add_row(a.name, ",".join(a.kinds), a.meta.base.name if a.meta else a.base_model or "?", trained,
                      _metrics(a.meta.after) if a.meta else "-", str(a.path), a.problem or "ok")
    out.print(table)
    return EXIT_OK


def show(args: argparse.Namespace, settings: Settings) -> int:
    info = AdapterRegistry(settings).get(args.name)
    if args.json:
        print(json.dumps(_as_dict(info), ensure_ascii=False))
        return EXIT_OK
    for key, value in _show_rows(info).items():  # plain lines: greppable, never wrapped
        print(f"{key:<16}  {value}")
    return EXIT_OK


def remove(args: argparse.Namespace, settings: Settings) -> int:
    registry = AdapterRegistry(settings)
    info = registry.get(args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"not removing adapter {args.name!r} without confirmation; pass --yes")
        if input(f"remove adapter {info.name!r} ({info.path})? [y/N] ").strip().lower() not in ("y", "yes"):
            out.print("kept")
            return EXIT_OK
    path = registry.remove(args.name)
    out.print(f"removed adapter {args.name!r} ({path})")
    return EXIT_OK


def train(args: argparse.Namespace, settings: Settings) -> int:
    from agent.training import Hyperparameters, TrainBase, TrainRequest, train_adapter

    registry = AdapterRegistry(settings)
    start = (args.from_adapter, registry.path(args.from_adapter)) if args.from_adapter else None
    _note_unknown_kinds(args.kind, settings)
    dpo = args.dpo is not None
    lr = args.lr if args.lr is not None else (DPO_LR if dpo else Hyperparameters.lr)
    hyper = Hyperparameters(epochs=args.epochs, lr=lr, rank=args.rank, alpha=2 * args.rank,
                            batch_size=args.batch_size, holdout=args.holdout, seed=args.seed, beta=args.beta,
                            nll_weight=args.nll_weight, general_threshold_pct=args.general_threshold)
    hyper.check()  # these checks run before the model loads
    _check_data(args.dpo if dpo else args.data, dpo, hyper)
    with err.status("loading the model...") as status:
        base = TrainBase.load(settings, progress=lambda msg: status.update(f"{msg}..."))
    request = TrainRequest(args.name, args.dpo if dpo else args.data, base, settings.adapters_dir,
                           method="dpo" if dpo else "sft", kinds=tuple(dict.fromkeys(args.kind)), hyper=hyper,
                           from_adapter=start, force=args.force)
    with _TrainDisplay(err.is_terminal) as display:
        report = train_adapter(request, progress=display.show)
    _print_report(report)
    return EXIT_OK


class _TrainDisplay:
    """A rich progress bar on a terminal; otherwise plain lines, about PLAIN_LINES_PER_RUN per run."""

    def __init__(self, terminal: bool) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err) \
            if terminal else None
        self.task: Any = None

    def __enter__(self) -> _TrainDisplay:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def show(self, event: TrainEvent) -> None:
        if event.stage != "train":
            (self.bar.console if self.bar is not None else err).print(f"{event.message}...")
            return
        status = f"epoch {event.epoch} loss {event.loss:.3f}"
        if self.bar is None:
            every = max(1, event.total // PLAIN_LINES_PER_RUN)
            if event.done % every == 0 or event.done == event.total:
                err.print(f"step {event.done}/{event.total} {status}", highlight=False)
            return
        if self.task is None:
            self.task = self.bar.add_task("training", total=event.total, status="")
        self.bar.update(self.task, completed=event.done, status=status)


def _as_dict(info: AdapterInfo) -> dict[str, Any]:
    return {"name": info.name, "path": str(info.path), "kinds": list(info.kinds), "base_model": info.base_model,
            "problem": info.problem, "meta": info.meta.model_dump(mode="json") if info.meta else None}


def _print_report(report: TrainReport) -> None:
    meta = report.meta
    out.print(f"saved adapter {meta.name!r} to {report.path} (kinds: {', '.join(meta.kinds) or meta.name})")
    if meta.before is not None and meta.after is not None:
        out.print(f"held-out ({meta.held_out_examples} examples): {_metrics(meta.before)} -> {_metrics(meta.after)}",
                  highlight=False)
    out.print(f"trained {meta.train_examples} examples x {meta.hyperparameters['epochs']} epochs in "
              f"{meta.train_s:.1f} s ({meta.examples_per_s:.2f} examples/s) on {meta.device}; "
              f"{report.wall_s:.1f} s in all", highlight=False)
    if meta.general is not None:
        out.print(_general_line(meta), highlight=False)
        if meta.general.worse:
            err.print(f"[yellow]warning[/]: the adapter raised the general-set loss by more than "
                      f"{meta.general.threshold_pct:g}%: it may have damaged general behaviour (fewer epochs, a "
                      "lower --lr or more varied data help); only its kinds use it")


def _general_line(meta: AdapterMeta) -> str:
    g = meta.general
    if g is None:
        return "general set: not measured"
    return f"general-set loss base {g.base_loss:.3f}, with adapter {g.adapter_loss:.3f} ({g.change_pct:+.1f}%)"


def _metrics(m: HeldOutMetrics | None) -> str:
    if m is None:
        return "-"
    parts = []
    if m.loss is not None:
        parts.append(f"loss {m.loss:.3f}")
    if m.exact_match is not None:
        parts.append(f"exact {m.exact_match:.0%}")
    if m.score is not None:
        parts.append(f"score {m.score:.3f}")
    if m.preference_accuracy is not None:
        parts.append(f"pref. acc. {m.preference_accuracy:.0%} (margin {m.reward_margin or 0:+.2f})")
    return ", ".join(parts) or "-"


def _show_rows(info: AdapterInfo) -> dict[str, str]:
    rows = {"adapter": info.name, "path": str(info.path), "status": info.problem or "ok",
            "kinds": ", ".join(info.kinds) or "-"}
    meta = info.meta
    if meta is None:
        rows["metadata"] = f"none (not made by `metagent adapters train`); base model: {info.base_model or '?'}"
        return rows
    rows.update({
        "method": meta.method + (f" (from adapter {meta.from_adapter})" if meta.from_adapter else ""),
        "base model": f"{meta.base.name} sha256 {meta.base.sha256} ({meta.base.hashed})",
        "data": f"{meta.data_file} sha256 {meta.data_sha256}",
        "examples": f"{meta.train_examples} trained on, {meta.held_out_examples} held out",
        "held-out before": _metrics(meta.before), "held-out after": _metrics(meta.after),
        "general set": _general_line(meta),
        "hyperparameters": ", ".join(f"{k}={v}" for k, v in meta.hyperparameters.items()),
        "training": f"{meta.train_s:.1f} s on {meta.device} ({meta.examples_per_s:.2f} examples/s)",
        "created": f"{meta.created} by metagent {meta.metagent_version}",
    })
    return rows


def _check_data(path: Path, dpo: bool, hyper: Hyperparameters) -> None:
    """A bad row is reported before the model loads (train_adapter checks again, for API callers)."""
    from agent.training_data import load_chat_examples, load_preference_pairs, split_held_out

    rows: list[Any] = list(load_preference_pairs(path) if dpo else load_chat_examples(path))
    split_held_out(rows, hyper.holdout, hyper.seed, path)


def _note_unknown_kinds(kinds: list[str], settings: Settings) -> None:
    from agent.classifier import load_kinds

    known = {k.name for k in load_kinds(settings.kinds_file)}
    for kind in kinds:
        if kind not in known:
            err.print(f"[yellow]note[/]: {kind!r} is not a known task kind yet (see `metagent kinds`); requests "
                      f"only reach this adapter once it is taught: metagent teach {kind} EXAMPLE...")
