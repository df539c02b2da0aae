"""KVBatch: the running batch's KV cache, which rows join (continuous batching) and leave at any step.

Every row's cache is left-padded to one length L, so a decode step is one forward over [B, 1] new tokens
against a [B, heads, L, dim] cache. Per row: an attention-mask row (0 over its padding) and its next position
id (the count of its real tokens, so RoPE sees the same positions as when the row runs alone).

A newcomer is prefilled (its own [1, P] forward with its own adapter, or `prefill_many`: several prompts in one
forward, each row then copied out as if prefilled alone) and then merged, with the others prefilled at the
same time: every cache is written, left-padded with zeros to the longest, into one new tensor along the batch
axis. A row that leaves is dropped with an index select; padding columns that no remaining row uses are
trimmed, so one long request that finished does not make every later step attend over its length.

Each layer's keys and values grow in place (`GrowingLayer`): a step writes its one new position into spare
room at the end of the layer's buffer, and the attention reads a view of the filled part, where transformers'
`DynamicLayer` concatenates, copying the whole cache of every layer at every step (at 300 tokens of context,
10 of the bundled model's 77 ms per step on CPU). A step that finds the buffer full moves it to a larger one
with room to spare, as does the first step after a merge or a row drop (which build new tensors anyway); a
prefill is stored at its exact size. A view handed out (to the prefix cache, to a caller) is never written:
writes go past every length handed out so far, and a layer never writes into a tensor it was given (`update`
on an empty layer and the `keys`/`values` setters copy before the next write).

Merging needs a cache made of full-attention layers (every full-attention model); `mergeable` says so, and
the scheduler keeps a batch of one for anything else (sliding-window or linear-attention layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from agent.llm.decoding import forward_arguments

if TYPE_CHECKING:
    import torch

    from agent.llm.leanstep import LeanDecode
    from agent.llm.prefixcache import Hit

_SPARE_MIN = 64  # positions of room added at each reallocation, at least; plus an eighth of the length

# Runs one forward with these adapter names, one per row ("__base__" = no adapter); yields the LoRA router
# (lorarouter.LoraRouter) or None when no adapter is loaded.
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
                hit: Hit | None = None, lean: LeanDecode | None = None) -> tuple[KVBatch, Any]:
        """A one-row batch holding the prompt's cache, and the logits of its next token (1-D, float32, CPU).

        With a prefix-cache `hit`, the cached keys and values stand for the prompt's first `hit.tokens`
        tokens and the model runs on the rest only. With `lean`, the forward is `LeanDecode.prefill` where it
        applies (CPU models with packed layers), else transformers'.
        """
        import torch
        from transformers import DynamicCache

        device = model.device
        cache = growing(DynamicCache(config=model.config))
        start = 0
        if hit is not None:
            for index, (keys, values) in enumerate(hit.layers):
                cache.update(keys, values, index)
            start = hit.tokens
        ids = torch.tensor([list(prompt_ids[start:])], dtype=torch.long, device=device)
        with torch.inference_mode(), route([adapter]) as router:
            width = int(ids.shape[1])
            logits = None if lean is None else lean.prefill(
                cache, start, ids, torch.arange(start, start + width, device=device)[None], None,
                torch.tensor([width - 1], device=device), router)
            if logits is None:
                logits = model(input_ids=ids, use_cache=True, **forward_arguments(model, cache)).logits[:, -1]
        return cls._prefilled(model, cache, len(prompt_ids)), _host(logits)[0]

    @classmethod
    def _prefilled(cls, model: Any, cache: Any, tokens: int) -> KVBatch:
        """A one-row batch whose cache holds a prompt's `tokens` positions, no padding."""
        import torch

        device = model.device
        return cls(model, cache, torch.ones((1, tokens), dtype=torch.long, device=device),
                   torch.tensor([tokens], dtype=torch.long, device=device))

    @classmethod
    def prefill_many(cls, model: Any, prompts: Sequence[Sequence[int]], route: Route, adapters: Sequence[str],
                     hits: Sequence[Hit | None], lean: LeanDecode | None = None) -> list[tuple[KVBatch, Any]]:
        """`prefill` of several prompts in one forward: for each, the one-row batch and logits `prefill` gives
        (up to rounding: the products' shapes differ), in order.

        Row i runs its tokens past `hits[i]` (the cached part, as in `prefill`). The forward's rows are laid out
        as [cached part | zeros] then [new tokens | padding], with an attention mask that is 0 over the zeros
        and the padding, and each row's own position ids, so a row attends to exactly what it attends to alone.
        Padding goes after each row's tokens, where it can see them (no query row sees nothing). Each row's
        keys and values are then copied out without the gaps, so every returned batch is a plain prefilled row.
        """
        import torch
        from transformers import DynamicCache

        if len(prompts) == 1:
            return [cls.prefill(model, prompts[0], route, adapters[0], hits[0], lean)]
        device = model.device
        starts = [0 if hit is None else hit.tokens for hit in hits]
        lengths = [len(prompt) - start for prompt, start in zip(prompts, starts, strict=True)]
        if min(lengths) < 1:
            raise ValueError("a prompt with no token to run")  # (alone, the forward itself refuses it)
        cached, width = max(starts), max(lengths)
        ids = torch.tensor([[*prompt[start:], *[0] * (width - length)]
                            for prompt, start, length in zip(prompts, starts, lengths, strict=True)], device=device)
        mask = torch.tensor([[1] * start + [0] * (cached - start) + [1] * length + [0] * (width - length)
                             for start, length in zip(starts, lengths, strict=True)], device=device)
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(width, device=device)[None, :]
        cache = growing(DynamicCache(config=model.config))
        if cached:  # each layer's buffers: every row's cached part, zeros up to `cached`, room for the new tokens
            shown = next(hit for hit in hits if hit is not None)
            for index, layer in enumerate(cache.layers):
                buffers = []
                for which in range(2):
                    like = shown.layers[index][which]
                    buffer = like.new_empty((len(hits), like.shape[1], cached + width, like.shape[3]))
                    for row, (hit, start) in enumerate(zip(hits, starts, strict=True)):
                        if hit is not None:
                            buffer[row, :, :start] = hit.layers[index][which][0]
                        buffer[row, :, start:cached] = 0  # masked, but read: it must not be NaN
                    buffers.append(buffer)
                layer.take(buffers[0], buffers[1], cached)
        with torch.inference_mode():
            with route(list(adapters)) as router:
                ends = torch.tensor([row * width + length - 1 for row, length in enumerate(lengths)], device=device)
                logits = None if lean is None else lean.prefill(cache, cached, ids, positions, mask, ends, router)
                if logits is None:
                    logits = _last_logits(model, cache, ids, mask, positions, lengths)
            caches = []
            for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
                own = growing(DynamicCache(config=model.config))
                for layer, mine in zip(cache.layers, own.layers, strict=True):
                    keys, values = (_unpadded(part, row, start, cached, length) for part in (layer.keys, layer.values))
                    mine.lazy_initialization(keys, values)
                    mine.keys, mine.values = keys, values  # adopted: copied, never written, at the next update
                caches.append(own)
        rows = _host(logits)  # one copy to the host
        return [(cls._prefilled(model, own, start + length), rows[row])
                for row, (own, start, length) in enumerate(zip(caches, starts, lengths, strict=True))]

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values), [B, heads, L, dim]."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    @property
    def mergeable(self) -> bool:
        return all(type(layer) is _growing_class() for layer in self.cache.layers)

    def merge(self, *others: KVBatch) -> None:
        """Append the rows of `others`, in order, after this batch's rows: one copy of the cache for all of them
        (merging 8 rows one at a time copies the growing batch 7 times)."""
        import torch

        batches = (self, *others)
        length = max(batch.mask.shape[1] for batch in batches)
        for layers in zip(*(batch.cache.layers for batch in batches), strict=True):
            layers[0].keys = _stack_left([layer.keys for layer in layers], length)
            layers[0].values = _stack_left([layer.values for layer in layers], length)
        self.mask = torch.cat([_pad_left(batch.mask, length, 1) for batch in batches])
        self.positions = torch.cat([batch.positions for batch in batches])

    def step(self, tokens: Sequence[int], route: Route, adapters: Sequence[str],
             lean: LeanDecode | None = None, meanwhile: Callable[[], None] | None = None) -> Any:
        """Feed each row its last token; the next-token logits, [B, vocab] float32 on the CPU.

        With `lean`, the step runs leanstep.LeanDecode where it applies, else transformers' forward.
        `meanwhile` runs once the forward is queued and before its logits are waited for (on a GPU the host
        works while the device computes; on a CPU the forward has finished by then).
        """
        import torch

        device = self.mask.device
        ids = torch.tensor(list(tokens), dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, torch.ones((self.size, 1), dtype=torch.long, device=device)], dim=1)
        with torch.inference_mode(), route(adapters) as router:
            logits = lean.step(self, ids, router) if lean is not None and self.mergeable else None
            if logits is None:
                out = self._model(input_ids=ids[:, None], attention_mask=self.mask,
                                  position_ids=self.positions[:, None], use_cache=True,
                                  **forward_arguments(self._model, self.cache))
                logits = out.logits[:, -1]
        self.positions = self.positions + 1
        if meanwhile is not None:
            meanwhile()
        return _host(logits)

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


