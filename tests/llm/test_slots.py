"""The static slot cache (agent/llm/slots.py) decodes what transformers decodes, and hands rows it cannot hold to
a KVBatch without losing any.

CUDA graphs exist only on a GPU: here `Rerun` stands in for the capture. It runs the step twice at capture (the
warm-up and the capture both really run) and again at each replay, so these tests check that running a step
more than once on the same inputs changes nothing, that graphs are kept per bucket, and the plumbing around
them. The CUDA tests at the end run the real capture where a GPU is present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import ModelSettings, Settings
from agent.doctor import report
from agent.llm.batching import KVBatch, Route
from agent.llm.engine import TransformersLLM
from agent.llm.leanstep import LeanDecode
from agent.llm.lorarouter import BASE
from agent.llm.slots import SlotBatch, SlotCache, describe
from agent.types import Constraint
from tests.llm.conftest import TinyFactory
from tests.llm.test_batching import ask, batched, harbour, texts
from tests.llm.test_int4 import route as no_adapters
from tests.llm.test_leanstep import PROMPTS, assert_close
from tests.llm.test_llm_adapters import make_lora
from tests.llm.test_llm_engine import LOOKUP, SEARCH, WEATHER, assert_valid_calls

# Row 1 (250 tokens) crosses 256 positions at the 7th step; row 0 leaves after the 2nd. Graphs: 3 rows (bucket
# 4) over 256 positions, then 2 rows over 256, then over 512.
LONG = [list(range(500, 507)), list(range(300, 550)), list(range(900, 922))]
BUCKETS = [(2, 256), (2, 512), (4, 256)]
CUDA = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")


class Rerun:
    """The CPU's stand-in for `slots.cuda_graph` (see the module docstring)."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, body: Callable[[], None], pool: Any) -> tuple[Any, Any]:
        body()  # the warm-up
        body()  # the capture
        self.captures += 1
        return _Replayer(body), pool if pool is not None else object()


class _Replayer:
    def __init__(self, body: Callable[[], None]) -> None:
        self.replay = body


def slot_cache(model: Any, tokens: int = 1024, capture: Any = None, lean: LeanDecode | None = None) -> SlotCache:
    lean = lean or LeanDecode.build(model, None)
    assert lean is not None
    return SlotCache(model, lean, tokens, capture)


def twin_steps(model: Any, slots: SlotCache, prompts: Sequence[list[int]] = PROMPTS, steps: int = 6,
               route: Route = no_adapters, adapters: Sequence[str] | None = None, rows: int = 4,
               drop_after: int = 2) -> Iterator[tuple[Any, Any, SlotBatch]]:
    """The same rows in a SlotBatch and a transformers KVBatch, stepped together: (slot logits, transformers
    logits, the slot batch) per step. Row 0 leaves after step `drop_after`, so the others move down a slot."""
    names = list(adapters or [BASE] * len(prompts))
    pieces = [KVBatch.prefill(model, p, route, a) for p, a in zip(prompts, names, strict=True)]
    mine = SlotBatch.start(slots, pieces[0][0], rows)
    assert isinstance(mine, SlotBatch)
    theirs = KVBatch.prefill(model, prompts[0], route, names[0])[0]
    for prompt, name, (piece, _) in zip(prompts[1:], names[1:], pieces[1:], strict=True):
        mine.merge(piece)
        theirs.merge(KVBatch.prefill(model, prompt, route, name)[0])
    tokens = [7] * len(prompts)
    for index in range(steps):
        fast = mine.step(tokens, route, names)
        slow = theirs.step(tokens, route, names)
        yield fast, slow, mine
        tokens = [int(t) for t in slow.argmax(-1)]
        if index == drop_after and len(names) > 1:
            mine.keep(list(range(1, len(names))))
            theirs.keep(list(range(1, len(names))))
            names, tokens = names[1:], tokens[1:]


