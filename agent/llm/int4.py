"""4-bit weights for CPU decode steps: the same Linear layers, read as packed int4 groups.

A CPU decode step is bound by reading the weights: the bundled model reads 540 MB of float32 per token. The
bundled GGUF stores its layer weights as Q4_1 (groups of 32 values, w = d * q + m, q in 0..15), so the float32
weights the engine loads are exactly 4-bit values: packing them back into int4 groups loses nothing. The packed
copy is read through torch's `_weight_int4pack_mm_for_cpu`, whose vectorized path takes bfloat16 activations
and scales; it runs the model's layer matrices at about twice the float32 speed at one to four rows.

What changes and what does not:
- The weights stay as they are (the float32 Linear keeps its tensor; the packed copy is 1/8 of its size), so
  training and adapters (PEFT wraps the same Linear; the router adds LoRA outputs after it) run exactly as
  before. Only decode steps inside `Int4Decode.active()`, and the lean step's (leanstep.py), read the packed copy.
- Those steps round each layer's input, and the group scales and offsets, to bfloat16 (8 significant bits):
  the layers' outputs move by about 1e-3 relative, which can flip a near-tie between two tokens after a few
  dozen tokens. llama.cpp, which the bundled file comes from, rounds activations to 8-bit integers instead.
- The output layer (tied to the Q8_0 token embedding) is not packed to 4 bits: a 4-bit head would lose weight
  precision. The lean step (leanstep.py) reads a float16 copy of it, with the same FBGEMM product.
- Steps of two rows or more, and the lean step's prefills (a prompt's tokens are its rows), read a float16
  copy of the same layers instead, through FBGEMM's float16 product
  (`half_product`; float32 input and sums, where torch has FBGEMM: x86 builds): this kernel dequantizes per
  row, so its cost grows with the rows, while FBGEMM's reads its weights once per step. Float16 keeps 11
  significant bits of each weight, closer to the float32 weights than bfloat16 scales are. So a row's logits
  differ in the last bits between one-row and batched steps (as they do with BLAS's float32 products).

`mode` ([model] int4): "auto" packs only when every eligible layer is exactly 4-bit (a Q4_1 GGUF), on CPU, in
float32; "on" packs any model's layers (a real quantization: groups of 32, min/max scaled); "off" never packs.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

GROUP = 32
Mode = Literal["auto", "on", "off"]
_PREPARED: weakref.WeakKeyDictionary[Any, Int4Decode] = weakref.WeakKeyDictionary()  # model -> its packed layers


@dataclass
class Packed:
    """One Linear's packed int4 weight: `_weight_int4pack_mm_for_cpu` operands, and the weight version it matches."""

    weight: Any  # uint8 [N, K/2]
    scales_zeros: Any  # bfloat16 [K/32, N, 2]: w = (q - 8) * scale + zero
    version: int  # the float weight's `_version` when packed; a later in-place change makes this stale
    out_features: int


