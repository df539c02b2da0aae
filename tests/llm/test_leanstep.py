"""The lean decode step (agent/llm/leanstep.py) computes what transformers' forward computes, and steps aside
where it cannot."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import ModelSettings, Settings
from agent.doctor import report
from agent.llm.batching import KVBatch, Route
from agent.llm.engine import TransformersLLM
from agent.llm.int4 import Int4Decode, half_available
from agent.llm.leanstep import HALF_ROWS, LeanDecode, describe, products_of, supports
from agent.llm.lorarouter import BASE
from tests.llm.conftest import TinyFactory
from tests.llm.test_batching import ask, batched, texts
from tests.llm.test_int4 import four_bit
from tests.llm.test_int4 import route as no_adapters
from tests.llm.test_llm_adapters import make_lora
from tests.llm.test_llm_loading import with_model

PROMPTS = [list(range(300, 341)), list(range(500, 507)), list(range(900, 922))]  # different lengths: padding
SMALL: dict[str, Any] = {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2}  # tiny_model's shape, any family


def twin_steps(model: Any, lean: LeanDecode, route: Route = no_adapters, adapters: Sequence[str] = (BASE,) * 3,
               steps: int = 6, decoding: Any = nullcontext,
               prompts: Sequence[list[int]] = PROMPTS) -> Iterator[tuple[Any, Any]]:
    """The same rows merged into two batches, stepped together: (lean logits, transformers logits) per step.

    With three rows, row 0 leaves after the third step, so later steps run on a batch that dropped a row and
    trimmed padding.
    """
    def merged() -> KVBatch:
        batch: KVBatch | None = None
        for prompt, adapter in zip(prompts, adapters, strict=True):
            piece, _ = KVBatch.prefill(model, prompt, route, adapter)
            if batch is None:
                batch = piece
            else:
                batch.merge(piece)
        assert batch is not None
        return batch

    fast, slow = merged(), merged()
    names, tokens = list(adapters), [7] * len(adapters)
    for index in range(steps):
        with decoding():
            before = lean.steps
            mine = fast.step(tokens, route, names, lean)
            assert lean.steps == before + 1  # the lean step ran, not transformers' forward
            theirs = slow.step(tokens, route, names)
        yield mine, theirs
        tokens = [int(t) for t in theirs.argmax(-1)]
        if index == 2 and len(names) == 3:
            fast.keep([1, 2])
            slow.keep([1, 2])
            names, tokens = names[1:], tokens[1:]


def assert_close(mine: Any, theirs: Any, relative: float) -> None:
    import torch

    scale = float(theirs.abs().max())
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype == torch.float32
    assert float((mine - theirs).abs().max()) <= relative * scale


@pytest.mark.parametrize("attention", ["products", "sdpa"])
def test_lean_step_computes_what_transformers_computes(tiny_model: TinyFactory, monkeypatch: pytest.MonkeyPatch,
                                                       attention: str) -> None:
    from agent.llm import leanstep

    if attention == "sdpa":  # a context past the batched products' limit
        monkeypatch.setattr(leanstep, "MATMUL_ATTENTION_LENGTH", 0)
    model = tiny_model(3)
    lean = LeanDecode.build(model, None)
    assert lean is not None and not lean.packed
    pairs = list(twin_steps(model, lean))
    for mine, theirs in pairs:
        assert_close(mine, theirs, 1e-5)
    assert [tuple(m.shape) for m, _ in pairs] == [(3, 49152)] * 3 + [(2, 49152)] * 3


def test_lean_step_in_bfloat16(tiny_model: TinyFactory) -> None:
    import torch

    model = tiny_model(3).to(torch.bfloat16)  # the dtype of the CUDA path
    lean = LeanDecode.build(model, None)
    assert lean is not None
    for mine, theirs in twin_steps(model, lean):
        assert_close(mine, theirs, 1e-2)  # identical on this CPU; a bfloat16 step is 2^-8 relative


def test_lean_step_on_one_row_and_far_into_the_context(tiny_model: TinyFactory) -> None:
    model = tiny_model(4)
    lean = LeanDecode.build(model, None)
    assert lean is not None
    fast, _ = KVBatch.prefill(model, list(range(1000, 1500)), no_adapters, BASE)
    slow, _ = KVBatch.prefill(model, list(range(1000, 1500)), no_adapters, BASE)
    token = 3
    for _ in range(80):  # past the growing cache's first spare room (64 positions): the buffer moves
        mine = fast.step([token], no_adapters, [BASE], lean)
        theirs = slow.step([token], no_adapters, [BASE])
        assert_close(mine, theirs, 1e-5)
        token = int(theirs.argmax())


@pytest.mark.parametrize("packed", [False, True])
def test_qwen2_biases_are_added(packed: bool) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SMALL, tie_word_embeddings=True)
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.copy_(torch.randn_like(parameter))  # q, k, v biases; zero at init would hide a miss
    int4 = Int4Decode.prepare(four_bit(model), "auto") if packed else None
    lean = LeanDecode.build(model, int4)
    assert lean is not None and lean.packed == packed
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    # packed and batched: float16 weights against float32 (without FBGEMM: 4-bit layers on both sides)
    decoding = int4.active if int4 is not None and not half_available() else nullcontext
    for mine, theirs in twin_steps(model, lean, decoding=decoding):
        assert_close(mine, theirs, 1e-3 if packed else 1e-5)
    if int4 is not None:  # one row: 4-bit weights on both sides
        for mine, theirs in twin_steps(model, lean, adapters=[BASE], prompts=PROMPTS[:1], decoding=int4.active):
            assert_close(mine, theirs, 1e-3)


def test_mistral_without_a_sliding_window() -> None:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(6)
    model = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None)).eval()
    lean = LeanDecode.build(model, None)
    assert lean is not None
    for mine, theirs in twin_steps(model, lean):
        assert_close(mine, theirs, 1e-5)
    assert not supports(MistralForCausalLM(MistralConfig(**SMALL, sliding_window=16)))  # attends 16 back only


def test_fused_four_bit_products_match_the_packed_layers(tiny_model: TinyFactory) -> None:
    model = four_bit(tiny_model(0))
    int4 = Int4Decode.prepare(model, "auto")
    assert int4 is not None
    lean = LeanDecode.build(model, int4)
    assert lean is not None and lean.packed
    # one row: both sides read 4-bit weights with bfloat16 activations, q, k, v (and gate, up) fused or not
    for mine, theirs in twin_steps(model, lean, adapters=[BASE], prompts=PROMPTS[1:2], decoding=int4.active):
        assert mine.shape[0] == 1
        assert_close(mine, theirs, 1e-3)


def test_batched_packed_steps_read_float16_copies(tiny_model: TinyFactory) -> None:
    import torch

    model = four_bit(tiny_model(0))
    lean = packed_lean(model)
    assert HALF_ROWS <= 2
    products = products_of(lean)
    assert all(product.half is not None for product in products)  # made at build, not during the first prompt
    # float16 weights, float32 sums: within 1e-3 of the float32 weights (the 4-bit path is 3e-3 away)
    for mine, theirs in twin_steps(model, lean):
        assert mine.shape[0] >= HALF_ROWS
        assert_close(mine, theirs, 1e-3)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(-2.0)  # changed in place: the float16 head is made again
    for mine, theirs in twin_steps(model, lean, steps=2):
        assert_close(mine, theirs, 1e-3)
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"  # FBGEMM cannot pack under another engine: 4-bit and float32
    try:
        assert not half_available()
        int4 = Int4Decode.prepare(model, "auto")
        other = LeanDecode.build(model, int4)
        assert other is not None and int4 is not None
        for mine, theirs in twin_steps(model, other, steps=2, decoding=int4.active):
            assert_close(mine, theirs, 1e-3)
        assert all(product.half is None for product in products_of(other))
    finally:
        torch.backends.quantized.engine = engine


def test_a_weight_changed_after_packing_is_read_as_float(tiny_model: TinyFactory) -> None:
    import torch
    from torch.nn import functional

    model = four_bit(tiny_model(0))
    int4 = Int4Decode.prepare(model, "auto")
    lean = LeanDecode.build(model, int4)
    assert int4 is not None and lean is not None
    attention = model.model.layers[0].self_attn
    product = lean._layers[0].qkv
    x = torch.randn(2, 32)
    with torch.no_grad():
        attention.k_proj.weight.mul_(-4)
    expected = torch.cat([functional.linear(x, attention.q_proj.weight), functional.linear(x, attention.k_proj.weight),
                          functional.linear(x, attention.v_proj.weight)], dim=-1)
    assert not product.current()
    assert torch.equal(product(x, None, fresh=False), expected)
    other = lean._layers[1].qkv  # its weights did not move: it still reads its packed copy
    attention = model.model.layers[1].self_attn
    floats = torch.cat([functional.linear(x, attention.q_proj.weight), functional.linear(x, attention.k_proj.weight),
                        functional.linear(x, attention.v_proj.weight)], dim=-1)
    assert other.current() and not torch.equal(other(x, None, fresh=False), floats)
    for mine, theirs in twin_steps(model, lean, decoding=int4.active):  # the step notices it too
        assert_close(mine, theirs, 2e-2)  # bfloat16 on one side (q, v), float32 on the other


def half_exact(model: Any) -> Any:
    """A 4-bit `model` whose float16 copies are its weights, so the packed prefill can be held to transformers'
    forward within rounding."""
    return four_bit(model, seed=5, float16_exact=True)


def packed_lean(model: Any) -> LeanDecode:
    lean = LeanDecode.build(model, Int4Decode.prepare(model, "auto"))
    assert lean is not None and lean.packed
    if not half_available():
        pytest.skip("this torch has no FBGEMM (not an x86 build)")
    return lean


def test_packed_prefill_runs_lean_and_computes_what_transformers_computes(tiny_model: TinyFactory) -> None:
    import torch

    from agent.llm.prefixcache import Hit

    model = half_exact(tiny_model(0))
    lean = packed_lean(model)
    for prompt in [*PROMPTS, [5]]:
        alone, want = KVBatch.prefill(model, prompt, no_adapters, BASE)
        for tokens in sorted({0, len(prompt) // 2, len(prompt) - 1}):  # past cached prefixes of these lengths
            hit = Hit(tokens, tuple((k[:, :, :tokens], v[:, :, :tokens]) for k, v in alone.layers)) if tokens else None
            before = lean.prefills
            mine, logits = KVBatch.prefill(model, prompt, no_adapters, BASE, hit, lean)
            assert lean.prefills == before + 1  # the lean prefill ran, not transformers' forward
            # one new token reads the 4-bit weights with bfloat16 input, as a one-row step does
            close = 1e-5 if len(prompt) - tokens >= HALF_ROWS else 1e-2
            assert_close(logits, want, close)
            assert mine.mask.shape == (1, len(prompt)) and int(mine.positions[0]) == len(prompt)
            for (keys, values), (k, v) in zip(mine.layers, alone.layers, strict=True):
                assert keys.shape == k.shape and torch.allclose(keys, k, atol=close)
                assert torch.allclose(values, v, atol=close)
            again, _ = KVBatch.prefill(model, prompt, no_adapters, BASE)  # (a step grows the cache in place)
            assert_close(mine.step([9], no_adapters, [BASE]), again.step([9], no_adapters, [BASE]), close)
    rounded = four_bit(tiny_model(0))  # weights that float16 rounds (11 significant bits): 1e-3 apart here
    mine, logits = KVBatch.prefill(rounded, PROMPTS[0], no_adapters, BASE, lean=packed_lean(rounded))
    assert_close(logits, KVBatch.prefill(rounded, PROMPTS[0], no_adapters, BASE)[1], 5e-3)


def test_prompts_prefilled_together_by_the_lean_prefill_get_what_they_get_alone(tiny_model: TinyFactory) -> None:
    import torch

    from agent.llm.prefixcache import Hit

    model = half_exact(tiny_model(0))
    lean = packed_lean(model)
    prompts = [list(range(100, 131)), [1, 5, 9], list(range(300, 320)), list(range(100, 112)) + [7, 8]]
    alone = [KVBatch.prefill(model, prompt, no_adapters, BASE) for prompt in prompts]

    def hit(row: int, tokens: int) -> Hit:
        return Hit(tokens, tuple((k[:, :, :tokens], v[:, :, :tokens]) for k, v in alone[row][0].layers))

    for hits in ([None] * 4, [hit(0, 25), None, hit(2, 6), hit(0, 12)]):
        together = KVBatch.prefill_many(model, prompts, no_adapters, [BASE] * 4, hits, lean)
        for (piece, logits), (single, want) in zip(together, alone, strict=True):
            assert_close(logits, want, 1e-5)
            assert piece.mask.shape == single.mask.shape and piece.mask.all()
            for (keys, values), (k, v) in zip(piece.layers, single.layers, strict=True):
                assert keys.shape == k.shape and torch.allclose(keys, k, atol=1e-5)
                assert torch.allclose(values, v, atol=1e-5)
    assert lean.prefills == 2


def test_a_packed_engine_prefills_through_the_lean_step(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(half_exact(tiny_model(0)), tokenizer, constrained=False, prefix_cache_mb=0)
    lean = llm.lean
    assert lean is not None and lean.packed
    if not half_available():
        pytest.skip("this torch has no FBGEMM (not an x86 build)")
    requests = [ask("Hi.", 6), ask("Tell me a long story about the sea, please.", 7), ask("2+2?", 8)]
    before = lean.prefills
    through_lean = [llm.complete(r) for r in requests]
    assert lean.prefills - before == 3
    llm.scheduler.lean_prefill = False  # (the benchmark's comparison)
    through_transformers = [llm.complete(r) for r in requests]
    assert lean.prefills - before == 3
    assert texts(through_lean) == texts(through_transformers)
    llm.scheduler.lean_prefill = True
    prefills = llm.scheduler.prefills
    assert all(not isinstance(reply, Exception) for reply in batched(llm, requests))
    # the first alone (held at the gate, which counts lean prefills as forwards), then the other two together
    assert llm.scheduler.prefills - prefills == 2 and lean.prefills - before == 5


def test_the_lean_prefill_serves_packed_cpu_models_only(tiny_model: TinyFactory) -> None:
    import torch

    model = tiny_model(0)
    lean = LeanDecode.build(model, None)  # float weights: transformers' prefill, whose products are the same
    assert lean is not None and not lean.packed
    mine, logits = KVBatch.prefill(model, PROMPTS[0], no_adapters, BASE, lean=lean)
    assert lean.prefills == 0
    assert torch.equal(logits, KVBatch.prefill(model, PROMPTS[0], no_adapters, BASE)[1])
    packed = four_bit(tiny_model(0))
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"  # no FBGEMM float16 copies: the 4-bit kernel per row would be slow
    try:
        other = LeanDecode.build(packed, Int4Decode.prepare(packed, "auto"))
        assert other is not None and other.packed and not half_available()
        _, logits = KVBatch.prefill(packed, PROMPTS[0], no_adapters, BASE, lean=other)
        assert other.prefills == 0
        assert torch.equal(logits, KVBatch.prefill(packed, PROMPTS[0], no_adapters, BASE)[1])
    finally:
        torch.backends.quantized.engine = engine


@pytest.mark.parametrize("products", ["dense", "gathered"])  # the router's two mixed-batch products
def test_lean_prefill_adds_each_rows_adapter(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, products: str) -> None:
    from agent.llm import lorarouter

    if products == "gathered":
        monkeypatch.setattr(lorarouter, "DENSE_MAX_ADAPTERS", 0)
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    llm = TransformersLLM(half_exact(tiny_model(0)), tokenizer, adapters=paths, constrained=False)
    lean, lora = llm.lean, llm._lora
    assert lean is not None and lean.packed
    if not half_available():
        pytest.skip("this torch has no FBGEMM (not an x86 build)")
    names = [BASE, lora.resolve("one"), lora.resolve("two")]
    alone = [KVBatch.prefill(llm.model, prompt, lora.route, name)[1]
             for prompt, name in zip(PROMPTS, names, strict=True)]
    for name, prompt, want in zip(names, PROMPTS, alone, strict=True):  # one row, its adapter
        assert_close(KVBatch.prefill(llm.model, prompt, lora.route, name, lean=lean)[1], want, 1e-5)
    together = KVBatch.prefill_many(llm.model, PROMPTS, lora.route, names, [None] * 3, lean)  # rows mixed
    for (_, logits), want in zip(together, alone, strict=True):
        assert_close(logits, want, 1e-5)
    assert lean.prefills == 4
    base = KVBatch.prefill(llm.model, PROMPTS[1], lora.route, BASE)[1]
    assert float((alone[1] - base).abs().max()) > 1e-3  # the adapter did change the row


def test_mixed_adapter_rows_get_their_own_lora(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path) -> None:
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    llm = TransformersLLM(tiny_model(0), tokenizer, adapters=paths, constrained=False, int4="off")
    assert llm.lean is not None
    lora = llm._lora
    names = [BASE, lora.resolve("one"), lora.resolve("two")]
    pairs = list(twin_steps(llm.model, llm.lean, lora.route, names))
    for mine, theirs in pairs:
        assert_close(mine, theirs, 1e-5)
    base_only = next(twin_steps(llm.model, llm.lean, lora.route, [BASE] * 3))[0]
    assert float((pairs[0][0][1] - base_only[1]).abs().max()) > 1e-3  # the adapter rows did change


def test_adapters_the_router_cannot_serve_take_transformers_forward(tiny_model: TinyFactory, tokenizer: Any,
                                                                   tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(0), LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.copy_(torch.randn_like(parameter))
    peft_model.save_pretrained(str(tmp_path / "emb"))
    llm = TransformersLLM(tiny_model(0), tokenizer, adapters={"emb": tmp_path / "emb"}, constrained=False)
    assert llm.lean is not None
    internal = llm._lora.resolve("emb")
    batch, _ = KVBatch.prefill(llm.model, PROMPTS[0], llm._lora.route, internal)
    reference, _ = KVBatch.prefill(llm.model, PROMPTS[0], llm._lora.route, internal)
    before = llm.lean.steps
    mine = batch.step([7], llm._lora.route, [internal], llm.lean)
    assert llm.lean.steps == before  # LoRA on the embedding: PEFT's own path, through transformers' forward
    assert torch.equal(mine, reference.step([7], llm._lora.route, [internal]))


def test_lora_layers_injected_outside_the_engine_take_transformers_forward(tiny_model: TinyFactory,
                                                                         tokenizer: Any) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    assert llm.lean is not None
    before = llm.complete(ask("Hi.", 12)).text
    steps = llm.lean.steps
    assert steps > 0
    trained = get_peft_model(llm.model, LoraConfig(r=4, target_modules="all-linear"))  # as a training run does
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter))
    during = llm.complete(ask("Hi.", 12)).text
    assert llm.lean.steps == steps  # the lean step would ignore the injected LoRA: it steps aside
    plain = TransformersLLM(llm.model, tokenizer, constrained=False, prefix_cache_mb=0, lean_decode=False)
    assert during == plain.complete(ask("Hi.", 12)).text != before
    trained.unload()
    assert llm.complete(ask("Hi.", 12)).text == before and llm.lean.steps > steps


def test_engine_replies_are_the_same_with_and_without_the_lean_step(tiny_model: TinyFactory, tokenizer: Any) -> None:
    lean = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    plain = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0, lean_decode=False)
    assert lean.lean is not None and plain.lean is None
    requests = [ask("Hi.", 16), ask("Tell me a long story about the sea, please.", 20), ask("2+2?", 8)]
    alone = [plain.complete(r) for r in requests]
    steps = lean.lean.steps
    assert texts(batched(lean, requests)) == texts(alone)
    assert lean.lean.steps > steps


def test_models_it_does_not_reproduce_are_left_to_transformers(tiny_model: TinyFactory) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    assert supports(tiny_model(0))
    dynamic = LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                       "rope_theta": 10000.0}))
    assert not supports(dynamic)  # its rotary table changes with the length
    assert not supports(LlamaForCausalLM(LlamaConfig(**SMALL, hidden_act="gelu")))
    assert LeanDecode.build(Qwen3ForCausalLM(Qwen3Config(**SMALL)), None) is None  # q/k norms: not Llama's layer


def test_lean_decode_setting() -> None:
    assert ModelSettings().lean_decode is True
    assert ModelSettings(lean_decode=False).lean_decode is False
    with pytest.raises(ValidationError, match="lean_decode"):
        ModelSettings(lean_decode="sometimes")  # type: ignore[arg-type]


def test_doctor_says_which_forward_decode_steps_run(settings: Settings, tmp_path: Path) -> None:
    assert report(settings)["decode step"] == "lean (the bundled model is a Llama)"
    assert report(with_model(settings, lean_decode=False))["decode step"] == (
        "transformers' forward ([model] lean_decode = false)")
    (tmp_path / "gemma").mkdir()
    (tmp_path / "gemma" / "config.json").write_text('{"model_type": "gemma"}')
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text('{"model_type": "qwen2"}')
    assert describe(True, str(tmp_path / "gemma")) == (
        "transformers' forward (gemma is not one of llama, mistral, qwen2)")
    assert describe(True, str(tmp_path / "qwen")).startswith("lean at load for qwen2 models")
    assert describe(True, str(tmp_path / "model.gguf")).startswith("lean at load for llama, mistral, qwen2 models")


def test_the_transposed_output_layer_follows_its_weight(tiny_model: TinyFactory) -> None:
    import torch

    from agent.llm import leanstep

    model = tiny_model(4)
    lean = LeanDecode.build(model, None)
    assert lean is not None and leanstep.COLUMN_HEAD_ROWS >= 1
    fast, _ = KVBatch.prefill(model, PROMPTS[1], no_adapters, BASE)
    slow, _ = KVBatch.prefill(model, PROMPTS[1], no_adapters, BASE)
    assert_close(fast.step([3], no_adapters, [BASE], lean), slow.step([3], no_adapters, [BASE]), 1e-5)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(-2.0)  # changed in place, as training might
    mine, theirs = fast.step([4], no_adapters, [BASE], lean), slow.step([4], no_adapters, [BASE])
    assert_close(mine, theirs, 1e-5)
