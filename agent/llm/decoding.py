"""The decode loop: one token at a time with a KV cache, greedy or sampled, optionally under a grammar.

Written by hand rather than with `model.generate` because each step must (1) mask the logits with the
grammar's bitmask, (2) feed the chosen token back to the grammar, (3) hand the token to the streaming
detokenizer, and (4) stop as soon as the grammar admits nothing but the end token. It costs the same per
token as `generate` (see docs/llm.md for measurements).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from agent.llm.grammar import TokenConstraint

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]


class Generation:
    """Decode up to `max_new_tokens` after `prompt_ids`; iterate `tokens()`, then read `finish_reason`.

    `token_ids` holds every sampled token including the end token (that is what the model computed, and
    what `completion_tokens` counts); `tokens()` yields only the text tokens.
    """

    def __init__(self, model: Any, stop_ids: frozenset[int], constraint: TokenConstraint | None = None,
                 repetition_penalty: float = 1.0) -> None:
        self._model = model
        self._stop_ids = stop_ids
        self._constraint = constraint
        self._penalty = repetition_penalty
        self.token_ids: list[int] = []
        self.finish_reason: FinishReason = "length"

    def tokens(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Iterator[int]:
        import torch
        from transformers import DynamicCache

        device = self._model.device
        extra = _forward_arguments(self._model, DynamicCache(config=self._model.config))
        with torch.inference_mode():
            inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
            for _ in range(max_new_tokens):
                out = self._model(input_ids=inputs, use_cache=True, **extra)
                token = self._choose(out.logits[0, -1].float().contiguous(), temperature)
                self.token_ids.append(token)
                if token in self._stop_ids:
                    self.finish_reason = "stop"
                    return
                yield token
                if self._constraint is not None:
                    self._constraint.advance(token)
                    if self._constraint.finished:  # only the end token is left: no need to compute it
                        self.finish_reason = "stop"
                        return
                inputs = torch.tensor([[token]], dtype=torch.long, device=device)

    def _choose(self, logits: torch.Tensor, temperature: float) -> int:
        if self._constraint is not None:
            self._constraint.mask(logits)
        elif self._penalty != 1.0 and self.token_ids:
            penalize(logits, self.token_ids, self._penalty)
        if logits.device.type == "cpu":
            # numpy, single-threaded: see TokenConstraint on small torch ops on a busy CPU.
            return _choose_numpy(logits.numpy(), temperature)
        import torch

        if temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / temperature, dim=-1)
        return int(torch.multinomial(probs, num_samples=1).item())


def penalize(logits: torch.Tensor, seen: Sequence[int], penalty: float) -> None:
    """The CTRL repetition penalty (as transformers applies it) over the tokens generated so far, in place.

    Only for free text: under a grammar, JSON punctuation must repeat, and penalising it would bend calls.
    Prompt tokens are not penalised, so an answer can still quote its sources.
    """
    import torch

    ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
    picked = logits[ids]
    logits[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)


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


def _forward_arguments(model: Any, cache: Any) -> dict[str, Any]:
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