def test_slot_steps_compute_what_transformers_computes(tiny_model: TinyFactory) -> None:
    model = tiny_model(3)
    slots = slot_cache(model)
    steps = list(twin_steps(model, slots))
    for mine, theirs, _ in steps:
        assert_close(mine, theirs, 1e-5)
    assert [tuple(m.shape) for m, _, _ in steps] == [(3, 49152)] * 3 + [(2, 49152)] * 3
    batch = steps[-1][2]
    assert batch.demoted is None and batch.lengths == [len(PROMPTS[1]) + 6, len(PROMPTS[2]) + 6]
    assert slots.in_use and slots.rows == 4 and slots.replays == 0  # no capture given: eager steps
    batch.close()
    assert not slots.in_use


def test_replayed_steps_give_the_same_logits_and_one_graph_per_bucket(tiny_model: TinyFactory) -> None:
    model = tiny_model(3)
    capture = Rerun()
    slots = slot_cache(model, capture=capture)
    for mine, theirs, _ in twin_steps(model, slots, LONG, steps=12, drop_after=1):
        assert_close(mine, theirs, 1e-5)
    assert slots.replays == 12
    assert sorted(slots._graphs) == BUCKETS and capture.captures == 3


def test_long_rows_go_to_a_kv_batch_and_the_rest_come_back(tiny_model: TinyFactory) -> None:
    model = tiny_model(3)
    slots = slot_cache(model, tokens=48)  # PROMPTS[0] has 41 tokens: it reaches the end of its slot at step 7
    where: list[str] = []
    for index, (mine, theirs, batch) in enumerate(twin_steps(model, slots, steps=12, drop_after=8)):
        assert_close(mine, theirs, 1e-5)
        where.append("kv" if batch.demoted is not None else "slots")
        assert slots.in_use == (batch.demoted is None)
        assert tuple(mine.shape) == ((3 if index <= 8 else 2), 49152)
    # steps 0-6 in the slots, 7-8 in a KVBatch, and back once the long row has left
    assert where == ["slots"] * 7 + ["kv"] * 2 + ["slots"] * 3


def test_full_slots_and_prompts_as_long_as_a_slot_go_to_a_kv_batch(tiny_model: TinyFactory) -> None:
    model = tiny_model(3)
    # a newcomer when every slot is taken (max_batch raised since the slots were made) demotes the batch too
    slots = slot_cache(model)
    full = SlotBatch.start(slots, KVBatch.prefill(model, PROMPTS[1], no_adapters, BASE)[0], 1)
    assert isinstance(full, SlotBatch)
    full.merge(KVBatch.prefill(model, PROMPTS[2], no_adapters, BASE)[0])
    assert full.demoted is not None and full.size == 2 and not slots.in_use
    reference = KVBatch.prefill(model, PROMPTS[1], no_adapters, BASE)[0]
    reference.merge(KVBatch.prefill(model, PROMPTS[2], no_adapters, BASE)[0])
    assert_close(full.step([5, 6], no_adapters, [BASE] * 2), reference.step([5, 6], no_adapters, [BASE] * 2), 1e-5)
    # a first prompt that fills a slot never takes the slots (nor leaves them taken)
    short = slot_cache(model, tokens=41)
    piece = KVBatch.prefill(model, PROMPTS[0], no_adapters, BASE)[0]  # 41 tokens
    assert SlotBatch.start(short, piece, 4) is piece and not short.in_use and short.rows == 0


def test_rows_kept_out_of_order_move_to_their_new_slots(tiny_model: TinyFactory) -> None:
    model = tiny_model(3)
    steps = twin_steps(model, slot_cache(model), steps=1)
    mine, theirs, batch = next(steps)
    reference = KVBatch.prefill(model, PROMPTS[0], no_adapters, BASE)[0]
    for prompt in PROMPTS[1:]:
        reference.merge(KVBatch.prefill(model, prompt, no_adapters, BASE)[0])
    reference.step([7] * 3, no_adapters, [BASE] * 3)
    batch.keep([2, 0])
    reference.keep([2, 0])
    assert batch.lengths == [len(PROMPTS[2]) + 1, len(PROMPTS[0]) + 1]
    assert_close(batch.step([5, 6], no_adapters, [BASE] * 2), reference.step([5, 6], no_adapters, [BASE] * 2), 1e-5)


