"""Continuous batching on tiny random Llama models: concurrent requests decode in one batch and get exactly
what they get alone; rows with different LoRA adapters share a forward; a bad or cancelled request leaves
the others alone.

A `Gate` holds the decode thread inside a chosen forward until the test has queued the requests it wants
batched, so every test builds the batch it means to (no timing, no sleeps that hope for overlap).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from agent.errors import LLMError
from agent.llm.decoding import Generation
from agent.llm.engine import TransformersLLM
from agent.types import Constraint, LLMDelta, LLMReply, LLMRequest, Message
from tests.llm.conftest import TinyFactory
from tests.llm.test_llm_adapters import make_lora
from tests.llm.test_llm_engine import LOOKUP, SEARCH, WEATHER, assert_valid_calls

WAIT_S = 60.0


class Gate:
    """Blocks the decode thread at the start of the forwards numbered in `stops` (0 = the first forward).

    Forwards are the model's own (prefills, decode steps through transformers), the lean decode steps and
    prefills (leanstep.py), which do not call the model, and the steps of the static slots (slots.py), which
    may replay a graph instead of calling either.
    """

    def __init__(self, llm: TransformersLLM, stops: Sequence[int]) -> None:
        self._llm = llm
        self._stops = set(stops)
        self._count = 0
        self._held = threading.Event()
        self._open = threading.Event()
        self._handle = llm.model.register_forward_pre_hook(self._hook)
        lean = llm.lean
        if lean is not None:
            step = lean.step

            def gated(*args: Any) -> Any:
                self._hook(None, args)
                return step(*args)

            lean.step = gated  # type: ignore[method-assign]  # this engine's lean step only
            prefill = lean.prefill

            def gated_prefill(*args: Any) -> Any:  # (cache, cached, ids, positions, mask, keep, router)
                if lean.prefills_on(args[2].device.type, args[6]):  # else the model's forward runs: hooked
                    self._hook(None, args)
                return prefill(*args)

            lean.prefill = gated_prefill  # type: ignore[method-assign]
        slots = llm.scheduler.slots
        if slots is not None:
            run = slots.run

            def gated_run(*args: Any) -> Any:
                self._hook(None, args)
                return run(*args)

            slots.run = gated_run  # type: ignore[method-assign]

    def _hook(self, module: Any, args: Any) -> None:
        index, self._count = self._count, self._count + 1
        if index in self._stops:
            self._open.clear()
            self._held.set()
            self._open.wait(WAIT_S)

    def wait_held(self) -> None:
        assert self._held.wait(WAIT_S), "the decode thread never reached the gate"

    def wait_waiting(self, count: int) -> None:
        """Until `count` requests wait to join."""
        deadline = time.monotonic() + WAIT_S
        while self._llm.scheduler.waiting < count:
            assert time.monotonic() < deadline, f"{self._llm.scheduler.waiting} waiting, expected {count}"
            time.sleep(0.005)

    def release_when_waiting(self, count: int) -> None:
        """Once the thread is held and `count` requests wait to join, let it go on."""
        self.wait_held()
        self.wait_waiting(count)
        self._held.clear()
        self._open.set()

    def remove(self) -> None:
        self._stops.clear()
        self._open.set()
        self._handle.remove()
        if self._llm.lean is not None:
            vars(self._llm.lean).pop("step", None)
            vars(self._llm.lean).pop("prefill", None)
        if self._llm.scheduler.slots is not None:
            vars(self._llm.scheduler.slots).pop("run", None)


def ask(text: str, max_new_tokens: int = 12, **kwargs: Any) -> LLMRequest:
    return LLMRequest("act", (Message("system", "You are terse."), Message("user", text)),
                      max_new_tokens=max_new_tokens, **kwargs)


class Callers:
    """Requests completed in threads; `results[i]` is request i's reply, or the exception it raised."""

    def __init__(self, llm: TransformersLLM) -> None:
        self._llm = llm
        self.results: dict[int, LLMReply | Exception] = {}
        self._threads: list[threading.Thread] = []

    def start(self, requests: Sequence[LLMRequest]) -> None:
        for request in requests:
            index = len(self._threads)
            thread = threading.Thread(target=self._call, args=(index, request), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _call(self, index: int, request: LLMRequest) -> None:
        try:
            self.results[index] = self._llm.complete(request)
        except Exception as e:
            self.results[index] = e

    def join(self) -> list[LLMReply | Exception]:
        for thread in self._threads:
            thread.join(WAIT_S)
            assert not thread.is_alive(), "a caller never got its reply"
        return [self.results[i] for i in range(len(self._threads))]


def batched(llm: TransformersLLM, first: Sequence[LLMRequest],
            late: Sequence[LLMRequest] = ()) -> list[LLMReply | Exception]:
    """`first` decode as one batch: the first is held in its prefill until the others wait behind it, queued in
    order (they are then prefilled together when short); `late` join at the batch's third step."""
    # 0: the first prefill; 1: the others' (when they share a start, its forward first); then steps
    gate = Gate(llm, [0, 4] if late else [0])
    callers = Callers(llm)
    try:
        callers.start(first[:1])
        gate.wait_held()
        for queued, request in enumerate(first[1:], start=1):  # queued in this order
            callers.start([request])
            gate.wait_waiting(queued)
        gate.release_when_waiting(len(first) - 1)
        if late:
            gate.wait_held()  # now the batch is decoding
            callers.start(late)
            gate.release_when_waiting(len(late))
        return callers.join()
    finally:
        gate.remove()


def texts(replies: Sequence[LLMReply | Exception]) -> list[str]:
    return [r.text if isinstance(r, LLMReply) else repr(r) for r in replies]


def test_concurrent_requests_get_what_they_get_alone(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False)
    first = [ask("Hi."), ask("Tell me a long story about the sea, please.", 20), ask("2+2?", 6),
             ask("Name three colours and explain why you like them.", 16)]
    # Late arrivals with a prompt longer than the batch's cache (the batch is padded) and a shorter one.
    late = [ask("Write a detailed essay about lighthouses, their keepers, and the storms they saw. " * 2, 10),
            ask("Yo.", 14)]
    alone = [llm.complete(r) for r in [*first, *late]]
    together = batched(llm, first, late)
    assert texts(together) == texts(alone)
    assert [r.usage for r in together if isinstance(r, LLMReply)] == [r.usage for r in alone]
    assert llm.scheduler.max_rows_seen == len(first) + len(late)


def test_the_batched_engine_matches_the_plain_decode_loop(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(1), tokenizer, constrained=False)
    requests = [ask("Hello there, how are you?", 16), ask("Hi.", 16), ask("What is the capital of France?", 16)]
    plain = []
    for request in requests:
        generation = Generation(llm.model, llm.stop_ids)
        ids = list(generation.tokens(llm.prompt_ids(request), request.max_new_tokens, 0.0))
        plain.append(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    assert texts(batched(llm, requests)) == plain


def test_rows_with_different_adapters_share_a_batch(tiny_model: TinyFactory, tokenizer: Any,
                                                    tmp_path: Path) -> None:
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    llm = TransformersLLM(tiny_model(0), tokenizer, adapters=paths, constrained=False)
    prompts = ["Say something.", "Tell me about the weather in Oslo today.", "Hi."]
    requests = [ask(p, 10, adapter=a) for p in prompts for a in (None, "one", "two")]
    llm.max_batch = len(requests)
    alone = [llm.complete(r) for r in requests]
    for i in range(0, len(requests), 3):
        assert len({alone[i].text, alone[i + 1].text, alone[i + 2].text}) == 3  # the adapters change the output
    reference = [_set_adapter_reference(tiny_model, paths, r, llm) for r in requests[:3]]
    assert texts(alone[:3]) == reference  # routing by adapter_names = PEFT's set_adapter / base model
    assert texts(batched(llm, requests)) == texts(alone)
    assert llm.scheduler.max_rows_seen == len(requests)


def _set_adapter_reference(tiny_model: TinyFactory, paths: dict[str, Path], request: LLMRequest,
                           llm: TransformersLLM) -> str:
    """The reply text from a separate copy of the model with the adapter made active the ordinary PEFT way."""
    from peft import PeftModel

    model = tiny_model(0)
    if request.adapter is not None:
        model = PeftModel.from_pretrained(model, str(paths[request.adapter])).eval().get_base_model()
    ids = Generation(model, llm.stop_ids).tokens(llm.prompt_ids(request), request.max_new_tokens, 0.0)
    return str(llm.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))


def make_variant(tiny_model: TinyFactory, folder: Path, seed: int, **config: Any) -> Path:
    """A LoRA adapter with other settings than make_lora's (LoRA on the embedding, DoRA), lora_B perturbed."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(0), LoraConfig(r=2, lora_alpha=4, **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    peft_model.save_pretrained(str(folder))
    return folder


def test_mixed_adapter_logits_equal_peft_with_that_adapter_active(tiny_model: TinyFactory, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Logit-level: the batched LoRA products (plain adapters: dense, gathered, one adapter for all rows) and
    PEFT's adapter_names path (an embedding LoRA in the batch) against a separate copy of the model with the
    row's adapter made active the ordinary PEFT way."""
    import torch
    from peft import PeftModel

    from agent.llm import lorarouter
    from agent.llm.batching import KVBatch
    from agent.llm.lora import LoraSet

    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
             "two": make_lora(tiny_model, tmp_path / "two", seed=2),
             # LoRA on the embedding: not served by the batched products, so PEFT's adapter_names path runs
             "embed": make_variant(tiny_model, tmp_path / "embed", 3, target_modules=["embed_tokens", "v_proj"]),
             "dora": make_variant(tiny_model, tmp_path / "dora", 4, target_modules=["v_proj"], use_dora=True)}
    model = tiny_model(0)
    lora = LoraSet(model, paths)
    with pytest.raises(LLMError, match="adapter 'dora' uses DoRA"):  # PEFT cannot batch DoRA by adapter_names
        lora.resolve("dora")
    references = {name: PeftModel.from_pretrained(tiny_model(0), str(paths[name])).eval()
                  for name in ("one", "two", "embed")}
    references["__base__"] = tiny_model(0)
    prompts = [[1, 5, 9, 14], list(range(100, 109)), [7, 8], list(range(300, 306))]
    fed = [[11, 12, 13], [21, 22, 23], [31, 32, 33], [41, 42, 43]]
    for dense_max, adapters in ((32, ["__base__", "one", "two", "one"]), (0, ["__base__", "one", "two", "one"]),
                                (32, ["two"] * 4), (32, ["two", "__base__", "embed", "one"])):
        monkeypatch.setattr(lorarouter, "DENSE_MAX_ADAPTERS", dense_max)
        names = [lora.resolve(None if a == "__base__" else a) for a in adapters]
        batch, _ = KVBatch.prefill(model, prompts[0], lora.route, names[0])
        for prompt, name in zip(prompts[1:], names[1:], strict=True):
            batch.merge(KVBatch.prefill(model, prompt, lora.route, name)[0])
        for step in range(3):
            logits = batch.step([f[step] for f in fed], lora.route, names)
        for row, adapter in enumerate(adapters):
            with torch.inference_mode():
                want = references[adapter](input_ids=torch.tensor([prompts[row] + fed[row]])).logits[0, -1]
            gap = (logits[row] - want).abs().max()
            assert torch.allclose(logits[row], want, atol=1e-4), f"{adapters} (dense_max {dense_max}), row {row}: {gap}"


