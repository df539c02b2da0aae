"""Held-out metrics of a model being trained, and the forgetting guard's general-set check.

Chat (SFT) data: mean loss per assistant token, and the exact-match rate of the final reply generated
greedily by the engine itself (`TransformersLLM.complete`, constrained decoding as configured): text replies
match when equal after collapsing whitespace, tool-call replies when they make the same calls with the same
arguments. A caller (benchmarks/learning.py) may pass its own scorer for a task-specific number.

Preference (DPO) data: the share of pairs where the model gives the chosen reply a higher log-probability
than the rejected one, and the mean margin.

The forgetting guard: agent/data/general_set.jsonl holds short general questions with reference answers the
project wrote; the loss on it with the new adapter is compared to the base model's (the adapter disabled).
A rise above the threshold is a warning: the adapter has damaged general behaviour (other task kinds never
use it, so they are not affected either way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from agent.adapter_meta import GeneralCheck, HeldOutMetrics
from agent.llm.toolformat import parse_reply
from agent.training_data import ChatExample, load_chat_examples
from agent.training_tokens import Encoder, TokenRow, collate, token_logps
from agent.types import LLMReply, LLMRequest

# (example, the model's reply to its prompt) -> a score in [0, 1]
Scorer = Callable[[ChatExample, LLMReply], float]
GENERAL_SET = "general_set.jsonl"
MAX_REPLY_TOKENS = 256
REPLY_SLACK_TOKENS = 8
SCORER_SLACK_TOKENS = 64


@dataclass(frozen=True)
class Evaluator:
    """Scores the model `encoder.llm` runs (with whatever LoRA is active in it) on held-out data."""

    encoder: Encoder
    device: Any
    batch_size: int = 8
    scorer: Scorer | None = None

    def chat(self, examples: Sequence[ChatExample], rows: Sequence[TokenRow]) -> HeldOutMetrics:
        if not examples:
            return HeldOutMetrics()
        matches, scores = [], []
        for example in examples:
            reply = self.encoder.llm.complete(LLMRequest("answer", example.prompt, tools=example.tools,
                                                         max_new_tokens=self._reply_budget(example)))
            matches.append(1.0 if same_reply(reply, example) else 0.0)
            if self.scorer is not None:
                scores.append(float(self.scorer(example, reply)))
        return HeldOutMetrics(examples=len(examples), loss=self.loss(rows), exact_match=_mean(matches),
                              score=_mean(scores) if scores else None)

    def loss(self, rows: Sequence[TokenRow]) -> float:
        """Mean loss per labelled token over `rows`, without gradients."""
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for batch in _batches(sorted(rows, key=lambda r: len(r.ids)), self.batch_size):
                logps, counts = token_logps(self.encoder.llm.model, collate(batch, self.pad_id, self.device))
                total -= float(logps.sum())
                count += int(counts.sum())
        return total / max(count, 1)

    def preference(self, pairs: Sequence[tuple[TokenRow, TokenRow]]) -> HeldOutMetrics:
        margins = self.margins(pairs)
        if not margins:
            return HeldOutMetrics()
        return HeldOutMetrics(examples=len(margins), preference_accuracy=_mean([float(m > 0) for m in margins]),
                              reward_margin=_mean(margins))

    def margins(self, pairs: Sequence[tuple[TokenRow, TokenRow]]) -> list[float]:
        """logp(chosen) - logp(rejected) per pair, without gradients."""
        import torch

        margins: list[float] = []
        with torch.no_grad():
            for batch in _batches(list(pairs), max(1, self.batch_size // 2)):
                rows = [row for pair in batch for row in pair]
                logps, _ = token_logps(self.encoder.llm.model, collate(rows, self.pad_id, self.device))
                margins.extend(float(c - r) for c, r in zip(logps[0::2], logps[1::2], strict=True))
        return margins

    def general(self, adapter_model: Any, threshold_pct: float) -> GeneralCheck:
        """The general set's loss with the adapter active and with it disabled (the base model)."""
        rows = [self.encoder.chat(example) for example in general_set()]
        with adapter_model.disable_adapter():
            base = self.loss(rows)
        tuned = self.loss(rows)
        change = 100.0 * (tuned - base) / base
        return GeneralCheck(examples=len(rows), base_loss=base, adapter_loss=tuned, change_pct=change,
                            threshold_pct=threshold_pct, worse=change > threshold_pct)

    @property
    def pad_id(self) -> int:
        pad = self.encoder.tokenizer.pad_token_id
        return int(pad) if isinstance(pad, int) else self.encoder.end_of_turn

    def _reply_budget(self, example: ChatExample) -> int:
        """The reference's length and a little more: a longer reply does not match anyway (a scorer gets more)."""
        slack = SCORER_SLACK_TOKENS if self.scorer is not None else REPLY_SLACK_TOKENS
        return min(MAX_REPLY_TOKENS, len(self.encoder.reply_ids(example.target)) + slack)


def same_reply(reply: LLMReply, example: ChatExample) -> bool:
    """Exact match: the same calls (name and arguments, any order) or the same text up to whitespace."""
    target = parse_reply(example.target, [t.name for t in example.tools])
    if target.tool_calls:
        return _calls(reply) == _calls(target) and not reply.parse_errors
    return " ".join(reply.text.split()) == " ".join(example.target.split())


def general_set() -> list[ChatExample]:
    """The shipped general set (agent/data/general_set.jsonl)."""
    with resources.as_file(resources.files("agent").joinpath("data", GENERAL_SET)) as path:
        return load_chat_examples(Path(path))


@contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode (no LoRA dropout) for the duration, then back to training mode."""
    model.eval()
    try:
        yield
    finally:
        model.train()


def _calls(reply: LLMReply) -> list[str]:
    return sorted(json.dumps([c.name, c.arguments], sort_keys=True) for c in reply.tool_calls)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