class Int4Decode:
    """The packed layers of one model, and the switch that routes decode steps through them."""

    def __init__(self, layers: dict[str, Any], exact: bool) -> None:
        self.layers = layers  # qualified name -> the Linear that has a packed copy
        self.exact = exact  # every packed layer reproduces its float weight exactly
        self.packed_calls = 0  # products read from the packed weights (tests and benchmarks read it)
        self._local = threading.local()
        for module in layers.values():
            module.forward = types.MethodType(_make_forward(self), module)

    @classmethod
    def prepare(cls, model: Any, mode: Mode) -> Int4Decode | None:
        """Pack `model`'s decoder Linear layers per `mode`; None when nothing is packed (or mode says no).

        Engines sharing one model share its packing (each decode thread switches it on for itself only).
        """
        if mode == "off" or not _supported(model):
            return None
        known = _PREPARED.get(model)
        if known is not None and (known.exact or mode == "on"):
            return known
        candidates = {name: module for name, module in _linears(model)}
        if not candidates:
            return None
        packed: dict[str, Packed] = {}
        exact = True
        for name, module in candidates.items():
            one, error = pack(module.weight)
            scale = float(module.weight.detach().abs().max()) or 1.0
            if error > 1e-6 * scale:
                exact = False
                if mode == "auto":
                    return None
            packed[name] = one
        for name, module in candidates.items():
            module._metagent_int4 = packed[name]
        prepared = cls(candidates, exact)
        _PREPARED[model] = prepared
        return prepared

    @property
    def on(self) -> bool:
        return bool(getattr(self._local, "on", False))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Forwards run in this thread inside the block read the packed weights (decode steps)."""
        before = self.on
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before


def describe(mode: Mode, model_path: str, device: str, dtype: str) -> str:
    """What `mode` will do for this model, without loading it (`metagent doctor`); device: "cpu" or "cuda"."""
    import torch

    if mode == "off":
        return "off ([model] int4)"
    if not _kernel_available():
        return f"unavailable: torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
    if device != "cpu":
        return f"off on {device} (a CPU kernel only)"
    if dtype not in ("auto", "float32"):
        return f"off: needs float32 weights, [model] dtype is {dtype}"
    if mode == "on":
        return "on: decode steps read every layer quantized to 4 bits at load"
    if not model_path:
        return "on: the bundled model's Q4_1 layers are exactly 4-bit"
    return "auto: on at load if every layer is exactly 4-bit (a Q4_1 GGUF), else off"


def pack(weight: Any) -> tuple[Packed, float]:
    """`weight` [N, K] as int4 groups of 32 along K (min/max affine), and the largest absolute error it makes."""
    import torch

    w = weight.detach().float()
    n, k = w.shape
    groups = w.reshape(n, k // GROUP, GROUP)
    low = groups.amin(dim=-1)
    high = groups.amax(dim=-1)
    scale = (high - low) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((groups - low[..., None]) / safe[..., None]).clamp_(0, 15)
    error = float(((q * scale[..., None] + low[..., None]) - groups).abs().max())
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(n, k).to(torch.int32), 1)
    zero = low + 8 * scale
    scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(torch.bfloat16)
    # bfloat16 scales are part of the kernel's contract; the error above is the int4 grid's alone
    return Packed(packed, scales_zeros, int(weight._version), n), error


def product(rows: Any, packed: Packed) -> Any:
    """rows [M, K] times the packed weight's transpose: [M, N] in rows' dtype (computed from bfloat16 input)."""
    import torch

    out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(torch.bfloat16), packed.weight, GROUP,
                                                      packed.scales_zeros)
    return out.to(rows.dtype)


def half_available() -> bool:
    """Whether FBGEMM's float16-weight product can pack now: an x86 build of torch, with the quantized engine
    left at FBGEMM or x86 (packing dispatches on it)."""
    import torch

    try:
        return ("fbgemm" in torch.backends.quantized.supported_engines
                and torch.backends.quantized.engine in ("fbgemm", "x86")
                and bool(torch.ops.quantized.linear_prepack_fp16 and torch.ops.quantized.linear_dynamic_fp16))
    except (AttributeError, RuntimeError):
        return False


def pack_half(weight: Any) -> Any:
    """`weight` [N, K] as FBGEMM's packed float16 matrix (an opaque object `half_product` reads)."""
    import torch

    # a copy: FBGEMM clamps values past float16's range in the tensor it is given, which could be the weight itself
    return torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous().clone(), None)


def half_product(rows: Any, packed: Any) -> Any:
    """rows [M, K] float32 times a `pack_half` matrix's transpose: [M, N] float32, summed in float32."""
    import torch

    return torch.ops.quantized.linear_dynamic_fp16(rows, packed)


def _make_forward(owner: Int4Decode) -> Any:
    import torch
    from torch.nn import functional

    def forward(self: Any, x: Any) -> Any:
        packed: Packed = self._metagent_int4
        if (not owner.on or x.dtype != torch.float32 or x.device.type != "cpu"
                or packed.version != self.weight._version):
            return functional.linear(x, self.weight, self.bias)
        owner.packed_calls += 1
        shape = x.shape
        out = product(x.reshape(-1, shape[-1]), packed).reshape(*shape[:-1], packed.out_features)
        return out if self.bias is None else out + self.bias

    return forward


def _kernel_available() -> bool:
    import torch

    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def _supported(model: Any) -> bool:
    import torch

    if not _kernel_available():
        return False
    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device.type == "cpu" and parameter.dtype == torch.float32


def _linears(model: Any) -> Iterator[tuple[str, Any]]:
    """The decoder's Linear layers the kernel takes (K a multiple of 32, N of 16); never the output layer."""
    from torch import nn

    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or module is head:
            continue
        n, k = module.weight.shape
        if k % GROUP == 0 and n % 16 == 0:
            yield name, module
