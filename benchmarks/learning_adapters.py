"""Section "adapters" of benchmarks/learning.py: what a LoRA adapter trained in the run gains on held-out data.

Two tasks whose data the project generates (benchmarks/data/):
  tools     function calling; the test set uses functions, schemas and domains never seen in training
  invoices  invoice-record extraction; the test set uses vendors and sentence templates never seen in training

For each task: the training rows are written as a chat-format JSONL file and an adapter is trained on it with
`agent.training.train_adapter` (what `metagent adapters train` runs), without a held-out split of its own: the
benchmark's test set is the held-out set. Then every test example goes through the engine
(`TransformersLLM.complete`) with the base model and with the adapter, each under constrained decoding (the
engine's grammar: the offered tools with tool_choice="auto", or the record's JSON schema) and free (an engine
built with constrained=False). Replies get as many new tokens as the reference needs plus REPLY_SLACK_TOKENS.
A row is the adapter's number; its `base` is the base model's under the same decoding, in the same run.

Adapters are trained in the run. With --reuse, an adapter already in <work dir>/adapters/NAME is used instead
when its metagent_adapter.json records the same training-file sha256, hyperparameters and base model sha256.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.adapter_meta import read_meta, sha256_file
from agent.config import Settings
from agent.llm.engine import TransformersLLM
from agent.training import Hyperparameters, TrainBase, TrainEvent, TrainRequest, train_adapter
from agent.types import LLMReply, LLMRequest
from benchmarks.data import invoices, toolcalls
from benchmarks.data.scoring import CallTally, judge_calls, judge_record
from benchmarks.learning_table import Options, Row, SectionResult

REPLY_SLACK_TOKENS = 24
WORKERS = 8  # requests in flight at once: an engine that batches decodes them together
TOOL_METRICS = ("accuracy", "calls_exact", "calls_names", "no_call_right")
RECORD_METRICS = ("record", "vendor", "date", "amount", "currency")
SETTINGS = ("free", "constrained")
# The task kinds each adapter records: the built-in kind for tool tasks is "tool" (agent/kinds/tool.toml).
KINDS = {"tools": ("tool",), "invoices": ("invoices",)}


@dataclass(frozen=True)
class Sizes:
    tools_train: int
    tools_test: int
    invoices_train: int
    invoices_test: int
    tools_epochs: int
    invoices_epochs: int


FULL = Sizes(tools_train=192, tools_test=40, invoices_train=96, invoices_test=32, tools_epochs=2, invoices_epochs=1)
QUICK = Sizes(tools_train=8, tools_test=8, invoices_train=6, invoices_test=4, tools_epochs=1, invoices_epochs=1)


LEARNING_RATES = {"tools": 1e-3, "invoices": 2e-3}


def hyperparameters(task: str, sizes: Sizes, seed: int) -> Hyperparameters:
    epochs = sizes.tools_epochs if task == "tools" else sizes.invoices_epochs
    return Hyperparameters(epochs=epochs, lr=LEARNING_RATES[task], rank=8, alpha=16, batch_size=2, holdout=0.0,
                           seed=seed)


def run(options: Options) -> SectionResult:
    sizes = QUICK if options.quick else FULL
    settings = _settings(options, constrained=True)
    started = time.perf_counter()
    base = TrainBase.load(settings)
    print(f"adapters: base model {base.identity.name} loaded in {time.perf_counter() - started:.1f} s")
    tools_train = toolcalls.generate("train", sizes.tools_train, options.seed)
    tools_test = toolcalls.generate("test", sizes.tools_test, options.seed)
    invoice_train = invoices.generate("train", sizes.invoices_train, options.seed)
    invoice_test = invoices.generate("test", sizes.invoices_test, options.seed)
    data = options.work_dir / "data"
    files = {"tools": _write_rows(data / f"tools-train-s{options.seed}-n{sizes.tools_train}.jsonl",
                                  [e.row() for e in tools_train]),
             "invoices": _write_rows(data / f"invoices-train-s{options.seed}-n{sizes.invoices_train}.jsonl",
                                     [e.row() for e in invoice_train])}
    _write_rows(data / f"tools-test-s{options.seed}-n{sizes.tools_test}.jsonl", [e.row() for e in tools_test])
    _write_rows(data / f"invoices-test-s{options.seed}-n{sizes.invoices_test}.jsonl", [e.row() for e in invoice_test])
    hyper = {name: hyperparameters(name, sizes, options.seed) for name in files}
    trained = {name: _train(base, name, path, hyper[name], options) for name, path in files.items()}
    engines = {"constrained": base.llm,
               "free": TransformersLLM.from_settings(_settings(options, constrained=False))}
    for engine in engines.values():
        for name, info in trained.items():
            engine.add_adapter(name, Path(info["path"]))
    tool_rows, tool_details = evaluate_tools(engines, tools_test)
    record_rows, record_details = evaluate_invoices(engines, invoice_test)
    details = {"sizes": asdict(sizes), "hyperparameters": {k: asdict(h) for k, h in hyper.items()}, "adapters": trained,
               "tools": tool_details, "invoices": record_details, "wall_s": round(time.perf_counter() - started, 1)}
    return SectionResult(tool_rows + record_rows, details)


def evaluate_tools(engines: dict[str, TransformersLLM],
                   examples: Sequence[toolcalls.ToolExample]) -> tuple[list[Row], dict[str, Any]]:
    """Rows for the tool-calling task: base vs the "tools" adapter, free vs constrained decoding."""
    metrics: dict[tuple[str, str], dict[str, Any]] = {}
    details: dict[str, Any] = {}
    for setting in SETTINGS:
        llm = engines[setting]
        for model in ("base", "tools"):
            adapter = None if model == "base" else model
            requests = [e.request_for(adapter, _budget(llm, e.reply)) for e in examples]
            replies, wall_s = _complete_all(llm, requests, f"tools / {model} / {setting}")
            verdicts = [(e.kind, judge_calls(e.calls, r)) for e, r in zip(examples, replies, strict=True)]
            metrics[(model, setting)] = CallTally(verdicts).metrics()
            details[f"{model}/{setting}"] = {**metrics[(model, setting)], "wall_s": wall_s,
                                             "replies": [{"kind": e.kind, "request": e.request, "expected": e.reply,
                                                          "reply": r.text, "right": v.right}
                                                         for e, r, (_, v) in zip(examples, replies, verdicts,
                                                                                 strict=True)]}
    counts = {"accuracy": len(examples), "calls_exact": sum(1 for e in examples if e.calls),
              "calls_names": sum(1 for e in examples if e.calls),
              "no_call_right": sum(1 for e in examples if not e.calls)}
    rows = [Row("tool calling, held-out functions", "adapter tools", setting, metric,
                metrics[("tools", setting)][metric], counts[metric], metrics[("base", setting)][metric])
            for setting in SETTINGS for metric in TOOL_METRICS]
    return rows, details


def evaluate_invoices(engines: dict[str, TransformersLLM],
                      examples: Sequence[invoices.InvoiceExample]) -> tuple[list[Row], dict[str, Any]]:
    """Rows for the extraction task: base vs the "invoices" adapter, free vs JSON-schema-constrained."""
    shares: dict[tuple[str, str], dict[str, float]] = {}
    details: dict[str, Any] = {}
    for setting in SETTINGS:
        llm = engines[setting]
        for model in ("base", "invoices"):
            adapter = None if model == "base" else model
            requests = [e.request_for(adapter, _budget(llm, e.reply), setting == "constrained") for e in examples]
            replies, wall_s = _complete_all(llm, requests, f"invoices / {model} / {setting}")
            judged = [judge_record(e.record, r.text) for e, r in zip(examples, replies, strict=True)]
            shares[(model, setting)] = {m: sum(j[m] for j in judged) / len(judged) for m in RECORD_METRICS}
            details[f"{model}/{setting}"] = {**shares[(model, setting)], "wall_s": wall_s,
                                             "replies": [{"text": e.text, "expected": e.reply, "reply": r.text,
                                                          "right": j["record"]}
                                                         for e, r, j in zip(examples, replies, judged, strict=True)]}
    rows = [Row("invoice records, held-out vendors", "adapter invoices", setting, metric,
                shares[("invoices", setting)][metric], len(examples), shares[("base", setting)][metric])
            for setting in SETTINGS for metric in RECORD_METRICS]
    return rows, details


def _train(base: TrainBase, name: str, data: Path, hyper: Hyperparameters, options: Options) -> dict[str, Any]:
    """Train adapter `name` on `data` into <work dir>/adapters (or reuse a matching one); what was done."""
    adapters = options.work_dir / "adapters"
    target = adapters / name
    if options.reuse and _matches(target, data, hyper, base.identity.sha256):
        print(f"adapters: reusing {target} (same data sha256, hyperparameters and base model)")
        return {"path": str(target), "reused": True, "data_sha256": sha256_file(data)}
    request = TrainRequest(name, data, base, adapters, kinds=KINDS.get(name, (name,)), hyper=hyper, force=True)
    report = train_adapter(request, progress=_progress(name))
    general = report.general
    guard = f"; general-set loss {general.base_loss:.3f} -> {general.adapter_loss:.3f}" if general else ""
    print(f"adapters: trained {name!r} on {report.meta.train_examples} examples x {hyper.epochs} epochs in "
          f"{report.meta.train_s:.0f} s ({report.meta.examples_per_s} examples/s){guard}")
    return {"path": str(report.path), "reused": False, "data_sha256": report.meta.data_sha256,
            "train_examples": report.meta.train_examples, "train_s": report.meta.train_s,
            "general": general.model_dump() if general else None}


def _matches(target: Path, data: Path, hyper: Hyperparameters, base_sha256: str) -> bool:
    meta = read_meta(target) if target.is_dir() else None
    if meta is None:
        return False
    wanted = {k: v for k, v in asdict(hyper).items() if k in meta.hyperparameters}
    return (meta.data_sha256 == sha256_file(data) and meta.base.sha256 == base_sha256
            and wanted == meta.hyperparameters)


def _progress(name: str) -> Callable[[TrainEvent], None]:
    started = time.perf_counter()

    def show(event: TrainEvent) -> None:
        if event.stage != "train":
            print(f"adapters: {name}: {event.message}", flush=True)
        elif event.done == event.total or event.done % 10 == 0:
            print(f"adapters: {name}: step {event.done}/{event.total} (epoch {event.epoch}) loss {event.loss:.3f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)

    return show


def _complete_all(llm: TransformersLLM, requests: list[LLMRequest], label: str) -> tuple[list[LLMReply], float]:
    """Every request through the engine, WORKERS in flight at once; the replies in order and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        replies = list(pool.map(llm.complete, requests))
    wall_s = round(time.perf_counter() - started, 1)
    print(f"adapters: {label}: {len(requests)} replies in {wall_s} s", flush=True)
    return replies, wall_s


def _budget(llm: TransformersLLM, reference: str) -> int:
    return len(llm.tokenizer(reference, add_special_tokens=False)["input_ids"]) + REPLY_SLACK_TOKENS


def _settings(options: Options, constrained: bool) -> Settings:
    settings = Settings.load()
    update: dict[str, Any] = {"constrained": constrained}
    if options.threads:
        update["threads"] = options.threads
    return settings.model_copy(update={"model": settings.model.model_copy(update=update)})


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


SECTIONS: dict[str, Callable[[Options], SectionResult]] = {"adapters": run}