def _last_logits(model: Any, cache: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 lengths: Sequence[int]) -> torch.Tensor:
    """transformers' forward over `prefill_many`'s rows: the logits at each row's last new token, [R, vocab]."""
    import torch

    device = ids.device
    arguments = forward_arguments(model, cache)
    last = sorted({length - 1 for length in lengths})  # the positions whose logits are needed
    if "logits_to_keep" in arguments:
        arguments["logits_to_keep"] = torch.tensor(last, device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **arguments)
    logits = out.logits if "logits_to_keep" in arguments else out.logits[:, last]
    chosen = torch.tensor([last.index(length - 1) for length in lengths], device=device)
    return logits[torch.arange(len(lengths), device=device), chosen]  # type: ignore[no-any-return]


def growing(cache: Any) -> Any:
    """`cache` with each plain `DynamicLayer` replaced by a `GrowingLayer` (other layer kinds are kept)."""
    from transformers.cache_utils import DynamicLayer

    layer_class = _growing_class()
    cache.layers = [layer_class() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


_GROWING: type | None = None


def _growing_class() -> type:
    """`GrowingLayer`, defined on first use (transformers is imported lazily)."""
    global _GROWING
    if _GROWING is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
            """A DynamicLayer whose `update` writes into spare room instead of concatenating.

            `keys`/`values` are views of the filled part of `_buffers`; assigning either (a merge, a row drop,
            transformers' crop) adopts the tensor as a full buffer with no room, so it is copied, never written,
            at the next update.
            """

            def __init__(self) -> None:
                self._buffers: list[Any] = [None, None]
                self._length = [0, 0]
                self._owned = [False, False]  # a buffer this layer allocated, so it may write past its length
                super().__init__()  # type: ignore[no-untyped-call]

            keys = property(lambda self: self._view(0), lambda self, value: self._adopt(0, value))
            values = property(lambda self: self._view(1), lambda self, value: self._adopt(1, value))

            def _view(self, which: int) -> Any:
                buffer = self._buffers[which]
                if buffer is None or buffer.dim() < 3 or self._length[which] == buffer.shape[-2]:
                    return buffer
                return buffer[..., : self._length[which], :]

            def take(self, keys: Any, values: Any, filled: int) -> None:
                """Start from these buffers, whose first `filled` positions hold keys and values; the next
                updates write past them in place (the caller hands them over and keeps no other reference)."""
                if not self.is_initialized:
                    self.lazy_initialization(keys, values)
                self._buffers, self._length, self._owned = [keys, values], [filled, filled], [True, True]

            def _adopt(self, which: int, value: Any) -> None:
                self._buffers[which] = value
                self._owned[which] = False
                self._length[which] = int(value.shape[-2]) if value is not None and value.dim() >= 3 else 0

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                self._append(0, key_states)
                self._append(1, value_states)
                return self.keys, self.values

            def _append(self, which: int, new: Any) -> None:
                import torch

                buffer, length = self._buffers[which], self._length[which]
                total = length + int(new.shape[-2])
                if not (self._owned[which] and total <= buffer.shape[-2] and buffer.shape[:-2] == new.shape[:-2]):
                    # room to grow for decode steps; a prefill (many positions) is sized exactly, since the
                    # prefix cache may keep it and the first step moves it anyway
                    room = total + (_SPARE_MIN + total // 8 if new.shape[-2] == 1 else 0)
                    grown = torch.empty((*new.shape[:-2], room, new.shape[-1]), dtype=new.dtype, device=new.device)
                    if length:
                        grown[..., :length, :].copy_(buffer[..., :length, :])
                    buffer = grown
                    self._owned[which] = True
                buffer[..., length:total, :].copy_(new)
                self._buffers[which], self._length[which] = buffer, total

        _GROWING = GrowingLayer
    return _GROWING


def _host(logits: torch.Tensor) -> torch.Tensor:
    """Logits as a new, ordinary float32 CPU tensor (call outside inference mode: the grammar masks it in place)."""
    out = logits.float().cpu()
    return out if out is not logits and not out.is_inference() else out.clone()


def _unpadded(tensor: torch.Tensor, row: int, start: int, cached: int, length: int) -> torch.Tensor:
    """Row `row` of a `prefill_many` cache ([B, heads, cached + width, dim]) without its gaps, as a new tensor:
    [1, heads, start + length, dim], its cached part then its new tokens."""
    if not start:
        return tensor[row:row + 1, :, cached:cached + length].clone()
    out = tensor.new_empty((1, tensor.shape[1], start + length, tensor.shape[3]))
    out[:, :, :start] = tensor[row:row + 1, :, :start]
    out[:, :, start:] = tensor[row:row + 1, :, cached:cached + length]
    return out


def _stack_left(parts: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """[B_i, heads, L_i, dim] caches as one [sum B_i, heads, length, dim] tensor, each left-padded with zeros,
    written once into a new tensor (padding each and concatenating copies everything twice)."""
    first = parts[0]
    out = first.new_empty((sum(int(part.shape[0]) for part in parts), first.shape[1], length, first.shape[3]))
    row = 0
    for part in parts:
        rows, filled = int(part.shape[0]), int(part.shape[2])
        out[row:row + rows, :, :length - filled] = 0
        out[row:row + rows, :, length - filled:] = part
        row += rows
    return out


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    import torch

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