def test_a_step_that_cannot_be_captured_runs_eagerly_from_then_on(tiny_model: TinyFactory,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    def broken(body: Callable[[], None], pool: Any) -> tuple[Any, Any]:
        raise RuntimeError("operation not permitted when stream is capturing")

    model = tiny_model(3)
    slots = slot_cache(model, capture=broken)
    for mine, theirs, _ in twin_steps(model, slots, steps=4):
        assert_close(mine, theirs, 1e-5)
    assert slots.capture is None and slots.replays == 0 and slots._graphs == {}
    assert "decode steps run eagerly from now on" in caplog.text


def test_slots_in_use_or_too_big_leave_the_batch_to_kv_batch(tiny_model: TinyFactory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = tiny_model(3)
    slots = slot_cache(model)
    piece = KVBatch.prefill(model, PROMPTS[1], no_adapters, BASE)[0]
    first = SlotBatch.start(slots, piece, 4)
    assert isinstance(first, SlotBatch)
    assert SlotBatch.start(slots, piece, 4) is piece  # the slots are taken: the second batch is a plain one

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    fresh = slot_cache(model)
    monkeypatch.setattr(torch, "zeros", no_memory)
    assert SlotBatch.start(fresh, piece, 4) is piece
    assert "does not fit" in fresh.unavailable and fresh.keys == [] and fresh.rows == 0


def test_mixed_adapter_rows_step_eagerly_with_their_lora(tiny_model: TinyFactory, tokenizer: Any,
                                                         tmp_path: Path) -> None:
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    llm = TransformersLLM(tiny_model(0), tokenizer, adapters=paths, constrained=False, int4="off")
    lora = llm._lora
    names = [BASE, lora.resolve("one"), lora.resolve("two")]
    slots = slot_cache(llm.model, capture=Rerun(), lean=llm.lean)
    steps = list(twin_steps(llm.model, slots, route=lora.route, adapters=names))
    for mine, theirs, _ in steps:
        assert_close(mine, theirs, 1e-5)
    assert slots.replays == 0  # LoRA rows: the step runs eagerly, with the router's per-row products
    base = slot_cache(llm.model, capture=Rerun(), lean=llm.lean)
    for mine, theirs, _ in twin_steps(llm.model, base, route=lora.route, adapters=[BASE] * 3, steps=2):
        assert_close(mine, theirs, 1e-5)
    assert base.replays == 2  # adapters loaded, base rows only: replayed


def test_steps_only_transformers_serves_demote_the_batch(tiny_model: TinyFactory, tokenizer: Any) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model = tiny_model(0)
    slots = slot_cache(model, capture=Rerun())
    batch = SlotBatch.start(slots, KVBatch.prefill(model, PROMPTS[2], no_adapters, BASE)[0], 4)
    reference = KVBatch.prefill(model, PROMPTS[2], no_adapters, BASE)[0]
    assert isinstance(batch, SlotBatch)
    assert_close(batch.step([7], no_adapters, [BASE]), reference.step([7], no_adapters, [BASE]), 1e-5)
    trained = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))  # as a training run does
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter))
    mine = batch.step([8], no_adapters, [BASE])
    assert batch.demoted is not None  # the lean step would skip the injected LoRA
    # (close, not equal: the step-7 keys in the slots came from the lean step's fused products)
    assert_close(mine, reference.step([8], no_adapters, [BASE]), 1e-5)


def test_slot_steps_in_bfloat16(tiny_model: TinyFactory) -> None:
    import torch

    model = tiny_model(3).to(torch.bfloat16)  # the dtype of the CUDA path
    for mine, theirs, _ in twin_steps(model, slot_cache(model, capture=Rerun())):
        assert_close(mine, theirs, 1e-2)


