"""KVBatch: the running batch's KV cache, which rows join (continuous batching) and leave at any step.

Every row's cache is left-padded to one length L, so a decode step is one forward over [B, 1] new tokens
against a [B, heads, L, dim] cache. Per row: an attention-mask row (0 over its padding) and its next position
id (the count of its real tokens, so RoPE sees the same positions as when the row runs alone).

A newcomer is prefilled alone (its own [1, P] forward, with its own adapter) and then merged: the shorter of
the two caches is padded on the left to the longer, and the two are concatenated along the batch axis. A row
that leaves is dropped with an index select; padding columns that no remaining row uses are trimmed, so one
long request that finished does not make every later step attend over its length.

Merging needs a cache made of plain `DynamicLayer`s (every full-attention model); `mergeable` says so, and
the scheduler keeps a batch of one for anything else (sliding-window or linear-attention layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from agent.llm.decoding import forward_arguments

if TYPE_CHECKING:
    import torch

    from agent.llm.prefixcache import Hit

# Runs one forward with these adapter names, one per row ("__base__" = no adapter).
Route = Callable[[Sequence[str]], AbstractContextManager[Any]]


class KVBatch:
    """Rows decoding together: their cache, attention mask and next positions. Not thread-safe: one decode thread."""

    def __init__(self, model: Any, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self._model = model
        self.cache = cache
        self.mask = mask  # [B, L] long: 1 over real tokens
        self.positions = positions  # [B] long: the position id of each row's next token

    @classmethod
    def prefill(cls, model: Any, prompt_ids: Sequence[int], route: Route, adapter: str,
                hit: Hit | None = None) -> tuple[KVBatch, Any]:
        """A one-row batch holding the prompt's cache, and the logits of its next token (1-D, float32, CPU).

        With a prefix-cache `hit`, the cached keys and values stand for the prompt's first `hit.tokens`
        tokens and the model runs on the rest only.
        """
        import torch
        from transformers import DynamicCache

        device = model.device
        cache = DynamicCache(config=model.config)
        start = 0
        if hit is not None:
            for index, (keys, values) in enumerate(hit.layers):
                cache.update(keys, values, index)
            start = hit.tokens
        ids = torch.tensor([list(prompt_ids[start:])], dtype=torch.long, device=device)
        with torch.inference_mode(), route([adapter]):
            out = model(input_ids=ids, use_cache=True, **forward_arguments(model, cache))
        mask = torch.ones((1, len(prompt_ids)), dtype=torch.long, device=device)
        positions = torch.tensor([len(prompt_ids)], dtype=torch.long, device=device)
        return cls(model, cache, mask, positions), _host(out.logits[:, -1])[0]

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values), [B, heads, L, dim]."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    @property
    def mergeable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def merge(self, other: KVBatch) -> None:
        """Append `other`'s rows after this batch's rows."""
        import torch

        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length, 2), _pad_left(theirs.keys, length, 2)])
            mine.values = torch.cat([_pad_left(mine.values, length, 2), _pad_left(theirs.values, length, 2)])
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(other.mask, length, 1)])
        self.positions = torch.cat([self.positions, other.positions])

    def step(self, tokens: Sequence[int], route: Route, adapters: Sequence[str]) -> Any:
        """Feed each row its last token; the next-token logits, [B, vocab] float32 on the CPU."""
        import torch

        device = self.mask.device
        ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, torch.ones((self.size, 1), dtype=torch.long, device=device)], dim=1)
        extra = forward_arguments(self._model, self.cache)
        with torch.inference_mode(), route(adapters):
            out = self._model(input_ids=ids, attention_mask=self.mask, position_ids=self.positions[:, None],
                              use_cache=True, **extra)
        self.positions = self.positions + 1
        return _host(out.logits[:, -1])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order), and drop padding columns no remaining row needs."""
        import torch

        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0].item()) if used.numel() else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = self.mask[:, start:]


def _host(logits: torch.Tensor) -> torch.Tensor:
    """Logits as an ordinary float32 CPU tensor (outside inference mode, so the grammar can mask it in place)."""
    return logits.float().cpu().clone()


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    import torch

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