def test_a_bad_request_fails_alone(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    llm = TransformersLLM(tiny_model(0, max_positions=256), tokenizer, adapters={"broken": broken}, constrained=False)
    good = [ask("Hi.", 10), ask("Tell me a story.", 12)]
    alone = [llm.complete(r) for r in good]
    gate = Gate(llm, [0, 4])  # the first prefill, then the batch's second step
    callers = Callers(llm)
    try:
        callers.start(good[:1])
        gate.wait_held()
        callers.start(good[1:])
        gate.release_when_waiting(1)
        gate.wait_held()  # the good ones decode
        # These two fail in their callers, before reaching the decode thread...
        callers.start([ask("word " * 300), ask("Hi.", adapter="nope")])
        # ...and this one inside it (adapters load there).
        callers.start([ask("Hi.", adapter="broken")])
        gate.release_when_waiting(1)
        replies = callers.join()
    finally:
        gate.remove()
    assert texts(replies[:2]) == texts(alone)
    too_long, unknown, not_loading = replies[2:]
    assert isinstance(too_long, LLMError) and "context of 256 tokens" in str(too_long)
    assert isinstance(unknown, LLMError) and "unknown adapter 'nope'" in str(unknown)
    assert isinstance(not_loading, LLMError) and "cannot load adapter 'broken'" in str(not_loading)
    assert llm.complete(good[0]).text == alone[0].text


def test_closing_a_stream_frees_its_row(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False)
    llm.max_batch = 1  # the others can only start once the closed stream's row is gone
    endless = ask("Write forever.", 150)
    assert llm.complete(endless).usage.completion_tokens == 150  # it does not stop by itself
    others = [ask("Hi.", 8), ask("Tell me a story.", 8)]
    alone = [llm.complete(r) for r in others]
    steps_before = llm.scheduler.steps
    stream = llm.stream(endless)
    first = next(stream)  # its row is decoding, alone
    gate = Gate(llm, [0])  # its next step
    callers = Callers(llm)
    try:
        gate.wait_held()
        stream.close()  # the caller went away: the row leaves after this step
        callers.start(others)
        gate.release_when_waiting(2)
        replies = callers.join()
    finally:
        gate.remove()
    assert isinstance(first, LLMDelta)
    assert texts(replies) == texts(alone)
    assert llm.scheduler.steps - steps_before < 100  # far fewer than the 150 the closed stream asked for
    deadline = time.monotonic() + WAIT_S
    while llm.scheduler.running:  # nothing left: the decode thread exits
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_merged_rows_compute_the_logits_they_compute_alone(tiny_model: TinyFactory) -> None:
    """KVBatch itself: rows merged at different steps, with caches of different lengths, and a row leaving."""
    import torch

    from agent.llm.batching import KVBatch

    model = tiny_model(5)
    prompts = [list(range(100, 111)), [1, 5, 9], list(range(300, 307))]
    fed = [[11, 12, 13, 14, 15], [21, 22, 23, 24, 25], [31, 32, 33, 34, 35]]

    def route(names: Sequence[str]) -> Any:
        return nullcontext()

    alone = []
    for prompt, tokens in zip(prompts, fed, strict=True):
        batch, logits = KVBatch.prefill(model, prompt, route, "__base__")
        alone.append([logits] + [batch.step([t], route, ["__base__"])[0] for t in tokens])
    batch, first = KVBatch.prefill(model, prompts[0], route, "__base__")
    row1, second = KVBatch.prefill(model, prompts[1], route, "__base__")
    batch.merge(row1)  # a shorter cache merged into a longer one
    got: list[list[Any]] = [[first], [second], []]
    for step in range(5):
        if step == 2:  # row 2 joins a running batch; row 0 leaves after its 4th token
            row2, third = KVBatch.prefill(model, prompts[2], route, "__base__")
            batch.merge(row2)
            got[2].append(third)
        rows = [0, 1] if step < 2 else [0, 1, 2] if step < 4 else [1, 2]
        tokens = [fed[r][step - (2 if r == 2 else 0)] for r in rows]
        logits = batch.step(tokens, route, ["__base__"] * len(rows))
        for i, r in enumerate(rows):
            got[r].append(logits[i])
        if step == 3:
            batch.keep([1, 2])
    for r, expected in enumerate(alone):
        for have, want in zip(got[r], expected, strict=False):
            assert torch.allclose(have, want, atol=1e-5), f"row {r} differs by {(have - want).abs().max()}"
    # The longest row left: the padding only it needed is gone.
    assert batch.size == 2 and batch.mask.shape[1] == max(len(prompts[1]) + 5, len(prompts[2]) + 3)


@pytest.mark.parametrize("keep_argument", [True, False])  # False: a model whose forward has no logits_to_keep
def test_prompts_prefilled_together_get_what_they_get_alone(tiny_model: TinyFactory, keep_argument: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """KVBatch.prefill_many: prompts of different lengths, some past a cached prefix of different lengths and
    one without, in one forward; each row's logits, cache and next steps are those of its prefill alone."""
    import torch

    from agent.llm import batching
    from agent.llm.batching import KVBatch
    from agent.llm.prefixcache import Hit

    if not keep_argument:
        plain = batching.forward_arguments

        def without_keep(model: Any, cache: Any) -> dict[str, Any]:
            return {k: v for k, v in plain(model, cache).items() if k != "logits_to_keep"}

        monkeypatch.setattr(batching, "forward_arguments", without_keep)

    model = tiny_model(7)
    prompts = [list(range(100, 131)), [1, 5, 9], list(range(300, 320)), list(range(100, 112)) + [7, 8]]

    def route(names: Sequence[str]) -> Any:
        return nullcontext()

    alone = [KVBatch.prefill(model, prompt, route, "__base__") for prompt in prompts]

    def hit(row: int, tokens: int) -> Hit:
        return Hit(tokens, tuple((k[:, :, :tokens], v[:, :, :tokens]) for k, v in alone[row][0].layers))

    hits = [hit(0, 25), None, hit(2, 6), hit(0, 12)]  # row 3 shares row 0's first 12 tokens
    together = KVBatch.prefill_many(model, prompts, route, ["__base__"] * 4, hits)
    for row, ((piece, logits), (single, want)) in enumerate(zip(together, alone, strict=True)):
        assert torch.allclose(logits, want, atol=1e-5), f"row {row}: {(logits - want).abs().max()}"
        assert piece.size == 1 and piece.mask.shape[1] == len(prompts[row]) and piece.mask.all()
        assert int(piece.positions[0]) == len(prompts[row])
        for (keys, values), (k, v) in zip(piece.layers, single.layers, strict=True):
            assert keys.shape == k.shape and torch.allclose(keys, k, atol=1e-5) and torch.allclose(values, v, atol=1e-5)
        for token in (4, 40, 400):
            step, expected = piece.step([token], route, ["__base__"]), single.step([token], route, ["__base__"])
            assert torch.allclose(step, expected, atol=1e-5)


@pytest.mark.parametrize("prefix_cache_mb", [0, 16])  # with the cache, each prompt past the shared system turn
def test_waiting_prompts_share_one_prefill_and_long_ones_go_alone(tiny_model: TinyFactory, tokenizer: Any,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  prefix_cache_mb: int) -> None:
    from agent.llm import scheduler

    llm = TransformersLLM(tiny_model(2), tokenizer, constrained=False, prefix_cache_mb=prefix_cache_mb)
    short = [ask("Hi.", 6), ask("Tell me about the sea and the ships that sail on it.", 7), ask("2+2?", 8),
             ask("Yo.", 9)]
    alone = [llm.complete(r) for r in short]
    prefills = llm.scheduler.prefills
    assert texts(batched(llm, short)) == texts(alone)
    # the first alone (held at the gate), then the three that waited behind it in one forward
    assert llm.scheduler.prefills - prefills == 2
    assert llm.scheduler.max_rows_seen == 4
    # a prompt over BATCH_PREFILL_MAX_TOKENS is prefilled alone
    monkeypatch.setattr(scheduler, "BATCH_PREFILL_MAX_TOKENS", len(llm.prompt_ids(short[1])) - 1)
    prefills = llm.scheduler.prefills
    assert texts(batched(llm, short)) == texts(alone)
    assert llm.scheduler.prefills - prefills == 3  # the first; the sea alone; then the last two together
    # in the middle, it waits its turn: the short one before it is prefilled first, then it, then the last one
    prefills = llm.scheduler.prefills
    order = [0, 2, 1, 3]
    assert texts(batched(llm, [short[i] for i in order])) == texts([alone[i] for i in order])
    assert llm.scheduler.prefills - prefills == 4
    if prefix_cache_mb:
        stats = llm.prefix_cache.stats  # type: ignore[union-attr]
        assert stats.hits >= 3 * len(short) - 1  # every prompt but the very first reused the system turn


HARBOUR = ("You are the night clerk of a small harbour office. Answer in one short sentence, name no ship you "
           "were not told about, and say so when you do not know.")


def harbour(text: str, max_new_tokens: int, adapter: str | None = None) -> LLMRequest:
    return LLMRequest("act", (Message("system", HARBOUR), Message("user", text)), max_new_tokens=max_new_tokens,
                      adapter=adapter)


def test_shared_starts_are_runs_of_prompts_that_start_alike() -> None:
    from agent.llm.scheduler import SHARED_PREFIX_MIN_TOKENS as MIN
    from agent.llm.scheduler import _shared_starts

    system, other = list(range(1000, 1000 + MIN + 4)), list(range(2000, 2000 + MIN + 9))
    a, b, c = system + [1, 2, 3], system + [1, 2, 4, 5], system + [7]
    assert _shared_starts([a, b, list(range(MIN * 3)), c]) == [system]  # the unrelated prompt shares nothing
    assert _shared_starts([a, b]) == [system + [1, 2]]  # as far as they agree
    assert _shared_starts([other + [1], a, other + [2], b]) == [system + [1, 2], other]  # one start per run
    assert _shared_starts([a, a]) == [a[:-1]]  # the same prompt twice: its last token must run
    assert _shared_starts([system[:MIN], system[:MIN] + [1]]) == []  # shorter than SHARED_PREFIX_MIN_TOKENS
    assert _shared_starts([a]) == [] and _shared_starts([]) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug leaves the thread
def test_a_bug_in_a_prefill_fails_the_request_being_taken_instead_of_leaving_it_waiting(
        tiny_model: TinyFactory, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.llm import scheduler

    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False)

    def buggy(self: Any, group: Any) -> None:
        raise RuntimeError("a bug in the scheduler")

    monkeypatch.setattr(scheduler.Scheduler, "_prefill", buggy)
    callers = Callers(llm)
    callers.start([ask("Hi.")])  # the engine's first prompt: taken, then prefilled alone
    (reply,) = callers.join()
    assert isinstance(reply, LLMError) and "the decode thread stopped: RuntimeError: a bug" in str(reply)
    monkeypatch.undo()
    assert llm.complete(ask("Hi.")).usage.completion_tokens > 0  # a new decode thread serves the next request


def test_a_start_is_worth_its_forward_only_where_it_shortens_the_shared_forward() -> None:
    from agent.llm.scheduler import _worth_sharing

    seven = [40] * 7
    # 7 prompts of 40 tokens sharing 30: 7 x 30 positions spared, less the 30 the start's forward runs
    assert _worth_sharing([0] * 7, seven, [(30, list(range(7)), 0)], 16, 2048) == [0]
    # with a 250-token prompt beside them the shared forward is 250 wide either way: nothing spared
    assert _worth_sharing([0] * 8, [*seven, 250], [(30, list(range(7)), 0)], 16, 2048) == []
    # two starts (two adapters) that only together shorten the widest rows: both or neither
    both = [(30, [0, 1], 0), (30, [2, 3], 0)]
    assert _worth_sharing([0] * 4, [40] * 4, both, 16, 2048) == [0, 1]
    assert _worth_sharing([0] * 4, [40] * 4, both, 80, 2048) == []  # 4 x 30 - 60 = 60 < 2 x 80
    # a start among short rows spares nothing beside the one among the widest: dropped
    assert _worth_sharing([0] * 4, [60, 60, 30, 30], [(20, [0, 1], 0), (20, [2, 3], 0)], 16, 2048) == [0]
    # a start that is mostly cached already runs only the rest
    assert _worth_sharing([25, 25], [40, 40], [(30, [0, 1], 25)], 16, 2048) == []  # 2 x 5 - 5 = 5
    assert _worth_sharing([0, 25], [40, 40], [(30, [0], 25)], 16, 2048) == [0]  # 2 x (40 - 15) - 5 = 45
    # the forward must stay within the budget or no larger than it was: 8 x 40 positions, then 8 x (30 + 30)
    eight = ([0] * 8, [*seven, 30], [(30, list(range(7)), 0)])
    assert _worth_sharing(*eight, 16, 2048) == [0] and _worth_sharing(*eight, 16, 400) == []
    assert _worth_sharing([0, 0, 10], [200, 200, 30], [(150, [0, 1], 0)], 16, 100) == [0]  # 3 x 210 -> 3 x 200


def test_a_shared_start_is_built_from_the_longest_cached_part_of_it(tiny_model: TinyFactory,
                                                                   tokenizer: Any) -> None:
    """Rows with cached parts of different lengths: the start's own forward runs past the longest (here one row
    has all of it cached, so the start is not given to that row) and gives the others exactly its keys and
    values."""
    import torch

    from agent.llm.batching import KVBatch
    from agent.llm.decoding import Sampler
    from agent.llm.prefixcache import Hit
    from agent.llm.scheduler import Job, _Row

    llm = TransformersLLM(tiny_model(3), tokenizer, constrained=False, prefix_cache_mb=0)
    scheduler = llm.scheduler
    start = list(range(100, 120))
    prompts = [start + list(range(200, 210)), start + list(range(300, 310)), start + list(range(400, 410))]
    route = scheduler._lora.route
    alone = [KVBatch.prefill(llm.model, p, route, "__base__")[0] for p in prompts]

    def hit(row: int, tokens: int) -> Hit | None:
        return Hit(len(prompts[row]), tuple(alone[row].layers)).head(tokens)

    group = [(_Row(Job(p, None, Sampler(llm.stop_ids, 4)), "__base__"), h)
             for p, h in zip(prompts, [hit(0, 29), hit(1, 5), None], strict=True)]
    shared = scheduler._share_starts(group)
    assert scheduler.shared_prefills == 1 and shared[0][1] is group[0][1]  # the first keeps its own, longer part
    for row in (1, 2):
        given = shared[row][1]
        assert given is not None and given.tokens == len(start)
        for (keys, values), (k, v) in zip(given.layers, alone[row].layers, strict=True):
            assert keys.shape[2] == len(start)
            assert torch.allclose(keys, k[:, :, :len(start)], atol=1e-5)
            assert torch.allclose(values, v[:, :, :len(start)], atol=1e-5)


@pytest.mark.parametrize("prefix_cache_mb", [0, 16])
def test_prompts_prefilled_together_run_their_common_start_once(tiny_model: TinyFactory, tokenizer: Any,
                                                                tmp_path: Path, prefix_cache_mb: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.llm import scheduler

    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=prefix_cache_mb,
                          adapters={"one": make_lora(tiny_model, tmp_path / "one", seed=1)})
    # held alone in the first prefill; then two harbour prompts per adapter and an unrelated one, together
    requests = [ask("Hi.", 6), harbour("Which ships came in today?", 8), ask("Tell me a joke.", 5),
                harbour("Is the tide high?", 9, "one"), harbour("Yo.", 7), harbour("Any fog tonight?", 6, "one")]
    llm.max_batch = len(requests)
    ids = [llm.prompt_ids(r) for r in requests]
    starts = {i: scheduler._shared_starts([ids[a], ids[b]])[0] for a, b in ((1, 4), (3, 5)) for i in (a, b)}
    alone = [llm.complete(r) for r in requests]
    hits: list[list[int]] = []  # the cached part of each prompt of each shared forward
    prefill_many = scheduler.KVBatch.prefill_many

    def recording(model: Any, prompts: Sequence[Sequence[int]], route: Any, adapters: Any, given: Any,
                  lean: Any = None) -> Any:
        hits.append([0 if hit is None else hit.tokens for hit in given])
        return prefill_many(model, prompts, route, adapters, given, lean)

    monkeypatch.setattr(scheduler.KVBatch, "prefill_many", recording)
    for share in (False, True):
        llm.scheduler.share_prefixes = share
        if llm.prefix_cache is not None:
            llm.prefix_cache.clear()
            llm.prefix_cache.stats = type(llm.prefix_cache.stats)()
        prefills, shared, saved = (llm.scheduler.prefills, llm.scheduler.shared_prefills,
                                   llm.scheduler.shared_tokens)
        hits.clear()
        assert texts(batched(llm, requests)) == texts(alone)
        assert llm.scheduler.shared_prefills - shared == (2 if share else 0)  # one start per adapter
        assert llm.scheduler.prefills - prefills == 2 + llm.scheduler.shared_prefills - shared
        assert [len(h) for h in hits] == [1, 5]  # the first alone; the five that waited in one forward
        together = dict(zip([1, 2, 3, 4, 5], hits[1], strict=True))  # each harbour prompt past its start
        for i, start in starts.items():
            assert (together[i] == len(start)) == share, (i, together[i], len(start))
        assert together[2] < min(map(len, starts.values()))  # the unrelated prompt shares no start
        # per adapter, one of its two harbour prompts is spared the start; with the cache, less the part of it
        # that the first prompt's system turn left cached for the base adapter's
        spared = llm.scheduler.shared_tokens - saved
        base, one = len(starts[1]), len(starts[3])
        if not share:
            assert spared == 0
        elif not prefix_cache_mb:
            assert spared == base + one
        else:  # the base prompts had the first prompt's "<|im_start|>system\nYou are" cached
            assert base - 8 <= spared - one < base
        if llm.prefix_cache is not None:  # every prompt token counted once: cached, shared or run
            stats = llm.prefix_cache.stats
            assert stats.prefilled_tokens + stats.reused_tokens + spared == sum(map(len, ids))


def test_a_start_is_shared_only_when_it_spares_the_model_enough_tokens(tiny_model: TinyFactory,
                                                                      tokenizer: Any) -> None:
    from agent.llm import scheduler

    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    assert llm.scheduler.share_min_tokens == scheduler.SHARED_PREFIX_MIN_TOKENS  # on CPU
    requests = [ask("Hi.", 6), harbour("Which ships came in today?", 8), harbour("Yo.", 7)]
    alone = [llm.complete(r) for r in requests]
    start = scheduler._shared_starts([llm.prompt_ids(r) for r in requests[1:]])[0]
    # two prompts, nothing cached: the start's forward spares one copy of it
    for needed, shared in ((len(start) + 1, 0), (len(start), 1)):
        llm.scheduler.share_min_tokens = needed
        before = llm.scheduler.shared_prefills
        assert texts(batched(llm, requests)) == texts(alone)
        assert llm.scheduler.shared_prefills - before == shared


def test_a_shared_start_that_fails_leaves_its_prompts_to_run_it(tiny_model: TinyFactory, tokenizer: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.llm import scheduler

    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    requests = [ask("Hi.", 6), harbour("Which ships came in today?", 8), harbour("Yo.", 7)]
    alone = [llm.complete(r) for r in requests]
    start = scheduler._shared_starts([llm.prompt_ids(r) for r in requests[1:]])[0]
    prefill = scheduler.KVBatch.prefill
    failed = []

    def failing(model: Any, prompt_ids: Sequence[int], *args: Any) -> Any:
        if list(prompt_ids) == start:
            failed.append(len(prompt_ids))
            raise RuntimeError("out of memory")
        return prefill(model, prompt_ids, *args)

    monkeypatch.setattr(scheduler.KVBatch, "prefill", failing)
    assert texts(batched(llm, requests)) == texts(alone)
    assert failed == [len(start)] and llm.scheduler.shared_prefills == 0 and llm.scheduler.shared_tokens == 0


def test_a_shared_prefill_that_fails_is_retried_alone(tiny_model: TinyFactory, tokenizer: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward over several prompts that fails (out of memory, say) fails only the prompt that fails alone."""
    from agent.llm.batching import KVBatch

    llm = TransformersLLM(tiny_model(3), tokenizer, constrained=False, prefix_cache_mb=0)
    requests = [ask("Hi.", 6), ask("Tell me a story.", 7), ask("Poison.", 8), ask("2+2?", 9)]
    alone = [llm.complete(r) for r in requests]
    poison = llm.prompt_ids(requests[2])
    real = KVBatch.prefill_many
    shapes: list[int] = []

    def failing(model: Any, prompts: Sequence[Sequence[int]], *args: Any) -> Any:
        shapes.append(len(prompts))
        if any(list(p) == poison for p in prompts):
            raise RuntimeError("simulated: not enough memory")
        return real(model, prompts, *args)

    monkeypatch.setattr(KVBatch, "prefill_many", failing)
    replies = batched(llm, requests)
    assert shapes == [1, 3, 1, 1, 1]  # the first; the three that waited, failing; each of them alone
    assert texts([replies[i] for i in (0, 1, 3)]) == texts([alone[i] for i in (0, 1, 3)])
    assert isinstance(replies[2], LLMError) and "not enough memory" in str(replies[2])
    assert f"on a {len(poison)}-token prompt" in str(replies[2])


def test_merging_several_batches_at_once_equals_one_at_a_time(tiny_model: TinyFactory) -> None:
    import torch

    from agent.llm.batching import KVBatch

    model = tiny_model(6)
    prompts = [list(range(100, 111)), [1, 5, 9], list(range(300, 320)), [7, 8, 9, 10]]

    def route(names: Sequence[str]) -> Any:
        return nullcontext()

    def pieces() -> list[KVBatch]:
        return [KVBatch.prefill(model, prompt, route, "__base__")[0] for prompt in prompts]

    one, together = pieces(), pieces()
    for piece in one[1:]:
        one[0].merge(piece)
    together[0].merge(*together[1:])
    assert torch.equal(one[0].mask, together[0].mask) and torch.equal(one[0].positions, together[0].positions)
    for (k1, v1), (k2, v2) in zip(one[0].layers, together[0].layers, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    tokens = [3, 4, 5, 6]
    assert torch.equal(one[0].step(tokens, route, ["__base__"] * 4), together[0].step(tokens, route, ["__base__"] * 4))


def test_rows_whose_merge_fails_fail_and_the_running_row_goes_on(tiny_model: TinyFactory, tokenizer: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.llm.batching import KVBatch

    llm = TransformersLLM(tiny_model(3), tokenizer, constrained=False, prefix_cache_mb=0)
    requests = [ask("Hi.", 9), ask("Tell me a story.", 7), ask("2+2?", 8)]
    alone = llm.complete(requests[0])

    def failing(self: KVBatch, *others: KVBatch) -> None:
        raise RuntimeError("simulated: not enough memory")

    monkeypatch.setattr(KVBatch, "merge", failing)
    replies = batched(llm, requests)  # the first starts the batch; the other two join it in one merge
    assert texts(replies[:1]) == texts([alone])
    for reply in replies[1:]:
        assert isinstance(reply, LLMError) and "not enough memory" in str(reply)


def test_max_batch_caps_the_batch_and_queues_the_rest(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(2), tokenizer, constrained=False)
    llm.max_batch = 2
    requests = [ask(f"Question number {i}?", 6 + i) for i in range(5)]
    alone = [llm.complete(r) for r in requests]
    assert texts(batched(llm, requests)) == texts(alone)
    assert llm.scheduler.max_rows_seen == 2


@pytest.mark.parametrize("overlap", [False, True])
def test_constrained_rows_in_a_batch_still_make_valid_calls(tiny_model: TinyFactory, tokenizer: Any,
                                                            overlap: bool) -> None:
    """Also with the grammar masks computed during the step (`overlap`, a GPU's default): the same replies."""
    llm = TransformersLLM(tiny_model(3), tokenizer)
    llm.scheduler.overlap = overlap
    reference = TransformersLLM(tiny_model(3), tokenizer)
    assert reference.scheduler.overlap is False  # a CPU model
    tool_sets = [(LOOKUP,), (WEATHER, SEARCH), (LOOKUP, WEATHER, SEARCH), (SEARCH,)]
    calls = [ask("Call something.", 1000, tools=tools, tool_choice="required", temperature=t)
             for tools, t in zip(tool_sets, (0.0, 0.0, 1.0, 1.0), strict=True)]
    choices = ("math", "chit-chat", "search the web")
    others = [ask("Pick one.", 20, constraint=Constraint(choices=choices)), ask("Hello!", 15)]
    replies = batched(llm, [*calls, *others])
    for reply, tools in zip(replies, tool_sets, strict=False):
        assert isinstance(reply, LLMReply)
        assert_valid_calls(reply, tools)
    choice, free = replies[-2], replies[-1]
    assert isinstance(choice, LLMReply) and choice.text in choices
    greedy = [calls[0], calls[1], *others]
    alone = [reference.complete(r) for r in greedy]
    together = [replies[0], replies[1], choice, free]
    assert texts(together) == texts(alone)
    assert [r.usage for r in together] == [r.usage for r in alone]  # type: ignore[union-attr]
    assert [r.finish_reason for r in together] == [r.finish_reason for r in alone]  # type: ignore[union-attr]


def test_overlapped_grammar_masks_are_computed_during_the_step(tiny_model: TinyFactory, tokenizer: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With `overlap`, a token's grammar mask is computed inside the next step (after its forward is queued, before
    its logits are read back), not between steps; without it, right after the token."""
    from agent.llm.batching import KVBatch
    from agent.llm.grammar import TokenConstraint

    where: list[bool] = []  # per mask computed: inside a decode step?
    inside = [False]
    fill, step = TokenConstraint._fill, KVBatch.step

    def counted_fill(self: TokenConstraint) -> Any:
        where.append(inside[0])
        return fill(self)

    def flagged_step(self: KVBatch, *args: Any, **kwargs: Any) -> Any:
        inside[0] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(TokenConstraint, "_fill", counted_fill)
    monkeypatch.setattr(KVBatch, "step", flagged_step)
    request = ask("Call something.", 1000, tools=(LOOKUP,), tool_choice="required")
    for overlap in (False, True):
        llm = TransformersLLM(tiny_model(3), tokenizer)
        llm.scheduler.overlap = overlap
        where.clear()
        reply = llm.complete(request)
        assert_valid_calls(reply, (LOOKUP,))
        assert where.count(False) == (1 if overlap else len(where))  # overlap: only the request's first mask
        assert len(where) > 5