def test_engine_replies_are_the_same_through_the_slots(tiny_model: TinyFactory, tokenizer: Any) -> None:
    plain = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0, lean_decode=False)
    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False)
    assert llm.scheduler.slots is None  # a CPU model: no slots unless given
    assert llm.lean is not None
    slots = llm.scheduler.slots = SlotCache(llm.model, llm.lean, 256, Rerun())
    first = [ask("Hi.", 16), ask("Tell me a long story about the sea, please.", 20), ask("2+2?", 8)]
    late = [ask("Write a detailed essay about lighthouses and their keepers. " * 3, 10), ask("Yo.", 14)]
    alone = [plain.complete(r) for r in [*first, *late]]
    assert texts(batched(llm, first, late)) == texts(alone)
    assert slots.replays > 0 and not slots.in_use  # the batch ended: its slots are free
    assert texts([llm.complete(r) for r in first]) == texts(alone[:3])
    # a first prompt longer than a slot decodes in a KVBatch and leaves the slots free for the next batch
    long = ask("Sort these: " + ", ".join(str(n * 7919 % 1000) for n in range(150)), 6)
    assert len(llm.prompt_ids(long)) > 256
    replays = slots.replays
    assert llm.complete(long).text == plain.complete(long).text
    assert slots.replays == replays and not slots.in_use
    assert llm.complete(first[0]).text == alone[0].text and slots.replays > replays


def test_prompts_that_share_a_start_join_the_slots_as_alone(tiny_model: TinyFactory, tokenizer: Any) -> None:
    plain = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0, lean_decode=False)
    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    slots = llm.scheduler.slots = SlotCache(llm.model, llm.lean, 256, Rerun())
    requests = [ask("Hi.", 6), harbour("Which ships came in today?", 12), harbour("Yo.", 9),
                harbour("Is the tide high tonight?", 10)]
    alone = [plain.complete(r) for r in requests]
    assert texts(batched(llm, requests)) == texts(alone)
    assert llm.scheduler.shared_prefills == 1 and slots.replays > 0


def test_constrained_requests_through_the_slots(tiny_model: TinyFactory, tokenizer: Any) -> None:
    """Tool calls and choices decode through the slots, with the grammar masks computed during the step (the
    GPU's way), as they decode through transformers' forward."""
    llm = TransformersLLM(tiny_model(3), tokenizer)
    assert llm.lean is not None
    slots = llm.scheduler.slots = SlotCache(llm.model, llm.lean, 1024, Rerun())
    llm.scheduler.overlap = True
    reference = TransformersLLM(tiny_model(3), tokenizer, lean_decode=False)
    requests = [ask("Call something.", 1000, tools=(LOOKUP,), tool_choice="required"),
                ask("Call something else.", 1000, tools=(WEATHER, SEARCH), tool_choice="required"),
                ask("Pick one.", 20, constraint=Constraint(choices=("math", "chit-chat", "search the web")))]
    replies = batched(llm, requests)
    alone = [reference.complete(r) for r in requests]
    assert texts(replies) == texts(alone)
    assert_valid_calls(replies[0], (LOOKUP,))  # type: ignore[arg-type]
    assert [r.usage for r in replies] == [r.usage for r in alone]  # type: ignore[union-attr]
    assert slots.replays > 0 and not slots.in_use


def test_settings_and_where_slots_are_made(tiny_model: TinyFactory, settings: Settings) -> None:
    import torch

    assert ModelSettings().cuda_graphs is True and ModelSettings().graph_tokens == 4096
    with pytest.raises(ValidationError, match="graph_tokens"):
        ModelSettings(graph_tokens=16)
    model = tiny_model(0)
    lean = LeanDecode.build(model, None)
    assert SlotCache.for_model(model, lean, 4096, graphs=True) is None  # CPU: no graphs to replay
    assert SlotCache.for_model(model, None, 4096, graphs=True) is None
    assert report(settings)["CUDA graphs"] == ("not used (decode runs on cpu)" if not torch.cuda.is_available() else
                                               describe(True, "cuda", 8, 4096))
    assert describe(False, "cuda", 8, 4096) == "off ([model] cuda_graphs = false): eager decode steps"
    assert describe(True, "cuda:0", 16, 2048).startswith("on where the decode step is lean: a static KV cache of "
                                                         "16 rows x 2048 positions")


