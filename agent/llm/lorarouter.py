"""LoraRouter: which LoRA adapter each row of a forward uses, and the batched LoRA product that serves it.

PEFT serves mixed batches through `adapter_names`, but its path is slow per decode step: `PeftModel`'s
forward-hook context walks every module and registers a hook on each LoRA layer for every forward (~40 ms a
step for the bundled 135M model on a busy 2-core machine), and each LoRA layer then runs a gather, two matmuls
and a scatter per distinct adapter in the batch (8 adapters = 8 times the LoRA work).

Here the hooks are registered once per LoRA layer, when an adapter loads, and read the current routing from
this object. Plain LoRA adapters (PEFT `Linear` layers, no DoRA or other variant, no LoRA bias) are stacked
per layer (slot 0 zeros for base rows, smaller ranks padded with zeros), the layer itself is told every row is
"__base__" (PEFT computes the base only), and the hook adds each row's LoRA output:

    one adapter for every row:  (x @ A[k]ᵀ) @ B[k]ᵀ * scale[k]
    several, up to DENSE_MAX_ADAPTERS loaded:  ((x @ [A_1ᵀ ... A_nᵀ]) * row_mask) @ [s_1 B_1 ; ... ; s_n B_n]
    more loaded:  per-row gathered weights, bmm(bmm(x, A[slot]ᵀ), B[slot]ᵀ) * scale[slot]

Other adapters (LoRA on embeddings, LoRA bias, modules_to_save) go through PEFT's own `adapter_names` path,
the whole batch with them. DoRA cannot be batched by adapter names at all (PEFT refuses): lora.py rejects it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


# Up to this many loaded plain adapters, a batch with several of them runs every loaded adapter's product on
# every row and masks out the other adapters' columns (3 dense ops per layer); beyond it, each row gathers its
# own adapter's weights (cost grows with the batch, not with the adapters loaded). Measured on the bundled
# model's q_proj shape, batch 8, 8 adapters of rank 16, one CPU thread: 0.23 ms dense against 0.80 ms gathered.
DENSE_MAX_ADAPTERS = 32


@dataclass
class _Stack:
    a: torch.Tensor  # [slots, rank, in]: slot 0 is zeros (base rows), ranks padded with zeros to `rank`
    b: torch.Tensor  # [slots, out, rank]
    scale: torch.Tensor  # [slots]
    a_cat: torch.Tensor  # [in, slots * rank]: every adapter's A side by side
    b_cat: torch.Tensor  # [slots * rank, out]: every adapter's B, scale folded in


class LoraRouter:
    """Routes rows to adapters in every LoRA layer of one PeftModel. Decode thread only."""

    def __init__(self) -> None:
        self._hooked: set[int] = set()
        self._stacks: dict[int, _Stack] = {}  # id(LoRA layer) -> its stacked plain adapters
        self._slots: dict[str, int] = {}  # plain adapter -> slot in every stack
        self._names: list[str] | None = None  # what PEFT's layers are told during this forward
        self._rows: Any = None  # per-row slots (a list), a single slot (int) for a uniform batch, or None
        self._rows_tensor: Any = None  # the per-row slots as a tensor, made by the first layer that needs it
        self._mask: Any = None  # [rows, 1, slots * rank]: 1 over each row's own adapter's columns
        self._rank = 0  # the largest rank of any loaded plain adapter in any layer

    def refresh(self, peft_model: Any) -> None:
        """Re-read the adapters after one was loaded or deleted: hooks on new layers, fresh stacks."""
        from peft.tuners.lora.layer import LoraLayer

        layers: list[Any] = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
        names = sorted(peft_model.peft_config)
        plain = [n for n in names if _is_plain(peft_model, layers, n)]
        self._slots = {name: i + 1 for i, name in enumerate(plain)}
        self._rank = max((layer.lora_A[n].weight.shape[0] for layer in layers for n in plain if n in layer.lora_A),
                         default=0)
        self._stacks = {}
        for layer in layers:
            if id(layer) not in self._hooked:
                layer.register_forward_pre_hook(self._before, with_kwargs=True)
                layer.register_forward_hook(self._after)
                self._hooked.add(id(layer))
            stack = _stack(layer, plain, self._rank)
            if stack is not None:
                self._stacks[id(layer)] = stack

    @contextmanager
    def route(self, names: Sequence[str]) -> Iterator[LoraRouter]:
        """Run the forward inside with row i under adapter names[i] (BASE for none); yields this router."""
        if all(n == BASE or n in self._slots for n in names):
            self._names = [BASE] * len(names)
            slots = [self._slots.get(n, 0) for n in names]
            self._rows = None if not any(slots) else slots[0] if len(set(slots)) == 1 else slots
        else:
            self._names, self._rows = list(names), None
        try:
            yield self
        finally:
            self._names, self._rows, self._rows_tensor, self._mask = None, None, None, None

    @property
    def serves_all(self) -> bool:
        """Inside `route`: every row's adapter is served by this router's stacks (PEFT computes only the base)."""
        return self._names is not None and all(n == BASE for n in self._names)

    @property
    def has_lora_rows(self) -> bool:
        """Inside `route`: some row has an adapter whose LoRA product this router adds."""
        return self._rows is not None

    def _before(self, module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        if self._names is None:
            return None
        kwargs["adapter_names"] = self._names
        return args, kwargs

    def _after(self, module: Any, args: Any, output: Any) -> Any:
        delta = self.delta(module, args[0])
        return None if delta is None else output + delta.to(output.dtype)

    def delta(self, module: Any, x: torch.Tensor) -> torch.Tensor | None:
        """What the routed rows' adapters add to LoRA layer `module`'s output for input `x`; None: nothing."""
        stack = self._stacks.get(id(module)) if self._rows is not None else None
        if stack is None:
            return None
        import torch

        x = x.to(stack.a.dtype)
        if isinstance(self._rows, int):
            k = self._rows
            delta = (x @ stack.a[k].T) @ stack.b[k].T * stack.scale[k]
        elif len(self._slots) <= DENSE_MAX_ADAPTERS:
            delta = ((x @ stack.a_cat) * self._row_mask(x)) @ stack.b_cat
        else:
            rows = self._row_tensor(x)
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            delta = torch.bmm(torch.bmm(flat, stack.a[rows].transpose(1, 2)), stack.b[rows].transpose(1, 2))
            delta = (delta * stack.scale[rows][:, None, None]).reshape(*x.shape[:-1], -1)
        return delta

    def _row_tensor(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self._rows_tensor is None:
            self._rows_tensor = torch.tensor(self._rows, device=x.device)
        return self._rows_tensor  # type: ignore[no-any-return]

    def _row_mask(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self._mask is None:
            slots = len(self._slots) + 1
            mask = torch.zeros((len(self._rows), slots, self._rank), dtype=x.dtype, device=x.device)
            mask[torch.arange(len(self._rows)), self._row_tensor(x)] = 1
            self._mask = mask.reshape(len(self._rows), *([1] * (x.dim() - 2)), slots * self._rank)
        return self._mask  # type: ignore[no-any-return]


def _is_plain(peft_model: Any, layers: list[Any], name: str) -> bool:
    """True when the gathered product computes exactly what PEFT computes for this adapter."""
    from peft.tuners.lora.layer import Linear

    config = peft_model.peft_config[name]
    if getattr(config, "modules_to_save", None):
        return False
    for layer in layers:
        if name in layer.lora_A or name in getattr(layer, "lora_embedding_A", {}):
            if type(layer) is not Linear or name in layer.lora_variant or layer.lora_bias.get(name):
                return False
    return True


def _stack(layer: Any, plain: list[str], rank: int) -> _Stack | None:
    import torch

    present = [n for n in plain if n in layer.lora_A]
    if not present:
        return None
    first = layer.lora_A[present[0]].weight
    dtype, device, slots = first.dtype, first.device, len(plain) + 1
    a = torch.zeros((slots, rank, layer.in_features), dtype=dtype, device=device)
    b = torch.zeros((slots, layer.out_features, rank), dtype=dtype, device=device)
    scale = torch.zeros(slots, dtype=dtype, device=device)
    for slot, name in enumerate(plain, start=1):
        if name in present:
            r = layer.lora_A[name].weight.shape[0]
            a[slot, :r] = layer.lora_A[name].weight.detach()
            b[slot, :, :r] = layer.lora_B[name].weight.detach()
            scale[slot] = float(layer.scaling[name])
    a_cat = a.reshape(slots * rank, layer.in_features).T.contiguous()
    b_cat = (b * scale[:, None, None]).permute(0, 2, 1).reshape(slots * rank, layer.out_features).contiguous()
    return _Stack(a, b, scale, a_cat, b_cat)
