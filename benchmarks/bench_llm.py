"""LLM engine benchmark on the bundled SmolLM2-135M (CPU): loading, decode speed, grammar overhead.

    .venv/bin/python benchmarks/bench_llm.py [--threads N] [--cold]

Prints, all measured in this run:
  - cached load time (a fresh process: import + tokenizer + weights), and with --cold the first-start GGUF
    conversion into an empty cache directory;
  - tokens/s for 128 greedy tokens at batch 1 (median of 3): `model.generate` (the baseline), the engine's
    own decode loop, and the engine's loop under a grammar (tool_choice="auto" with tools: a plain answer);
  - per-token grammar cost (mask + advance) measured inside a real constrained tool call;
  - grammar compile time for 1, 3 and 30 tools.
Not a test: numbers depend on the machine and on what else runs on it (`uptime` is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEW_TOKENS = 128
CALC = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cold", action="store_true", help="also time the first-start GGUF conversion (~40 s)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "metagent-bench-cache"))
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average: {os.getloadavg()}; torch threads: {torch.get_num_threads()}")
    cache = Path(args.cache)
    if args.cold:
        time_cold_conversion()
    folder = convert(cache)
    time_cached_load(cache, args.threads)
    llm = engine(folder)
    time_decoding(llm)
    time_grammar_per_token(llm)
    time_compiles(llm)


def convert(cache: Path) -> Path:
    from agent.llm.loading import bundled_gguf, cached_conversion

    return cached_conversion(bundled_gguf(), cache)


def time_cold_conversion() -> None:
    with tempfile.TemporaryDirectory() as empty:
        started = time.perf_counter()
        convert(Path(empty))
        print(f"cold start (GGUF conversion + cache write): {time.perf_counter() - started:.1f} s")


def time_cached_load(cache: Path, threads: int) -> None:
    env = {"METAGENT_MODEL__CACHE_DIR": str(cache), "METAGENT_MODEL__THREADS": str(threads)}
    code = (
        "import time; t = time.perf_counter(); import torch; "
        "from transformers import AutoModelForCausalLM, AutoTokenizer; i = time.perf_counter() - t; "
        "from agent.config import Settings; from agent.llm.loading import load_model; "
        f"s = Settings.load(env={env!r}); m = load_model(s); total = time.perf_counter() - t; "
        "print(total, i, m.load_s, load_model(s).load_s)"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
            for _ in range(3)]
    total, imports, load, again = (statistics.median(v) for v in zip(*(map(float, r.stdout.split()) for r in runs),
                                                                      strict=True))
    print(f"cached start, fresh process (median of 3): {total:.2f} s = {imports:.2f} s importing torch and "
          f"transformers + {load:.2f} s in load_model, of which {again:.2f} s reading the tokenizer and weights "
          "(a second load_model in the same process); the rest is transformers importing its Llama modules")


def engine(folder: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.llm.engine import TransformersLLM

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return TransformersLLM(model, tokenizer)


def time_decoding(llm: Any) -> None:
    import torch

    from agent.llm.decoding import Generation
    from agent.types import LLMRequest, Message, ToolSpec

    story = LLMRequest("answer", (Message("user", "Write a long story about a dragon and a lighthouse."),),
                       tools=(ToolSpec("calculator", "Evaluate arithmetic.", CALC),), tool_choice="auto")
    prompt = llm.prompt_ids(story)
    ids = torch.tensor([prompt])
    # End tokens are masked so that every run decodes exactly NEW_TOKENS (generate: min_new_tokens).
    no_stop = _NoStop(llm.model, llm.stop_ids)

    def generate() -> int:
        out = llm.model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        return int(out.shape[1] - ids.shape[1])

    def loop(constrained: bool) -> int:
        constraint = llm._grammars.for_request(story) if constrained else None
        return sum(1 for _ in Generation(no_stop, frozenset(), constraint).tokens(prompt, NEW_TOKENS, 0.0))

    runs: dict[str, list[float]] = {"model.generate": [], "engine loop": [], "engine loop + grammar": []}
    for _ in range(3):
        for name, fn in (("model.generate", generate), ("engine loop", lambda: loop(False)),
                         ("engine loop + grammar", lambda: loop(True))):
            started = time.perf_counter()
            count = fn()
            runs[name].append(count / (time.perf_counter() - started))
    base = statistics.median(runs["model.generate"])
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:24s} {median:6.1f} tok/s  ({median / base:.2f}x generate; runs {[round(v, 1) for v in values]})")


class _NoStop:
    """The model with its end tokens masked, so that every run decodes exactly NEW_TOKENS tokens."""

    def __init__(self, model: Any, stop_ids: frozenset[int]) -> None:
        self.inner, self.config, self.device, self.forward = model, model.config, model.device, model.forward
        self.stop_ids = sorted(stop_ids)

    def __call__(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        out.logits[..., self.stop_ids] = float("-inf")
        return out


def time_grammar_per_token(llm: Any) -> None:
    from agent.llm import grammar
    from agent.types import LLMRequest, Message, ToolSpec

    spent: list[float] = []
    original_mask, original_advance = grammar.TokenConstraint.mask, grammar.TokenConstraint.advance

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent.append(time.perf_counter() - started)
        return wrapper

    grammar.TokenConstraint.mask = timed(original_mask)  # type: ignore[method-assign]
    grammar.TokenConstraint.advance = timed(original_advance)  # type: ignore[method-assign]
    try:
        tools = (ToolSpec("calculator", "Arithmetic.", CALC), ToolSpec("get_weather", "Weather.", WEATHER))
        request = LLMRequest("act", (Message("user", "What is the weather in Oslo for 3 days?"),), tools=tools,
                             tool_choice="required", max_new_tokens=120)
        started = time.perf_counter()
        reply = llm.complete(request)
        elapsed = time.perf_counter() - started
    finally:
        grammar.TokenConstraint.mask, grammar.TokenConstraint.advance = original_mask, original_advance
    tokens = reply.usage.completion_tokens
    print(f"constrained tool call: {tokens} tokens in {elapsed:.2f} s; grammar work {sum(spent) * 1000:.1f} ms "
          f"= {sum(spent) / max(tokens, 1) * 1e6:.0f} us/token ({sum(spent) / elapsed:.1%} of the call); "
          f"calls: {[c.name for c in reply.tool_calls]}")


def time_compiles(llm: Any) -> None:
    from agent.llm.grammar import Grammars
    from agent.types import LLMRequest, Message, ToolSpec

    started = time.perf_counter()
    grammars = Grammars(llm.tokenizer, llm._grammars.vocab_size, sorted(llm.stop_ids))
    print(f"grammar tokenizer info: {time.perf_counter() - started:.2f} s (once per engine)")
    for count in (1, 3, 30):
        tools = tuple(ToolSpec(f"tool_{i}", "x", WEATHER if i % 2 else CALC) for i in range(count))
        times = []
        for choice in ("required", "auto", "required"):
            request = LLMRequest("act", (Message("user", "x"),), tools=tools, tool_choice=choice)  # type: ignore[arg-type]
            started = time.perf_counter()
            grammars.for_request(request)
            times.append((time.perf_counter() - started) * 1000)
        print(f"compile {count:2d} tools: required {times[0]:.0f} ms, auto {times[1]:.0f} ms, cached {times[2]:.2f} ms")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import recorded

    with recorded("bench_llm"):
        main()