@CUDA
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_replays_match_transformers(tiny_model: TinyFactory, dtype: str) -> None:
    import torch

    model = tiny_model(3).to("cuda", getattr(torch, dtype))
    lean = LeanDecode.build(model, None)
    slots = SlotCache.for_model(model, lean, 1024, graphs=True)
    assert slots is not None
    for mine, theirs, _ in twin_steps(model, slots, LONG, steps=12, drop_after=1):
        assert_close(mine, theirs, 1e-4 if dtype == "float32" else 2e-2)
    assert slots.replays == 12 and sorted(slots._graphs) == BUCKETS


@CUDA
def test_cuda_engine_replies_are_the_same_with_and_without_graphs(tiny_model: TinyFactory, tokenizer: Any) -> None:
    model = tiny_model(0).to("cuda")
    graphed = TransformersLLM(model, tokenizer, constrained=False)
    eager = TransformersLLM(model, tokenizer, constrained=False, cuda_graphs=False)
    assert graphed.scheduler.slots is not None and eager.scheduler.slots is None
    requests = [ask("Hi.", 16), ask("Tell me a long story about the sea, please.", 20), ask("2+2?", 8)]
    alone = [eager.complete(r) for r in requests]
    assert texts(batched(graphed, requests)) == texts(alone)
    assert graphed.scheduler.slots.replays > 0
    # prompts that share a start, which a GPU shares only past SHARED_PREFIX_MIN_TOKENS_GPU spared positions
    assert graphed.scheduler.share_min_tokens == 256
    graphed.scheduler.share_min_tokens = 1
    harbours = [ask("Hi.", 6), harbour("Which ships came in today?", 12), harbour("Yo.", 9)]
    alone = [eager.complete(r) for r in harbours]
    assert texts(batched(graphed, harbours)) == texts(alone)
    assert graphed.scheduler.shared_prefills == 1


@CUDA
def test_cuda_graph_replays_far_into_the_context(tiny_model: TinyFactory) -> None:
    """Attended lengths of 2048 and 4096 (the kernels SDPA picks for long masked keys differ from short ones)."""
    import torch

    model = tiny_model(3, max_positions=8192).to("cuda", torch.bfloat16)
    slots = SlotCache.for_model(model, LeanDecode.build(model, None), 4096, graphs=True)
    assert slots is not None
    prompts = [list(range(1000, 3030)), list(range(500, 2540))]  # 2030 and 2040 tokens: 2048, then 4096
    for mine, theirs, _ in twin_steps(model, slots, prompts, steps=12, drop_after=9):
        assert_close(mine, theirs, 2e-2)
    assert slots.replays == 12 and sorted(slots._graphs) == [(1, 4096), (2, 2048), (2, 4096)]


@CUDA
def test_cuda_constrained_replies_through_graphs(tiny_model: TinyFactory, tokenizer: Any) -> None:
    model = tiny_model(3).to("cuda")
    graphed = TransformersLLM(model, tokenizer)
    eager = TransformersLLM(model, tokenizer, cuda_graphs=False)
    assert graphed.scheduler.overlap and graphed.scheduler.slots is not None
    requests = [ask("Call something.", 1000, tools=(LOOKUP,), tool_choice="required"),
                ask("Pick one.", 20, constraint=Constraint(choices=("math", "chit-chat", "search the web")))]
    replies = batched(graphed, requests)
    assert texts(replies) == texts([eager.complete(r) for r in requests])
    assert_valid_calls(replies[0], (LOOKUP,))  # type: ignore[arg-type]
    assert graphed.scheduler.slots.replays > 0
