"""4-bit decode weights (agent/llm/int4.py) and the cache layers that grow in place (batching.GrowingLayer)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import ModelSettings, Settings
from agent.doctor import report
from agent.llm.batching import KVBatch
from agent.llm.engine import TransformersLLM
from agent.llm.int4 import GROUP, Int4Decode, describe, pack
from agent.llm.prefixcache import PrefixCache
from tests.llm.conftest import TinyFactory
from tests.llm.test_batching import ask, batched, texts
from tests.llm.test_llm_adapters import make_lora
from tests.llm.test_llm_loading import tiny_model_dir, with_model


def route(names: Sequence[str]) -> Any:
    return nullcontext()


def four_bit(model: Any, seed: int = 0, float16_exact: bool = False) -> Any:
    """`model` with every decoder Linear weight replaced by exact 4-bit groups (w = d * q + m), as a Q4_1 GGUF's.

    `float16_exact`: d and m on a grid of 1/1024 and the head rounded to float16, so that float16 holds every
    weight exactly (its float16 copies are then the float32 weights).
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear and module is not head:
                n, k = module.weight.shape
                q = torch.randint(0, 16, (n, k // GROUP, GROUP), generator=generator).float()
                q[..., 0], q[..., -1] = 0, 15  # llama.cpp's Q4_1 maps each group's min to 0 and max to 15
                if float16_exact:  # |q * d + m| < 2048 units of 1/1024: 11 significant bits
                    d = torch.randint(5, 26, (n, k // GROUP, 1), generator=generator).float() / 1024
                    m = torch.randint(-200, -30, (n, k // GROUP, 1), generator=generator).float() / 1024
                else:
                    d = torch.rand((n, k // GROUP, 1), generator=generator) * 0.02 + 0.005
                    m = -7.5 * d + torch.randn((n, k // GROUP, 1), generator=generator) * 0.01
                module.weight.copy_((q * d + m).reshape(n, k))
        if float16_exact:
            head.weight.copy_(head.weight.half().float())  # tied: the token embedding too
    return model


def test_exact_four_bit_weights_pack_losslessly_and_auto_takes_them(tiny_model: TinyFactory) -> None:
    model = four_bit(tiny_model(0))
    packed = Int4Decode.prepare(model, "auto")
    assert packed is not None and packed.exact
    assert len(packed.layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers; never the head
    assert Int4Decode.prepare(model, "auto") is packed  # engines sharing a model share its packing
    _, error = pack(next(iter(packed.layers.values())).weight)
    assert error == 0.0


def test_auto_leaves_other_weights_alone_and_on_quantizes_them(tiny_model: TinyFactory) -> None:
    import torch

    assert Int4Decode.prepare(tiny_model(0), "auto") is None  # random float weights: packing would lose precision
    assert Int4Decode.prepare(four_bit(tiny_model(0)), "off") is None
    assert Int4Decode.prepare(four_bit(tiny_model(0)).to(torch.bfloat16), "on") is None  # float32 CPU only
    forced = Int4Decode.prepare(tiny_model(0), "on")
    assert forced is not None and not forced.exact


def test_packed_layers_compute_the_float_product_only_when_active(tiny_model: TinyFactory) -> None:
    import torch
    from torch.nn import functional

    model = four_bit(tiny_model(0))
    packed = Int4Decode.prepare(model, "auto")
    assert packed is not None
    layer = packed.layers["model.layers.0.mlp.down_proj"]
    x = torch.randn(3, 5, layer.in_features)
    exact = functional.linear(x, layer.weight)
    assert torch.equal(layer(x), exact)  # outside `active`: the float32 weights, untouched
    with packed.active():
        near = layer(x)
    assert near.dtype == torch.float32 and near.shape == exact.shape and not torch.equal(near, exact)
    assert torch.allclose(near, exact, rtol=0.02, atol=0.02 * float(exact.detach().abs().max()))  # bfloat16 activations
    with torch.no_grad():
        layer.weight.mul_(2)  # a weight changed in place: the packed copy is stale and is not used
    with packed.active():
        assert torch.equal(layer(x), functional.linear(x, layer.weight))


@pytest.mark.parametrize("lean", [False, True])
def test_int4_decode_rows_do_not_depend_on_their_batch(tiny_model: TinyFactory, tokenizer: Any, lean: bool) -> None:
    llm = TransformersLLM(four_bit(tiny_model(0)), tokenizer, constrained=False, prefix_cache_mb=0, lean_decode=lean)
    assert llm.int4 is not None and llm.int4.exact

    def packed_work() -> int:  # decode steps through the packed weights: the layers' own, or the lean step's
        return llm.lean.steps if llm.lean is not None and llm.lean.packed else llm.int4.packed_calls  # type: ignore

    first = [ask("Hi."), ask("Tell me a long story about the sea, please.", 20), ask("2+2?", 6)]
    late = [ask("Write a detailed essay about lighthouses and the storms they saw. " * 2, 10), ask("Yo.", 14)]
    alone = [llm.complete(r) for r in [*first, *late]]
    done = packed_work()
    assert done > 0
    assert texts(batched(llm, first, late)) == texts(alone)
    assert packed_work() > done


def test_int4_decode_with_adapters_in_one_batch(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path) -> None:
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    llm = TransformersLLM(four_bit(tiny_model(0)), tokenizer, adapters=paths, constrained=False, int4="auto")
    assert llm.int4 is not None
    requests = [ask(p, 10, adapter=a) for p in ("Say something.", "Hi.") for a in (None, "one", "two")]
    llm.max_batch = len(requests)
    alone = [llm.complete(r) for r in requests]
    assert len({alone[0].text, alone[1].text, alone[2].text}) == 3  # the adapters still change the output
    assert texts(batched(llm, requests)) == texts(alone)


def test_int4_setting_is_checked() -> None:
    assert ModelSettings().int4 == "auto"
    assert ModelSettings(int4="off").int4 == "off"
    with pytest.raises(ValidationError, match="int4"):
        ModelSettings(int4="fast")  # type: ignore[arg-type]


def test_loading_says_when_decode_reads_packed_layers(tiny_model: TinyFactory, tokenizer: Any, settings: Settings,
                                                      tmp_path: Path) -> None:
    folder = tiny_model_dir(tiny_model, tokenizer, tmp_path / "tiny")
    messages: list[str] = []
    llm = TransformersLLM.from_settings(with_model(settings, path=str(folder), int4="on"), progress=messages.append)
    assert llm.int4 is not None and "4-bit packed layers (quantized" in messages[-1]
    messages.clear()
    assert TransformersLLM.from_settings(with_model(settings, path=str(folder)), progress=messages.append).int4 is None
    assert not any("4-bit" in m for m in messages)  # auto: random float weights are not exactly 4-bit


def test_doctor_says_what_int4_will_do(settings: Settings) -> None:
    on_cpu = with_model(settings, device="cpu")
    assert report(on_cpu)["int4 decode"] == "on: the bundled model's Q4_1 layers are exactly 4-bit"
    assert report(with_model(on_cpu, int4="off"))["int4 decode"] == "off ([model] int4)"
    assert describe("auto", "/models/qwen", "cpu", "auto").startswith("auto: on at load if every layer")
    assert describe("on", "/models/qwen", "cpu", "float32").startswith("on: decode steps read every layer quantized")
    assert describe("auto", "", "cuda", "auto") == "off on cuda (a CPU kernel only)"
    assert describe("on", "", "cpu", "bfloat16") == "off: needs float32 weights, [model] dtype is bfloat16"


def test_growing_cache_never_writes_what_it_handed_out(tiny_model: TinyFactory) -> None:
    import torch

    model = tiny_model(1)
    prompt = list(range(300, 340))
    piece, _ = KVBatch.prefill(model, prompt, route, "__base__")
    kept = PrefixCache(2**30)
    kept.store("__base__", prompt, piece.layers)
    snapshot = [(k.clone(), v.clone()) for k, v in piece.layers]
    for token in range(10):  # steps write in place, past what the prefix cache holds
        piece.step([token], route, ["__base__"])
    hit = kept.lookup("__base__", prompt + [7])
    assert hit is not None and hit.tokens == len(prompt)
    assert all(torch.equal(k, sk) and torch.equal(v, sv) for (k, v), (sk, sv) in zip(hit.layers, snapshot, strict=True))
    # A prompt prefilled from the kept prefix writes its own buffer, not the kept one, and the batch that shares
    # the kept prefix's buffer still computes what a fresh prefill of its tokens computes.
    other, _ = KVBatch.prefill(model, prompt + [7, 8, 9], route, "__base__", hit)
    other.step([1], route, ["__base__"])
    assert all(torch.equal(k, sk) for (k, _), (sk, _) in zip(hit.layers, snapshot, strict=True))
    fresh, _ = KVBatch.prefill(model, prompt + list(range(10)), route, "__base__")
    assert torch.allclose(piece.step([4], route, ["__base__"]), fresh.step([4], route, ["__base__"]), atol=1e-5)


def test_growing_cache_has_room_after_a_step_and_is_exact_after_a_prefill(tiny_model: TinyFactory) -> None:
    piece, _ = KVBatch.prefill(tiny_model(1), list(range(100, 150)), route, "__base__")
    layer = piece.cache.layers[0]
    assert layer.keys.shape[-2] == 50 and layer.keys.untyped_storage().nbytes() == layer.keys.numel() * 4
    piece.step([5], route, ["__base__"])
    buffer = layer.keys.untyped_storage()
    piece.step([6], route, ["__base__"])
    assert layer.keys.shape[-2] == 52
    assert layer.keys.untyped_storage().data_ptr() == buffer.data_ptr()  # written in place, not concatenated
