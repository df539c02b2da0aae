"""LeanDecode: one decode step of a Llama-family model as a flat loop of tensor ops, not transformers' forward.

A decode step feeds each row one token. transformers' forward is written for any shape: per step it builds
masks and position embeddings through generic helpers, calls ~400 modules through `nn.Module.__call__`, and
runs q, k, v (and gate, up) as separate products. On CPU at one row that glue costs about as much as the
weights: of the bundled model's 59 ms step, 18 ms is Python and small ops. This step does the same arithmetic
with less around it:

- q, k and v are one product, and so are gate and up: with 4-bit weights (int4.py), one packed matrix each, and
  where torch has FBGEMM one float16 matrix each for steps of HALF_ROWS rows or more;
- rotary embedding is computed once per step and applied to q and k together, as two multiplies and a flip;
- on CPU the output layer reads a copy of its weight: with packed layers, a float16 one (FBGEMM, every row
  count; made at build); else, at one or two rows, the weight transposed (on first use), which BLAS runs at
  twice the speed (113 MB more for the bundled model);
- attention is one `scaled_dot_product_attention` over the growing KV
  cache (batching.GrowingLayer), with the query heads of a key/value head grouped along the query axis (GQA
  without repeating keys); no mask for one row, a padding mask for several. A CPU step of several rows over a
  short context computes it as two batched products and a softmax instead (MATMUL_ATTENTION_LENGTH).

It reads the cache, mask and positions of a `KVBatch` and updates them exactly as transformers' forward does,
so merges, row drops and the prefix cache are unchanged, and a step can go either way. For a CPU model with
packed layers and FBGEMM (x86 builds of torch), prompts are prefilled by the same loop too (`prefill`: a
prompt's tokens are its rows, attention is causal over the cached part and the new tokens), reading the float16
copies, which run a prompt of a few dozen tokens faster than float32 (elsewhere transformers' forward
prefills).

Supported: `llama`, `mistral` and `qwen2` models (Llama's decoder layer, biases allowed) with SiLU MLPs,
full attention in every layer, and a static rotary table (default, linear, llama3 or yarn scaling; not
dynamic or longrope). Anything else runs transformers' forward. So does a step whose adapters the router
cannot serve itself (LoRA on embeddings, LoRA bias: PEFT's own path), and a step on layers that PEFT wrapped
outside the engine's adapters (a training run evaluating its LoRA through the engine); plain LoRA adapters are
added per row from the router's stacks, as in the transformers path.

The output matches transformers' forward up to rounding: the same operations in the same order except the
rotary flip, the fused products and the grouped attention (tests compare logits with transformers').
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.llm.int4 import Int4Decode, Packed, half_available, half_product, pack, pack_half, product

if TYPE_CHECKING:
    import torch

    from agent.llm.batching import KVBatch
    from agent.llm.lorarouter import LoraRouter
    from agent.llm.slots import SlotCache

_Attend = Callable[[int, "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
SUPPORTED = ("llama", "mistral", "qwen2")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
# Up to this many rows, a CPU step multiplies each row by a transposed copy of the output layer: BLAS's
# matrix-vector product with the vocabulary as the contiguous axis ran at 4.4 ms against 8.5-9.8 for
# `F.linear` on the bundled model's 49152x576 head (one thread; 9.6 against 19.6 ms at 2 rows), and lost
# from 4 rows on.
COLUMN_HEAD_ROWS = 2
# From this many rows, a packed model's CPU step reads FBGEMM's float16 copy of each product instead of the
# 4-bit one, whose kernel dequantizes per row (one thread, the bundled model's four products over 30 layers,
# weights from memory: 22.0 against 27.0 ms at 2 rows, 23.3 against 34.9 at 4, 38.8 against 55.3 at 8; even
# at 1 row, where 4-bit reads a quarter of the bytes and wins once several threads share the work).
HALF_ROWS = 2
# Up to this many positions of context, a CPU step of several rows computes attention as two batched products
# and a softmax instead of `scaled_dot_product_attention`, whose CPU kernel has a fixed cost per row and head
# (8 rows, the bundled model's 3 key/value heads of 3 queries, 2 threads: 119 against 57 us a layer at 40
# positions, 243 against 145-181 at 160, even at 400; one row: SDPA is the faster, 31 against 42 us at 80).
MATMUL_ATTENTION_LENGTH = 512


@dataclass
class _Product:
    """Linear layers that read the same input, computed as one product; outputs side by side."""

    parents: list[tuple[Any, str]]  # (module, attribute) where each Linear sits: PEFT may wrap it there later
    linears: list[Any]  # the Linear layers themselves (PEFT keeps them as its wrappers' base_layer)
    sizes: list[int]
    bias: Any  # the biases side by side, or None
    packed: Packed | None  # every layer's weight as one int4 matrix, or None (float weights)
    versions: list[int]  # each weight's `_version` when packed: a later in-place change reads float again
    half: Any = None  # with `packed`, the weights as one FBGEMM float16 matrix (prefills, steps of HALF_ROWS rows)

    def current(self) -> bool:
        """The packed copy still matches every layer's float weight (none changed in place since)."""
        return all(linear.weight._version == v for linear, v in zip(self.linears, self.versions, strict=True))

    def _half(self) -> Any:
        """The float16 copy, packed at build (or on the first use after FBGEMM became able to pack); None
        while FBGEMM cannot pack."""
        import torch

        if self.half is None and half_available():
            weights = [linear.weight.detach() for linear in self.linears]
            self.half = pack_half(weights[0] if len(weights) == 1 else torch.cat(weights))
        return self.half

    def __call__(self, x: torch.Tensor, router: LoraRouter | None, fresh: bool, rows: int = 0) -> torch.Tensor:
        """The layers' outputs side by side; `fresh`: every packed weight of the model is known current.

        x is [tokens, in]: one per row in a step; in a prefill (`rows` > 0) each row's tokens one after another,
        which the router sees as [rows, tokens per row, in] (it adds each row's own adapter)."""
        import torch
        from torch.nn import functional

        out: torch.Tensor
        packed = self.packed
        if packed is not None and (fresh or self.current()):
            half = self._half() if x.shape[0] >= HALF_ROWS else None
            out = product(x, packed) if half is None else half_product(x, half)
            if self.bias is not None:
                out = out + self.bias
        elif len(self.linears) == 1:
            out = functional.linear(x, self.linears[0].weight, self.linears[0].bias)
        else:
            out = torch.cat([functional.linear(x, linear.weight, linear.bias) for linear in self.linears], dim=-1)
        if router is not None and router.has_lora_rows:
            start = 0
            for (parent, name), linear, size in zip(self.parents, self.linears, self.sizes, strict=True):
                wrapper = getattr(parent, name)
                if wrapper is not linear:
                    delta = router.delta(wrapper, x.view(rows, -1, x.shape[-1]) if rows else x)
                    if delta is not None:
                        out[..., start:start + size] += delta.to(out.dtype).view(-1, size)
                start += size
        return out


