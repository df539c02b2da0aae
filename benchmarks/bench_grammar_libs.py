"""xgrammar (what the engine uses) against llguidance on the same tool-call grammar, CPU, SmolLM2's 49k vocab.

    .venv/bin/python benchmarks/bench_grammar_libs.py

llguidance is not a metagent dependency: `pip install llguidance` to run its half. Measures, in this run:
tokenizer analysis (once per engine), compile time per tool set, and the per-token cost of computing the
mask and advancing the matcher over a valid two-call reply and over a plain-text answer.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.llm.grammar import grammar_format  # noqa: E402
from agent.types import ToolSpec  # noqa: E402

VOCAB = 49152
SCHEMAS = [
    {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]},
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}},
     "required": ["city", "unit"]},
    {"type": "object", "properties": {"query": {"type": "string"},
                                      "filters": {"type": "object", "properties": {"site": {"type": "string"}},
                                                  "required": ["site"]},
                                      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
     "required": ["query", "filters"]},
]
NAMES = ["calculator", "get_weather", "search"]
CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris, France", "unit": "c", "days": 3}}\n'
    '</tool_call>\n<tool_call>\n{"name": "search", "arguments": {"query": "best restaurants in the old town", '
    '"filters": {"site": "example.com"}, "tags": ["food", "travel"]}}\n</tool_call>'
)
ANSWER = ("The capital of France is Paris. It is a city steeped in history and culture, known for its landmarks "
          "like the Eiffel Tower, the Louvre Museum and Notre-Dame Cathedral. ") * 2


def tools(count: int) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(NAMES[i % 3] + (str(i // 3) if i >= 3 else ""), "x", SCHEMAS[i % 3])
                 for i in range(count))


def lark(specs: tuple[ToolSpec, ...], auto: bool) -> str:
    """The same grammar in llguidance's Lark dialect (fixed JSON separators, closed objects)."""
    lines = ["start: calls | answer" if auto else "start: calls", 'calls: call ("\\n" call)*',
             'call: "<tool_call>\\n" (' + " | ".join(f"t{i}" for i in range(len(specs))) + ') "\\n</tool_call>"']
    for i, spec in enumerate(specs):
        schema = dict(spec.parameters, additionalProperties=False,
                      **{"x-guidance": {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}})
        prefix = '{"name": "' + spec.name + '", "arguments": '
        lines += [f't{i}: {json.dumps(prefix)} a{i} "}}"', f"a{i}: %json {json.dumps(schema)}"]
    if auto:
        lines += ["answer: TEXT", r"TEXT: /[^<\s][\s\S]*/ & ~/[\s\S]*<tool_call>[\s\S]*/"]
    return "\n".join(lines) + "\n"


def per_token_us(step: Callable[[int], None], ids: list[int]) -> str:
    times = []
    for token in ids:
        started = time.perf_counter()
        step(token)
        times.append(time.perf_counter() - started)
    return f"mean {statistics.mean(times) * 1e6:.0f} us, median {statistics.median(times) * 1e6:.0f} us"


def bench_xgrammar(tokenizer: Any, calls: list[int], answer: list[int]) -> None:
    import xgrammar as xgr

    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB, stop_token_ids=[tokenizer.eos_token_id])
    print(f"xgrammar: tokenizer info {time.perf_counter() - started:.2f} s")
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def compile_(count: int, choice: str) -> Any:
        fmt = grammar_format(tools(count), choice, None)  # type: ignore[arg-type]
        return compiler.compile_structural_tag(json.dumps({"type": "structural_tag", "format": fmt}))

    compile_(1, "required")  # warm-up
    for count in (3, 30):
        started = time.perf_counter()
        compile_(count, "auto")
        print(f"xgrammar: compile {count} tools {(time.perf_counter() - started) * 1000:.0f} ms")
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)
    for label, ids in (("two calls", calls), ("text answer", answer)):
        matcher = xgr.GrammarMatcher(compile_(3, "auto"))

        def step(token: int, m: Any = matcher) -> None:
            m.fill_next_token_bitmask(bitmask)
            m.accept_token(token)

        print(f"xgrammar: mask+advance per token, {label}: {per_token_us(step, ids)}")


def bench_llguidance(tokenizer: Any, calls: list[int], answer: list[int]) -> None:
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError:
        print("llguidance: not installed, skipped")
        return
    started = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=VOCAB)
    print(f"llguidance: tokenizer info {time.perf_counter() - started:.2f} s")

    def compile_(count: int, auto: bool) -> Any:
        return llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_lark(lark(tools(count), auto)))

    compile_(1, False)  # warm-up
    for count in (3, 30):
        started = time.perf_counter()
        compile_(count, True)
        print(f"llguidance: compile {count} tools {(time.perf_counter() - started) * 1000:.0f} ms")
    bitmask = llguidance.torch.allocate_token_bitmask(1, VOCAB)
    for label, ids in (("two calls", calls), ("text answer", answer)):
        matcher = compile_(3, True)

        def step(token: int, m: Any = matcher) -> None:
            llguidance.torch.fill_next_token_bitmask(m, bitmask)
            m.consume_token(token)

        print(f"llguidance: mask+advance per token, {label}: {per_token_us(step, ids)}")


def main() -> None:
    from transformers import AutoTokenizer

    from agent.llm.loading import bundled_gguf, cached_conversion

    folder = cached_conversion(bundled_gguf(), Path(sys.argv[1]) if len(sys.argv) > 1 else
                               Path("/tmp/metagent-bench-cache"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    calls = tokenizer.encode(CALLS, add_special_tokens=False) + [tokenizer.eos_token_id]
    answer = tokenizer.encode(ANSWER, add_special_tokens=False) + [tokenizer.eos_token_id]
    print(f"sequences: two calls {len(calls)} tokens, text answer {len(answer)} tokens")
    bench_xgrammar(tokenizer, calls, answer)
    bench_llguidance(tokenizer, calls, answer)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import recorded

    with recorded("bench_grammar_libs"):
        main()
