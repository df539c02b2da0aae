"""Train a LoRA adapter on the resident base model: `metagent adapters train` and `train_adapter()`.

    request = TrainRequest("house", Path("house.jsonl"), TrainBase.load(settings), settings.adapters_dir,
                           kinds=("house",))
    report = train_adapter(request)            # or with progress=callback, scorer=... in the request

Steps: read and validate the file (a bad row is a ConfigError naming its line; nothing is trained), split off
a seeded held-out share, encode every example with the engine's own prompt code (training_tokens.py),
inject a fresh LoRA (PEFT, all linear layers) into the base model (or start from an existing adapter),
measure the held-out metrics, train (AdamW, warm-up then linear decay, gradients clipped), measure again,
run the forgetting guard on the shipped general set, and save the adapter with its metadata
(adapter_meta.py) into <adapters dir>/NAME/ through a temporary directory renamed into place.

Methods: "sft" trains on the assistant tokens of chat examples; "dpo" on preference pairs (training_dpo.py).

The base model is trained in place (LoRA layers injected into its modules) and restored afterwards: the
layers are removed, and the weights, requires_grad flags and eval mode are as before. It must not serve
requests meanwhile, and must carry no loaded adapters (a fresh `TrainBase.load`).
"""

from __future__ import annotations

import math
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.adapter_meta import AdapterMeta, BaseIdentity, GeneralCheck, HeldOutMetrics, sha256_file, write_meta
from agent.config import Settings
from agent.errors import ConfigError
from agent.llm.engine import TransformersLLM
from agent.llm.loading import Progress, on_threads
from agent.training_data import ChatExample, load_chat_examples, split_held_out
from agent.training_eval import Evaluator, Scorer, evaluating
from agent.training_tokens import Encoder, TokenRow, collate, token_logps

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
WARMUP_SHARE = 0.1  # of the steps, the learning rate rises linearly; then it falls linearly to 0
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 3
    lr: float = 1e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    batch_size: int = 8
    holdout: float = 0.2
    seed: int = 0
    beta: float = 0.1  # DPO only: how far from the reference model the preferences may pull
    nll_weight: float = 1.0  # DPO only: weight of the chosen reply's own loss (training_dpo.py)
    # The forgetting guard warns above this rise in general-set loss. A task adapter always raises it a little
    # (it answers its own kind's way); the first reminders adapter measured raised it 69% (README).
    general_threshold_pct: float = 25.0

    def check(self) -> None:
        for name in ("epochs", "rank", "alpha", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (0 < self.lr < 1) or self.beta <= 0 or not 0 <= self.dropout < 1 or self.nll_weight < 0:
            raise ConfigError(f"need 0 < lr < 1, beta > 0, 0 <= dropout < 1 and nll_weight >= 0; got lr={self.lr}, "
                              f"beta={self.beta}, dropout={self.dropout}, nll_weight={self.nll_weight}")


@dataclass(frozen=True)
class TrainBase:
    """The base model to train on and its identity (recorded in the adapter's metadata)."""

    llm: TransformersLLM
    identity: BaseIdentity

    @classmethod
    def load(cls, settings: Settings, progress: Progress | None = None) -> TrainBase:
        from agent.adapter_meta import base_identity

        identity = base_identity(settings)  # before the load: a missing model fails fast
        return cls(TransformersLLM.from_settings(settings, progress=progress), identity)

    @property
    def device(self) -> Any:
        return next(self.llm.model.parameters()).device


@dataclass(frozen=True)
class TrainRequest:
    name: str
    data: Path
    base: TrainBase
    adapters_dir: Path
    method: Literal["sft", "dpo"] = "sft"
    kinds: tuple[str, ...] = ()
    hyper: Hyperparameters = field(default_factory=Hyperparameters)
    from_adapter: tuple[str, Path] | None = None  # (name, directory) of an adapter to start from
    force: bool = False  # replace an existing adapter of that name
    scorer: Scorer | None = None  # a task-specific held-out score of the final replies (chat data only)


@dataclass(frozen=True)
class TrainEvent:
    """Progress: stage "evaluate" and "save" carry a message; "train" a step count, epoch and loss."""

    stage: Literal["evaluate", "train", "save"]
    done: int = 0
    total: int = 0
    epoch: int = 0
    loss: float | None = None
    message: str = ""


TrainProgress = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class TrainReport:
    path: Path
    meta: AdapterMeta
    wall_s: float

    @property
    def before(self) -> HeldOutMetrics | None:
        return self.meta.before

    @property
    def after(self) -> HeldOutMetrics | None:
        return self.meta.after

    @property
    def general(self) -> GeneralCheck | None:
        return self.meta.general


class Job(Protocol):
    """What differs between methods: the data, the held-out metrics and the loss of one batch."""

    @property
    def method(self) -> Literal["sft", "dpo"]: ...

    @property
    def train(self) -> Sequence[Any]: ...

    @property
    def held_out(self) -> int: ...

    def evaluate(self, evaluator: Evaluator) -> HeldOutMetrics: ...

    def start(self, model: Any, evaluator: Evaluator) -> None: ...

    def loss(self, model: Any, batch: list[Any], evaluator: Evaluator) -> Any: ...


@dataclass(frozen=True)
class SftJob:
    """Supervised: the loss is the mean negative log-likelihood of the assistant tokens."""

    train: list[TokenRow]
    held: list[ChatExample]
    held_rows: list[TokenRow]
    method: Literal["sft", "dpo"] = "sft"

    @property
    def held_out(self) -> int:
        return len(self.held)

    def evaluate(self, evaluator: Evaluator) -> HeldOutMetrics:
        return evaluator.chat(self.held, self.held_rows)

    def start(self, model: Any, evaluator: Evaluator) -> None:
        return None

    def loss(self, model: Any, batch: list[TokenRow], evaluator: Evaluator) -> Any:
        logps, counts = token_logps(model, collate(batch, evaluator.pad_id, evaluator.device))
        return -logps.sum() / counts.sum().clamp(min=1)


def train_adapter(request: TrainRequest, progress: TrainProgress | None = None) -> TrainReport:
    """Train, measure and save one adapter (see the module docstring). Raises ConfigError on bad input."""
    started = time.perf_counter()
    say = progress or _quiet
    request.hyper.check()
    target = _target(request)
    encoder = Encoder(request.base.llm)
    job = _job(request, encoder)
    evaluator = Evaluator(encoder, request.base.device, request.hyper.batch_size, request.scorer)

    def run(model: Any) -> AdapterMeta:
        before = _measure(job, model, evaluator, say, "before training")
        train_s = _fit(job, model, evaluator, request.hyper, say)
        after = _measure(job, model, evaluator, say, "after training")
        say(TrainEvent("evaluate", message="general set (forgetting guard)"))
        with evaluating(model):
            general = evaluator.general(model, request.hyper.general_threshold_pct)
        meta = _meta(request, job, (before, after), general, train_s)
        say(TrainEvent("save", message=f"saving to {target}"))
        _save(model, meta, target, request.force)
        return meta

    with _lora(request) as model:  # on the engine's CPU threads, in a thread of its own (loading.on_threads)
        meta = on_threads(request.base.llm.threads, lambda: run(model))
    return TrainReport(target, meta, time.perf_counter() - started)


def _target(request: TrainRequest) -> Path:
    if not ADAPTER_NAME.fullmatch(request.name):
        raise ConfigError(f"adapter name {request.name!r}: use letters, digits, '_', '-' or '.' (at most 64), "
                          "starting with a letter or digit")
    target = request.adapters_dir / request.name
    if target.exists() and not request.force:
        raise ConfigError(f"adapter {request.name!r} already exists in {target}; pass --force to replace it, "
                          "or choose another name")
    return target


def _job(request: TrainRequest, encoder: Encoder) -> Job:
    if request.method == "dpo":
        from agent.training_dpo import dpo_job

        return dpo_job(request.data, encoder, request.hyper, request.from_adapter is not None)
    examples = load_chat_examples(request.data)
    train, held = split_held_out(examples, request.hyper.holdout, request.hyper.seed, request.data)
    return SftJob([encoder.chat(e) for e in train], held, [encoder.chat(e) for e in held])


def _measure(job: Job, model: Any, evaluator: Evaluator, say: TrainProgress, when: str) -> HeldOutMetrics | None:
    if not job.held_out:
        return None
    say(TrainEvent("evaluate", message=f"held-out metrics {when} ({job.held_out} examples)"))
    with evaluating(model):
        return job.evaluate(evaluator)


def _fit(job: Job, model: Any, evaluator: Evaluator, hyper: Hyperparameters, say: TrainProgress) -> float:
    """The training loop; returns its wall time in seconds."""
    import torch

    started = time.perf_counter()
    with evaluating(model):
        job.start(model, evaluator)
    per_epoch = math.ceil(len(job.train) / hyper.batch_size)
    total = per_epoch * hyper.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hyper.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(total))
    step = 0
    for epoch in range(1, hyper.epochs + 1):
        order = list(job.train)
        random.Random(hyper.seed * 1000 + epoch).shuffle(order)
        for start in range(0, len(order), hyper.batch_size):
            loss = job.loss(model, order[start:start + hyper.batch_size], evaluator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            say(TrainEvent("train", step, total, epoch, float(loss.detach())))
    return time.perf_counter() - started


def _lr_factor(total: int) -> Callable[[int], float]:
    warmup = max(1, round(total * WARMUP_SHARE))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


@contextmanager
def _lora(request: TrainRequest) -> Iterator[Any]:
    """The base model with a trainable LoRA injected (fresh, or a copy of `from_adapter`), removed afterwards."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    base = request.base.llm.model
    if hasattr(base, "peft_config"):
        raise ConfigError("the base model already carries adapters; train on a freshly loaded model "
                          "(TrainBase.load)")
    frozen = {name: p.requires_grad for name, p in base.named_parameters()}
    torch.manual_seed(request.hyper.seed)
    hyper = request.hyper
    if request.from_adapter is not None:
        model = PeftModel.from_pretrained(base, str(request.from_adapter[1]), is_trainable=True)
    else:
        config = LoraConfig(r=hyper.rank, lora_alpha=hyper.alpha, lora_dropout=hyper.dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = request.base.identity.name
    # The engine's evaluations must not reuse prompt KV computed with other weights.
    with request.base.llm.changing_weights():
        try:
            model.train()
            yield model
        finally:
            model.unload()
            for name, p in base.named_parameters():
                p.requires_grad_(frozen.get(name, False))
            base.eval()


def _meta(request: TrainRequest, job: Job, metrics: tuple[HeldOutMetrics | None, HeldOutMetrics | None],
          general: GeneralCheck, train_s: float) -> AdapterMeta:
    from agent import __version__

    hyper = asdict(request.hyper)
    if request.method == "sft":
        hyper.pop("beta")
        hyper.pop("nll_weight")
    return AdapterMeta(
        name=request.name, method=request.method, kinds=request.kinds, base=request.base.identity,
        data_file=str(request.data.resolve()), data_sha256=sha256_file(request.data),
        train_examples=len(job.train), held_out_examples=job.held_out, hyperparameters=hyper,
        from_adapter=request.from_adapter[0] if request.from_adapter else None,
        before=metrics[0], after=metrics[1], general=general, device=str(request.base.device),
        train_s=round(train_s, 2), examples_per_s=round(len(job.train) * request.hyper.epochs / train_s, 2),
        created=datetime.now(UTC).isoformat(timespec="seconds"), metagent_version=__version__,
    )


def _save(model: Any, meta: AdapterMeta, target: Path, force: bool) -> None:
    """Write the adapter to a temporary directory, then rename it into place (replacing only with force)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".train-{target.name}-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        # Embeddings are never trained; saying so also stops PEFT from looking the base model up on the Hub.
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        write_meta(tmp, meta)
        if target.exists():
            if not force:
                raise ConfigError(f"adapter {target.name!r} appeared in {target} while training; pass --force")
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _quiet(_event: TrainEvent) -> None:
    return None