@dataclass
class _Layer:
    norm_in: Any
    qkv: _Product
    o: _Product
    norm_post: Any
    gate_up: _Product
    down: _Product

    @property
    def products(self) -> tuple[_Product, ...]:
        return self.qkv, self.o, self.gate_up, self.down


class LeanDecode:
    """The decode step of one model (built once per engine); `step` returns None where it does not apply."""

    def __init__(self, model: Any, layers: list[_Layer], packed: bool) -> None:
        config = model.config
        self._embed = model.get_input_embeddings()
        self._head = model.get_output_embeddings()
        self._head_copy: tuple[Any, int, bool] | None = None  # (a copy of its weight for CPU steps, that weight's
        # version, whether the copy is float16)
        self._norm = model.model.norm
        self._eps = float(self._norm.variance_epsilon)
        rotary = model.model.rotary_emb
        self._inv_freq = rotary.inv_freq
        self._rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        attention = model.model.layers[0].self_attn
        self._scaling = float(attention.scaling)
        self._dim = int(attention.head_dim)
        self._heads = int(config.num_attention_heads)
        self._kv_heads = int(config.num_key_value_heads)
        self._layers = layers
        products = products_of(self)
        packed_products = [p for p in products if p.packed]
        self._weights = [linear.weight for p in packed_products for linear in p.linears]
        self._versions = [v for p in packed_products for v in p.versions]
        self._slots = [(parent._modules, name, linear)  # (children dict, name, Linear)
                       for p in products for (parent, name), linear in zip(p.parents, p.linears, strict=True)]
        self.packed = packed  # the layer products read 4-bit weights (int4.py) on CPU
        self.steps = 0  # decode steps this path ran (tests and benchmarks read it)
        self.prefills = 0  # prefill forwards this path ran

    @classmethod
    def build(cls, model: Any, int4: Int4Decode | None) -> LeanDecode | None:
        """The lean step for `model`, or None when its architecture is not one this step reproduces."""
        if not supports(model):
            return None
        layers = []
        for block in model.model.layers:
            attention, mlp = block.self_attn, block.mlp
            layers.append(_Layer(
                norm_in=block.input_layernorm,
                qkv=_product([(attention, "q_proj"), (attention, "k_proj"), (attention, "v_proj")], int4),
                o=_product([(attention, "o_proj")], int4),
                norm_post=block.post_attention_layernorm,
                gate_up=_product([(mlp, "gate_proj"), (mlp, "up_proj")], int4),
                down=_product([(mlp, "down_proj")], int4),
            ))
        lean = cls(model, layers, packed=int4 is not None)
        if lean.packed and half_available():
            # the float16 copies that prefills and batched steps read, made now rather than during the first
            # prompt's prefill (the bundled model: ~1.4 s, 270 MB)
            for product in products_of(lean):
                if product.packed is not None:  # (a layer left unpacked reads its float weight)
                    product._half()
            lean._head_weight(pack_half, True)
        return lean

    def usable(self, router: LoraRouter | None) -> bool:
        """Whether this step serves rows routed by `router` (from the engine's `route`; None: no adapter loaded)."""
        if router is not None:
            return router.serves_all  # else LoRA on embeddings or bias: PEFT's own forward
        return self._unwrapped()  # else LoRA layers the engine did not load (a training run's): PEFT adds them

    def prefills_on(self, device_type: str, router: LoraRouter | None) -> bool:
        """Whether `prefill` serves prompts on this device with these rows' adapters."""
        return self.packed and device_type == "cpu" and half_available() and self.usable(router)

    def step(self, batch: KVBatch, ids: torch.Tensor, router: LoraRouter | None) -> torch.Tensor | None:
        """Feed row i the token ids[i] ([B] long): the last position's logits [B, vocab] in the model's dtype.

        Call after `batch.mask` has the new column and before `batch.positions` moves on, inside the router's
        `route` for these rows. None (nothing changed) when the step cannot serve these rows (`usable`).
        """
        import torch
        from torch.nn import functional

        if not self.usable(router):
            return None
        cache_layers = batch.cache.layers
        fresh = ids.device.type == "cpu" and self._packed_current()
        rows, length = batch.mask.shape
        if rows > 1 and ids.device.type == "cpu" and length <= MATMUL_ATTENTION_LENGTH and (
                self._embed.weight.dtype == torch.float32):  # (a bfloat16 softmax would lose precision)
            # 0 over real tokens, -inf over padding: added to the scores of every layer
            bias = torch.zeros(batch.mask.shape, dtype=self._embed.weight.dtype).masked_fill_(
                batch.mask == 0, float("-inf"))[:, None, None, :]

            def attend(index: int, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
                keys, values = cache_layers[index].update(key, value)
                scores = torch.matmul(query, keys.transpose(-1, -2)).mul_(self._scaling).add_(bias)
                return torch.matmul(scores.softmax(-1), values)
        else:
            mask = batch.mask.bool()[:, None, None, :] if rows > 1 else None

            def attend(index: int, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
                keys, values = cache_layers[index].update(key, value)
                return functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask,
                                                               scale=self._scaling)

        logits = self._forward(ids, batch.positions, attend, router, fresh)
        self.steps += 1
        return logits

    def slot_step(self, slots: SlotCache, rows: int, length: int, router: LoraRouter | None) -> torch.Tensor:
        """One step of slots 0..rows-1 (slots.py): token `slots.ids[i]` at position `slots.lengths[i]`, attending
        over the first `length` positions of each slot. Writes each new key and value into its slot at its
        position; reads nothing from the host and makes no host sync, so a CUDA graph can replay it.
        """
        import torch
        from torch.nn import functional

        lengths = slots.lengths[:rows]
        mask = (torch.arange(length, device=lengths.device)[None, :] <= lengths[:, None])[:, None, None, :]
        where = lengths.view(rows, 1, 1, 1).expand(rows, self._kv_heads, 1, self._dim)

        def attend(index: int, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
            keys, values = slots.keys[index][:rows], slots.values[index][:rows]
            keys.scatter_(2, where, key)
            values.scatter_(2, where, value)
            return functional.scaled_dot_product_attention(query, keys[:, :, :length], values[:, :, :length],
                                                           attn_mask=mask, scale=self._scaling)

        logits = self._forward(slots.ids[:rows], lengths, attend, router, fresh=False)
        self.steps += 1
        return logits

    def prefill(self, cache: Any, cached: int, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                keep: torch.Tensor, router: LoraRouter | None) -> torch.Tensor | None:
        """Run R rows' new tokens, ids and `positions` [R, W], after the C = `cached` positions per row that
        `cache`'s layers hold (C may be 0); `mask` [R, C + W]: 1 where a row may look (its cached part, its new tokens),
        None for one row that sees all of them. Appends the new keys and values to `cache` and returns the
        logits [len(keep), vocab] of the tokens `keep` indexes in the flattened [R * W] tokens.

        None (nothing changed) where this path does not apply (`prefills_on`): it serves CPU models with packed
        layers and FBGEMM, whose float16 copies run a prompt of a few dozen tokens about 1.3x faster than
        float32 (and as fast from a few hundred on), with the router's adapters as in `step`. Call inside the
        router's `route`.
        """
        import torch
        from torch.nn import functional

        if not self.prefills_on(ids.device.type, router):
            return None
        cache_layers = cache.layers
        fresh = self._packed_current()
        rows, width = ids.shape
        # query t of a row sees the cached part and the new tokens up to itself, where its mask allows
        allowed = (torch.arange(cached + width, device=ids.device)[None, :]
                   <= cached + torch.arange(width, device=ids.device)[:, None])[None]  # [1, W, C + W]
        if mask is not None:
            allowed = allowed & mask.bool()[:, None, :]
        allowed = allowed[:, None]  # [R or 1, 1, W, C + W]: the same for every head
        heads, kv_heads, dim = self._heads, self._kv_heads, self._dim

        def attend(index: int, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
            keys, values = cache_layers[index].update(key.view(rows, width, kv_heads, dim).transpose(1, 2),
                                                      value.view(rows, width, kv_heads, dim).transpose(1, 2))
            out = functional.scaled_dot_product_attention(
                query.reshape(rows, width, heads, dim).transpose(1, 2), keys, values, attn_mask=allowed,
                scale=self._scaling, enable_gqa=True)  # [R, heads, W, dim]
            return out.transpose(1, 2).reshape(rows * width, kv_heads, heads // kv_heads, dim)

        logits = self._forward(ids.reshape(-1), positions.reshape(-1), attend, router, fresh, keep, rows)
        self.prefills += 1
        return logits

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: _Attend, router: LoraRouter | None,
                 fresh: bool, keep: torch.Tensor | None = None, prefill_rows: int = 0) -> torch.Tensor:
        """The decoder over new tokens ids [N] at `positions` [N] (a step: one per row); `attend(layer, key,
        value, query)` stores the new keys and values in that layer's cache and returns the attention output,
        [N, kv_heads, groups, dim]. Logits of the tokens `keep` indexes (None: all). `prefill_rows`: the tokens
        are that many rows' prompts, one after another (for the router)."""
        import torch
        from torch.nn import functional

        x = functional.embedding(ids, self._embed.weight)  # [N, D]
        rows = int(ids.shape[0])
        cos, sin = self._rope(positions, x.dtype)
        heads, kv_heads, dim = self._heads, self._kv_heads, self._dim
        groups, split = heads // kv_heads, (heads + kv_heads) * dim
        for index, layer in enumerate(self._layers):
            h = _rms_norm(x, layer.norm_in.weight, layer.norm_in.variance_epsilon)
            qkv = layer.qkv(h, router, fresh, prefill_rows)
            qk = qkv[:, :split].view(rows, heads + kv_heads, dim)
            qk = qk * cos + qk.view(rows, heads + kv_heads, 2, dim // 2).flip(-2).view(qk.shape) * sin
            attended = attend(index, qk[:, heads:, None, :], qkv[:, split:].view(rows, kv_heads, 1, dim),
                              qk[:, :heads].view(rows, kv_heads, groups, dim))
            x = x + layer.o(attended.reshape(rows, heads * dim), router, fresh, prefill_rows)
            h = _rms_norm(x, layer.norm_post.weight, layer.norm_post.variance_epsilon)
            gate, up = layer.gate_up(h, router, fresh, prefill_rows).chunk(2, dim=-1)
            x = x + layer.down(functional.silu(gate) * up, router, fresh, prefill_rows)
        if keep is not None:
            x = x.index_select(0, keep)
            rows = int(x.shape[0])
        x = _rms_norm(x, self._norm.weight, self._eps)
        bias = getattr(self._head, "bias", None)
        half_head = self.packed and x.device.type == "cpu" and half_available()  # a float16 copy of the head
        if x.device.type != "cpu" or (rows > COLUMN_HEAD_ROWS and not half_head):
            return functional.linear(x, self._head.weight, bias)
        logits: torch.Tensor
        if half_head:
            logits = half_product(x, self._head_weight(pack_half, True))
        else:
            columns = self._head_weight(lambda weight: weight.detach().t().contiguous(), False)
            logits = x @ columns if rows == 1 else torch.cat([row[None] @ columns for row in x])
        return logits if bias is None else logits + bias

    def _head_weight(self, make: Callable[[torch.Tensor], Any], half: bool) -> Any:
        """The copy of the output layer's weight CPU steps read: made by `make` on first use, and again after
        the weight changes in place. A packed model's is FBGEMM's float16 matrix (one row: 2.1 against 6.5 ms
        for the transposed float32 one, 8 rows: 10.0 against 27.2 for `F.linear`; the bundled 49152x576 head,
        one thread, caches flushed); otherwise the weight transposed ([hidden, vocab]), for one or two rows."""
        weight = self._head.weight
        if self._head_copy is None or self._head_copy[1:] != (weight._version, half):
            self._head_copy = make(weight), int(weight._version), half
        return self._head_copy[0]

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim): the shape of a KV cache for this model."""
        return len(self._layers), self._kv_heads, self._dim

    def _packed_current(self) -> bool:
        """No packed weight changed in place since it was packed (one check of them all; else each product
        checks its own)."""
        return [w._version for w in self._weights] == self._versions

    def _unwrapped(self) -> bool:
        """Every product's Linear layers still sit where they were found, not wrapped (by PEFT) since."""
        return all(children.get(name) is linear for children, name, linear in self._slots)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, [B, 1, dim]: x*cos + flip_halves(x)*sin is transformers' rotary embedding."""
        import torch

        freqs = positions[:, None].float() * self._inv_freq.float()[None, :]  # [B, dim/2]
        cos = freqs.cos() * self._rope_scale
        sin = freqs.sin() * self._rope_scale
        cos = torch.cat([cos, cos], dim=-1)
        sin = torch.cat([-sin, sin], dim=-1)  # rotate_half(x) = cat(-x2, x1) = flip_halves(x) * (-1, +1)
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def products_of(lean: LeanDecode) -> list[_Product]:
    """Every layer's products, in order."""
    return [product for layer in lean._layers for product in layer.products]


def describe(enabled: bool, model_path: str) -> str:
    """Which forward decode steps will run for this model, without loading it (`metagent doctor`)."""
    import json
    from pathlib import Path

    if not enabled:
        return "transformers' forward ([model] lean_decode = false)"
    if not model_path:
        return "lean (the bundled model is a Llama)"
    config = Path(model_path).expanduser() / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if isinstance(model_type, str) and model_type not in SUPPORTED:
        return f"transformers' forward ({model_type} is not one of {', '.join(SUPPORTED)})"
    what = model_type if isinstance(model_type, str) else ", ".join(SUPPORTED)
    return f"lean at load for {what} models whose layers it reproduces, else transformers' forward"


def supports(model: Any) -> bool:
    """Whether `model` is a Llama-family decoder this step computes exactly (see the module docstring)."""
    from torch import nn

    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if config is None or inner is None or getattr(config, "model_type", None) not in SUPPORTED:
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "sliding_window", None) and getattr(
            config, "use_sliding_window", True):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return False
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in _STATIC_ROPE:
        return False
    if not isinstance(model.get_output_embeddings(), nn.Linear):
        return False
    for block in getattr(inner, "layers", []):
        attention, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
        names = [(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(getattr(parent, n, None)) is not nn.Linear for parent, n in names):
            return False
        if not all(_is_rms_norm(getattr(block, n, None)) for n in ("input_layernorm", "post_attention_layernorm")):
            return False
    return _is_rms_norm(getattr(inner, "norm", None))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm, op for op (torch's fused `rms_norm` is slower on CPU at one row)."""
    import torch

    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _is_rms_norm(module: Any) -> bool:
    """transformers' Llama-style RMSNorm (weight * normalized, no offset), the only norm this step computes."""
    return type(module).__name__ in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm") and hasattr(
        module, "variance_epsilon")


def _product(parents: list[tuple[Any, str]], int4: Int4Decode | None) -> _Product:
    import torch

    linears = [getattr(parent, name) for parent, name in parents]
    sizes = [int(linear.out_features) for linear in linears]
    biases = [linear.bias for linear in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.detach() if b is not None else linear.weight.new_zeros(linear.out_features)
                          for b, linear in zip(biases, linears, strict=True)])
    packed = None
    if int4 is not None and all(linear in int4.layers.values() for linear in linears):
        if len(linears) == 1:
            packed = linears[0]._metagent_int4  # the layer's own packing, shared with int4.Int4Decode
        else:
            packed, _ = pack(torch.cat([linear.weight.detach() for linear in linears]))
    versions = [int(linear.weight._version) for linear in linears]
    return _Product(parents, linears, sizes, bias, packed, versions)
