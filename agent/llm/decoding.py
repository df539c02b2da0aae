"""Token choice and detokenization: what one request does with its logits at each step.

`Sampler` is one request's decision state (grammar mask, repetition penalty, greedy or sampled choice, stop
tokens, max_new_tokens); the batched decode loop (`scheduler.py`) keeps one per row. `Generation` is the plain
single-sequence loop over the same Sampler (a KV cache, one forward per token), kept as the reference the
benchmarks time against `model.generate`. `TextStream` turns token ids into text deltas.

Written by hand rather than with `model.generate` because each step must (1) mask the logits with the
grammar's bitmask, (2) feed the chosen token back to the grammar, (3) hand the token to the streaming
detokenizer, and (4) stop as soon as the grammar admits nothing but the end token.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent.llm.grammar import TokenConstraint

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]


@dataclass
class Sampler:
    """One request's choice of each next token, and when it is done.

    `token_ids` holds every chosen token including the end token (that is what the model computed, and what
    `completion_tokens` counts); `accept` says whether a token is text to show.
    """

    stop_ids: frozenset[int]
    max_new_tokens: int
    constraint: TokenConstraint | None = None
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (1-D float32 on the CPU; masked and penalised in place)."""
        if self.constraint is not None:
            self.constraint.mask(logits)
        elif self.repetition_penalty != 1.0 and self.token_ids:
            penalize(logits, self.token_ids, self.repetition_penalty)
        # numpy, single-threaded: see TokenConstraint on small torch ops on a busy CPU.
        return _choose_numpy(logits.numpy(), self.temperature)

    def accept(self, token: int, defer: bool = False) -> bool:
        """Record a chosen token; True when it is text. Sets `finish_reason` once the request is done.

        `defer`: leave the grammar's next mask, and so the check that it admits only the end token, to
        `prepare` (the batch loop calls it while the device computes the next step).
        """
        self.token_ids.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return False
        if self.constraint is not None:
            self.constraint.advance(token, fill=not defer)
            if not defer and self.constraint.finished:  # only the end token is left: no need to compute it
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.token_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
        return True

    def prepare(self) -> None:
        """Compute the grammar's mask for the next token now (after `accept(..., defer=True)`); sets
        `finish_reason` when the grammar admits only the end token, so the request is done without it."""
        if self.constraint is not None and self.finish_reason is None and self.constraint.finished:
            self.finish_reason = "stop"


class Generation:
    """Decode one sequence alone: iterate `tokens()`, then read `finish_reason` (the benchmarks' reference loop).

    `token_ids` holds every sampled token including the end token; `tokens()` yields only the text tokens.
    """

    def __init__(self, model: Any, stop_ids: frozenset[int], constraint: TokenConstraint | None = None,
                 repetition_penalty: float = 1.0) -> None:
        self._model = model
        self._sampler = Sampler(stop_ids, 0, constraint, repetition_penalty=repetition_penalty)

    @property
    def token_ids(self) -> list[int]:
        return self._sampler.token_ids

    @property
    def finish_reason(self) -> FinishReason:
        return self._sampler.finish_reason or "length"

    def tokens(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Iterator[int]:
        import torch
        from transformers import DynamicCache

        sampler = self._sampler
        sampler.max_new_tokens, sampler.temperature = max_new_tokens, temperature
        extra = forward_arguments(self._model, DynamicCache(config=self._model.config))
        with torch.inference_mode():
            inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self._model.device)
            while sampler.finish_reason is None:
                out = self._model(input_ids=inputs, use_cache=True, **extra)
                token = sampler.choose(out.logits[0, -1].float().cpu().contiguous())
                if sampler.accept(token):
                    yield token
                inputs = torch.tensor([[token]], dtype=torch.long, device=self._model.device)


def penalize(logits: Any, seen: Sequence[int], penalty: float) -> None:
    """The CTRL repetition penalty (as transformers applies it) over the tokens generated so far, in place.

    `logits` is a 1-D torch tensor or numpy array. Only for free text: under a grammar, JSON punctuation must
    repeat, and penalising it would bend calls. Prompt tokens are not penalised, so an answer can still quote
    its sources.
    """
    import numpy as np

    values = logits if isinstance(logits, np.ndarray) else logits.numpy()
    ids = np.array(sorted(set(seen)), dtype=np.int64)
    picked = values[ids]
    values[ids] = np.where(picked > 0, picked / penalty, picked * penalty)


def _choose_numpy(logits: Any, temperature: float) -> int:
    import numpy as np
    import torch

    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    # Seeded from torch's generator, so torch.manual_seed makes sampling reproducible on CPU and GPU alike.
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def forward_arguments(model: Any, cache: Any) -> dict[str, Any]:
    """The cache (updated in place; transformers renamed its argument from past_key_values to cache in 5.x),
    and logits for the last position only where the model supports it (saves the LM head on the prompt)."""
    parameters = inspect.signature(model.forward).parameters
    extra: dict[str, Any] = {"cache" if "cache" in parameters else "past_key_values": cache}
    if "logits_to_keep" in parameters:
        extra["logits_to_keep"] = 1
    return extra


class TextStream:
    """Incremental detokenization: text deltas that always join to the decode of all tokens so far.

    A token can end inside a multi-byte character (decoded as U+FFFD); such deltas are held back until the
    character completes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decoded = self._decode()
        if decoded.endswith("\ufffd") or not decoded.startswith(self.text):
            return ""
        delta, self.text = decoded[len(self.text):], decoded
        return delta

    def finish(self) -> str:
        """The rest of the text (held-back bytes at the very end)."""
        decoded = self._decode()
        if not decoded.startswith(self.text):
            return ""
        delta, self.text = decoded[len(self.text):], decoded
        return delta

    def _decode(self) -> str:
        text: str = self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text
