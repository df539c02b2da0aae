"""Prefix caching on tiny random Llamas: a prompt that starts like an earlier one reuses that prompt's KV, runs
the model on the rest only, and gets exactly what it gets without the cache; per adapter; within its budget."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import ModelSettings
from agent.llm.batching import KVBatch
from agent.llm.engine import TransformersLLM
from agent.llm.prefixcache import PrefixCache
from agent.types import LLMRequest, Message, ToolSpec
from tests.llm.conftest import TinyFactory
from tests.llm.test_llm_adapters import make_lora

SYSTEM = "You are a careful assistant. " * 12
TOOLS = (ToolSpec("lookup", "Look a word up in the dictionary.",
                  {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}),)


def route(names: Sequence[str]) -> Any:
    return nullcontext()


def run_steps(llm: TransformersLLM, user: str, adapter: str | None = None) -> list[str]:
    """Three steps of one run, each prompt the previous one plus the reply and a tool result (as an agent does)."""
    messages = [Message("system", SYSTEM), Message("user", user)]
    replies = []
    for step in range(3):
        reply = llm.complete(LLMRequest("act", tuple(messages), tools=TOOLS, max_new_tokens=8, adapter=adapter))
        replies.append(reply.text)
        messages += [Message("assistant", reply.text), Message("tool", f"result {step}")]
    return replies


def test_kept_prefix_gives_the_logits_of_a_full_prefill(tiny_model: TinyFactory) -> None:
    import torch

    model = tiny_model(3)
    cache = PrefixCache(2**30)
    first = list(range(200, 260))
    second = first[:45] + list(range(900, 920))  # shares 45 tokens with the first
    piece, _ = KVBatch.prefill(model, first, route, "__base__")
    cache.store("__base__", first, piece.layers)
    hit = cache.lookup("__base__", second)
    assert hit is not None and hit.tokens == 45
    cached, cached_logits = KVBatch.prefill(model, second, route, "__base__", hit)
    full, full_logits = KVBatch.prefill(model, second, route, "__base__")
    assert torch.allclose(cached_logits, full_logits, atol=1e-5)
    for t in (7, 8, 9):  # and the decode steps after it
        assert torch.allclose(cached.step([t], route, ["__base__"]), full.step([t], route, ["__base__"]), atol=1e-5)


def test_an_agent_run_reuses_its_earlier_steps_and_answers_the_same(tiny_model: TinyFactory, tokenizer: Any) -> None:
    plain = TransformersLLM(tiny_model(0), tokenizer, constrained=False, prefix_cache_mb=0)
    cached = TransformersLLM(tiny_model(0), tokenizer, constrained=False)
    assert plain.prefix_cache is None and cached.prefix_cache is not None
    for user in ("What does 'harbour' mean?", "Define the word 'lantern', please."):
        assert run_steps(cached, user) == run_steps(plain, user)
    stats = cached.prefix_cache.stats
    system_tokens = len(tokenizer(SYSTEM)["input_ids"])
    # The second session's first step reuses at least the system prompt; every later step its previous step.
    assert stats.lookups == 6 and stats.hits == 5
    assert stats.reused_tokens > stats.prefilled_tokens and stats.reused_tokens > 5 * system_tokens


def test_the_same_prompt_twice_runs_only_its_last_token(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(1), tokenizer, constrained=False)
    request = LLMRequest("act", (Message("system", SYSTEM), Message("user", "Hi.")), max_new_tokens=6)
    first, second = llm.complete(request), llm.complete(request)
    assert first.text == second.text
    stats = llm.prefix_cache.stats  # type: ignore[union-attr]
    assert stats.reused_tokens == first.usage.prompt_tokens - 1
    assert stats.prefilled_tokens == first.usage.prompt_tokens + 1


def test_adapters_never_share_kept_prompts(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path) -> None:
    paths = {"one": make_lora(tiny_model, tmp_path / "one", seed=1)}
    plain = TransformersLLM(tiny_model(0), tokenizer, adapters=paths, constrained=False, prefix_cache_mb=0)
    cached = TransformersLLM(tiny_model(0), tokenizer, adapters=paths, constrained=False)
    for adapter in (None, "one", None, "one"):
        assert run_steps(cached, "What does 'anchor' mean?", adapter) == run_steps(plain, "What does 'anchor' mean?",
                                                                                  adapter)
    stats = cached.prefix_cache.stats  # type: ignore[union-attr]
    assert stats.lookups == 12 and stats.hits == 10  # each adapter's first step is a miss


def test_the_budget_evicts_least_recently_used_prompts(tiny_model: TinyFactory) -> None:
    model = tiny_model(2)
    prompts = [[1] + [100 + 10 * i + j for j in range(30)] for i in range(4)]  # share only their first token
    pieces = [KVBatch.prefill(model, p, route, "__base__")[0] for p in prompts]
    one = sum(k.numel() * k.element_size() * 2 for k, _ in pieces[0].layers)
    cache = PrefixCache(budget_bytes=3 * one)
    for prompt, piece in zip(prompts[:3], pieces, strict=False):
        cache.store("__base__", prompt, piece.layers)
    assert cache.lookup("__base__", prompts[0] + [5]) is not None  # prompt 0 is now the most recently used
    cache.store("__base__", prompts[3], pieces[3].layers)
    assert len(cache) == 3 and cache.nbytes <= cache.budget_bytes
    assert cache.lookup("__base__", prompts[1] + [5]) is None  # the least recently used went
    assert all(cache.lookup("__base__", prompts[i] + [5]) is not None for i in (0, 2, 3))
    # A prompt that extends a kept one replaces it (and, 1.6 times its size, pushes out the least recently used).
    longer = prompts[0] + list(range(500, 520))
    cache.store("__base__", longer, KVBatch.prefill(model, longer, route, "__base__")[0].layers)
    assert len(cache) == 2 and cache.nbytes <= cache.budget_bytes
    assert cache.lookup("__base__", prompts[2] + [5]) is None
    assert [cache.lookup("__base__", p + [5]).tokens for p in (prompts[0], longer, prompts[3])] == [31, 51, 31]  # type: ignore[union-attr]
    # One larger than the whole budget is not kept.
    tiny = PrefixCache(budget_bytes=one // 2)
    tiny.store("__base__", prompts[0], pieces[0].layers)
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_prefix_cache_setting_is_checked() -> None:
    assert ModelSettings().prefix_cache_mb == 256
    assert ModelSettings(prefix_cache_mb=0).prefix_cache_mb == 0
    with pytest.raises(ValidationError, match="prefix_cache_mb"):
        ModelSettings(prefix_cache_mb=-1)


def test_no_stale_prompt_is_reused_while_or_after_weights_change(tiny_model: TinyFactory, tokenizer: Any) -> None:
    import torch

    model = tiny_model(4)
    llm = TransformersLLM(model, tokenizer, constrained=False)
    request = LLMRequest("act", (Message("system", SYSTEM), Message("user", "Hi.")), max_new_tokens=8)
    llm.complete(request)  # its prompt's KV is kept

    def perturb() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)

    reference = TransformersLLM(model, tokenizer, constrained=False, prefix_cache_mb=0)
    with llm.changing_weights():  # as training does: weights change, the engine evaluates in between
        perturb()
        assert llm.complete(request).text == reference.complete(request).text
        assert llm.prefix_cache is None
    perturb()  # the entries kept before the change were dropped when the context ended
    kept = llm.prefix_cache
    assert kept is not None and len(kept) == 0
    assert llm.complete(request).text == reference.complete(request).text
