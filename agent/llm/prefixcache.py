"""PrefixCache: the KV cache of recent prompts, so a prompt that starts like an earlier one prefills only the rest.

An agent's prompts repeat themselves: every step of a run re-sends the system prompt, the tool schemas and
the conversation so far, and every session of a deployment shares the system prompt and tool schemas. After
a prompt is prefilled its cache is kept here (per adapter: an adapter changes the keys and values); the next
prompt takes the cached keys and values of the longest prefix it shares with any kept prompt of the same
adapter, and runs the model on the remaining tokens only. At least the last prompt token is always run (its
logits choose the first new token).

Entries hold references to the prefill's tensors, which nothing modifies in place (a DynamicLayer grows by
concatenation, and the running batch pads, merges and drops rows into new tensors), so keeping one costs no
copy. The cache holds at most `budget_bytes` of tensors ([model] prefix_cache_mb) and drops the least
recently used entries beyond that; an entry whose prompt is a prefix of a newer one's is dropped for it.
Used from the decode thread only (not thread-safe); `clear` from elsewhere only while no request is in flight
(TransformersLLM.changing_weights detaches the cache from the scheduler first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

MIN_REUSE_TOKENS = 4  # shorter shared prefixes are not worth a lookup's copy


@dataclass(frozen=True)
class Hit:
    """The first `tokens` tokens of a prompt are cached: per layer, (keys, values) of shape [1, heads, n, dim]."""

    tokens: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def head(self, tokens: int) -> Hit | None:
        """The first `tokens` of these (views, no copy); None for none."""
        return Hit(tokens, tuple((k[:, :, :tokens], v[:, :, :tokens]) for k, v in self.layers)) if tokens else None


@dataclass
class _Entry:
    adapter: str
    ids: torch.Tensor  # [P] long, on the CPU
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    nbytes: int


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0  # prompt tokens whose prefill a hit saved
    prefilled_tokens: int = 0  # prompt tokens run through the model


class PrefixCache:
    """Prompts' KV by adapter; `lookup` before a prefill, `store` after it."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next_key = 0
        self.nbytes = 0
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str, prompt_ids: Sequence[int]) -> Hit | None:
        """The cached KV of the longest prefix this prompt shares with a kept prompt of `adapter` (never the
        whole prompt: its last token must run), or None when no useful prefix is kept."""
        self.stats.lookups += 1
        best: tuple[int, int] | None = None  # (shared tokens, entry key)
        if self._entries and len(prompt_ids) > MIN_REUSE_TOKENS:
            ids = _ids(prompt_ids)
            for key, entry in self._entries.items():
                if entry.adapter != adapter:
                    continue
                shared = _common_prefix(entry.ids, ids)
                if best is None or shared > best[0]:
                    best = (shared, key)
        tokens = 0 if best is None else min(best[0], len(prompt_ids) - 1)
        if best is None or tokens < MIN_REUSE_TOKENS:
            self.stats.prefilled_tokens += len(prompt_ids)
            return None
        key = best[1]
        entry = self._entries[key]
        self._entries.move_to_end(key)
        self.stats.hits += 1
        self.stats.reused_tokens += tokens
        self.stats.prefilled_tokens += len(prompt_ids) - tokens
        return Hit(tokens, entry.layers).head(tokens)

    def store(self, adapter: str, prompt_ids: Sequence[int], layers: Sequence[tuple[Any, Any]]) -> None:
        """Keep a prefilled prompt's KV (one row: [1, heads, len(prompt_ids), dim] per layer)."""
        nbytes = sum(_held_bytes(k) + _held_bytes(v) for k, v in layers)
        if nbytes > self.budget_bytes or not prompt_ids:
            return
        ids = _ids(prompt_ids)
        for key in [k for k, e in self._entries.items() if e.adapter == adapter and _covers(ids, e.ids)]:
            self._drop(key)
        self._entries[self._next_key] = _Entry(adapter, ids, tuple((k, v) for k, v in layers), nbytes)
        self._next_key += 1
        self.nbytes += nbytes
        while self.nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes


def _ids(prompt_ids: Sequence[int]) -> torch.Tensor:
    import torch

    return torch.tensor(list(prompt_ids), dtype=torch.long)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens a and b share."""
    n = min(a.shape[0], b.shape[0])
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0].item()) if differ.numel() else n


def _covers(longer: torch.Tensor, shorter: torch.Tensor) -> bool:
    return longer.shape[0] >= shorter.shape[0] and _common_prefix(longer, shorter) == shorter.shape[0]


def _held_bytes(tensor: torch.Tensor) -> int:
    """The memory an entry keeps alive: a view's whole buffer (a growing cache layer has room past its length)."""
    return max(int(tensor.untyped_storage().nbytes()), tensor.numel() * tensor.element_size())
