"""TransformersLLM's throughput against plain `model.generate`, all measured in this run.

    .venv/bin/python benchmarks/llm_engine.py [--threads N] [--new-tokens 64] [--sessions 1,8] [--adapters 8]
                                              [--shape bundled|tiny|qwen2.5-1.5b|llama-3-8b]
                                              [--parts throughput,first-token,adapter-switch,int4-fidelity]
                                              [--int4 auto|on|off] [--graph-tokens 1024] [--tokenizer DIR]

Every request decodes exactly --new-tokens (end tokens are masked: by a forward hook for generate, in the
sampler for the engine), greedy, on 8 different chat prompts. Prints a table and writes it as JSON next to the printed
copy under benchmarks/results/:

  - batch 1: `model.generate` (the baseline), the engine alone, the engine under a grammar (tools offered,
    tool_choice="auto", a plain answer), the same prompt decoded without the grammar (its cost alone), and the
    share of the memory-bandwidth roofline (weights read per token over the bandwidth a big tensor sum reaches
    on this device);
  - N sessions: N threads calling the engine at once (continuous batching), the same with every waiting
    prompt prefilled in a forward of its own (the scheduler's prefill_tokens = 0), the same with the start
    that prompts prefilled together share (the chat template's system turn) run by each of them (the
    scheduler's share_prefixes off), the same N requests one after another, and one padded batch-N
    `model.generate`;
  - adapters: 8 concurrent sessions with LoRA adapters (rank 16 on q/k/v/o, random non-zero B): base rows
    with PEFT loaded, all rows on one adapter, each row on its own adapter (PEFT's mixed-batch forward), with
    the time per batched decode step;
  - time to first token (a second table) on an agent's prompts (the default system prompt, 6 tool schemas,
    a request; then the run's second step, which adds the reply and a tool result): `model.generate` with
    max_new_tokens=1 on the second step's prompt, the engine with an empty prefix cache (cold), the engine
    on the second step right after the first (its prompt's prefix cached), a new session's first step
    after another session's (the system prompt and tool schemas cached), and 8 new sessions starting at once
    after another session's (the mean of their times to first token); then a chat prompt (the first of the
    throughput table's), cold; where the engine prefills through the lean step (CPU models with packed layers),
    the cached cases and the chat prompt again with transformers' prefill;
  - adapter switch (a third table): one-token requests one after another on two adapters (0, 0, 1, 1, ...),
    those on the same adapter as the request before against those on the other one (the difference is the
    cost of a switch), the first request on an adapter
    (loading it from disk), and PEFT's own `set_adapter` between two loaded adapters as the baseline;
  - int4 fidelity (when the engine packs the model's layers, [model] int4): the replies of
    agent/data/general_set.jsonl fed one token per decode step after their prompt, with the packed layers and
    with the float32 weights: mean negative log-likelihood per reply token, and how often the two steps' argmax
    agree. With --int4 auto/on, the throughput table adds the same engine runs with the float32 weights.
  - where the model has the lean decode step ([model] lean_decode, agent/llm/leanstep.py), the throughput
    table adds the same engine runs with decode steps through transformers' forward;
  - on a GPU, where decode steps replay CUDA graphs over the static slot cache ([model] cuda_graphs,
    agent/llm/slots.py), the throughput table adds the same engine runs with eager steps.

Every engine gets max_batch = the largest --sessions count (so N sessions decode as one batch) and a slot
cache of --graph-tokens positions per row (the prompts here are under 100 tokens).

The throughput runs use an engine without a prefix cache (every prompt prefilled whole, as generate does, but
for the start that prompts prefilled in one forward share, run once for them).

--shape bundled is the bundled SmolLM2-135M (weights cached under METAGENT_MODEL__CACHE_DIR); the others are
random-initialised models of those shapes (for a GPU machine, where no weights can be fetched) with the
bundled tokenizer, or the one in --tokenizer DIR (its files alone, where the bundled model is not installed),
on the device and in the dtype [model] device and dtype pick (a GPU and bfloat16 where there is one).
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Write a short story about a dragon who keeps a lighthouse.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List some good habits for writing clean Python code, and say why each matters.",
    "What should I pack for a week of hiking in the mountains in autumn?",
    "Describe the water cycle.",
    "Give me three ideas for a birthday party for my grandmother, who loves gardening and old films.",
    "Why is the sky blue?",
    "Summarise the plot of a detective novel you invent, in a few sentences.",
]
SHAPES: dict[str, dict[str, Any]] = {  # random-initialised Llama-architecture configs of real models' shapes
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 49152},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
    "llama-3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}
PARTS = ("throughput", "first-token", "adapter-switch", "int4-fidelity")
CALC = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the engine's default, [model] threads)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sessions", default="1,8", help="concurrent session counts, e.g. 1,8,32")
    parser.add_argument("--adapters", type=int, default=8, help="distinct adapters in the mixed batch (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="every run once per round; the table shows medians")
    parser.add_argument("--shape", default="bundled", choices=["bundled", *SHAPES])
    parser.add_argument("--int4", default="auto", choices=["auto", "on", "off"],
                        help="[model] int4 for the engine (auto: packed when the weights are exactly 4-bit, as "
                        "the bundled model's on CPU)")
    parser.add_argument("--graph-tokens", type=int, default=1024,
                        help="[model] graph_tokens: positions per row of the GPU's static KV cache")
    parser.add_argument("--tokenizer", default="", help="for a random-initialised --shape: a directory holding a "
                        "tokenizer to use instead of the bundled model's")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which tables, comma-separated, from: {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts!r}")

    if args.threads < 0:
        parser.error(f"--threads takes 0 or more; got {args.threads}")
    if args.threads:  # through the setting: loading applies [model] threads (a bare set_num_threads is undone)
        os.environ["METAGENT_MODEL__THREADS"] = str(args.threads)
    sessions = [int(c) for c in args.sessions.split(",")]
    if args.tokenizer and args.shape == "bundled":
        parser.error("--tokenizer goes with a random-initialised --shape; the bundled model has its own")
    llm = load(args.shape, args.int4, args.tokenizer, {"max_batch": max(sessions), "graph_tokens": args.graph_tokens})
    mask_stop_tokens(llm)
    device = str(llm.model.device)
    int4 = "off" if llm.int4 is None else ("on, exact 4-bit weights" if llm.int4.exact else "on, quantized")
    lean = "on" if llm.lean is not None else "off"
    graphs = "on" if llm.scheduler.slots is not None else "off"
    print(f"{args.shape} on {device} ({llm.model.dtype}, int4 decode {int4}, lean decode step {lean}, "
          f"CUDA graphs {graphs}), "
          f"decode-thread torch threads {llm.threads}, "
          f"load average {os.getloadavg()}, {args.new_tokens} new tokens per request, {args.rounds} rounds")
    rows: list[dict[str, Any]] = []
    if "throughput" in parts:
        rows = throughput(llm, args)
    first_token = time_to_first_token(llm, args.rounds) if "first-token" in parts else []
    switch = adapter_switch(llm, args.rounds) if "adapter-switch" in parts else []
    fidelity = int4_fidelity(llm) if "int4-fidelity" in parts else {}
    return {"shape": args.shape, "device": device, "gpu": gpu_name(), "int4": int4, "lean_decode": lean,
            "cuda_graphs": graphs, "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "threads": llm.threads, "load_average_after": os.getloadavg(), "rows": rows,
            "time_to_first_token": first_token, "adapter_switch": switch, "int4_fidelity": fidelity}


def throughput(llm: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(llm, args.new_tokens, args.graph_tokens)
        runs = bench.runs(sorted({int(c) for c in args.sessions.split(",")}), args.adapters, Path(folder))
        samples: dict[str, list[Sample]] = {name: [] for name, _ in runs}
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
            for name, run in runs:
                samples[name].append(run())
    rows = summarise(samples)
    rows[1].update(roofline(llm.model, rows[1]["tok_s"]))
    print_table(rows)
    return rows


def load(shape: str, int4: Any, tokenizer_dir: str, options: dict[str, Any]) -> Any:
    """The engine on the bundled model or a random-initialised one of `shape` (built on the device, in its dtype)."""
    from agent.config import Settings
    from agent.llm.engine import TransformersLLM
    from agent.llm.loading import cpu_threads, load_model, pick_device, pick_dtype, settle_threads

    settings = Settings.load()
    if tokenizer_dir:
        from transformers import AutoTokenizer

        settle_threads(settings.model.threads)  # as load_model does

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        device = pick_device(settings.model.device)
        dtype = pick_dtype(settings.model.dtype, device)
    else:
        loaded = load_model(settings)
        tokenizer, device, dtype = loaded.tokenizer, str(loaded.model.device), loaded.model.dtype
    if shape == "bundled":
        model, name = loaded.model, loaded.name
    else:
        model, name = random_model(shape, device, dtype), shape
    llm = TransformersLLM(model, tokenizer, name=name, prefix_cache_mb=0, int4=int4,
                          graph_tokens=options["graph_tokens"], threads=cpu_threads(settings.model.threads))
    llm.max_batch = options["max_batch"]
    return llm


def random_model(shape: str, device: str, dtype: Any) -> Any:
    """A random-initialised Llama of `shape`, built on `device` in `dtype` (an 8B model in float32 is 32 GB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, tie_word_embeddings=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    finally:
        torch.set_default_dtype(default)


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


MASKING = {"on": True}  # int4_fidelity turns it off: it scores the replies' end tokens


def mask_stop_tokens(llm: Any) -> None:
    """Every request decodes exactly new_tokens: the end tokens' logits are -inf after every forward."""
    stop = sorted(llm.stop_ids)

    def hook(module: Any, args: Any, output: Any) -> None:
        if MASKING["on"]:
            output.logits[..., stop] = float("-inf")

    llm.model.register_forward_hook(hook)  # generate
    from agent.llm.decoding import Sampler

    if not getattr(Sampler.choose, "masks_stop_tokens", False):  # the engine (lean steps and graphs call no forward)
        choose = Sampler.choose

        def masked(self: Any, logits: Any) -> int:
            if MASKING["on"]:
                logits[stop] = float("-inf")
            return choose(self, logits)

        masked.masks_stop_tokens = True  # type: ignore[attr-defined]
        Sampler.choose = masked  # type: ignore[method-assign]


def request(index: int, new_tokens: int, adapter: str | None = None, tools: bool = False) -> Any:
    from agent.types import LLMRequest, Message, ToolSpec

    offered = (ToolSpec("calculator", "Evaluate arithmetic.", CALC),) if tools else ()
    return LLMRequest("answer", (Message("user", PROMPTS[index % len(PROMPTS)]),), tools=offered,
                      adapter=adapter, max_new_tokens=new_tokens)


@dataclass(frozen=True)
class Sample:
    seconds: float
    tokens: int
    steps: int = 0
    step_s: float = 0.0


Run = Callable[[], Sample]


class Bench:
    def __init__(self, llm: Any, new_tokens: int, graph_tokens: int) -> None:
        self.llm = llm
        self.new_tokens = new_tokens
        self.graph_tokens = graph_tokens
        # The grammar's cost alone: the same model, prompt (tool schemas included) and packing, decoded freely.
        self.free = self.variant(constrained=False)

    def variant(self, model: Any = None, **changes: Any) -> Any:
        """An engine on the same model (or `model`) and packing, without a prefix cache, with `changes` to its
        arguments."""
        from agent.llm.engine import TransformersLLM

        options = {"name": self.llm.name, "prefix_cache_mb": 0, "int4": "off" if self.llm.int4 is None else "on",
                   "graph_tokens": self.graph_tokens, "threads": self.llm.threads}
        llm = TransformersLLM(model or self.llm.model, self.llm.tokenizer, **{**options, **changes})
        llm.max_batch = self.llm.max_batch
        return llm

    def runs(self, sessions: list[int], adapters: int, folder: Path) -> list[tuple[str, Run]]:
        """Every measurement, by name; the first is the baseline, the second the engine at batch 1."""
        n = self.new_tokens
        runs: list[tuple[str, Run]] = [
            ("generate, batch 1", lambda: self.generate([0])),
            ("engine, 1 session", lambda: self.engine(self.llm, [request(0, n)])),
            ("engine, 1 session, grammar (tools, auto)", lambda: self.engine(self.llm, [request(0, n, tools=True)])),
            ("engine, 1 session, same prompt, no grammar",
             lambda: self.engine(self.free, [request(0, n, tools=True)])),
        ]
        serial = self.variant()  # the same engine, each waiting prompt prefilled in a forward of its own
        serial.scheduler.prefill_tokens = 0
        for count in (c for c in sessions if c > 1):
            requests = [request(i, n) for i in range(count)]
            runs += [(f"engine, {count} sessions one after another", partial(self.sequential, requests)),
                     (f"engine, {count} concurrent sessions", partial(self.engine, self.llm, requests)),
                     (f"engine, {count} concurrent sessions, one prefill per prompt",
                      partial(self.engine, serial, requests)),
                     (f"engine, {count} concurrent sessions, no shared start", partial(self.unshared, requests)),
                     (f"generate, one padded batch of {count}", partial(self.generate, list(range(count))))]
        if self.llm.int4 is not None:  # the same model, decode steps reading its float32 weights
            runs += self.same_requests(self.variant(int4="off"), "int4 off (float32 weights)", sessions)
        if self.llm.lean is not None:  # the same engine, decode steps through transformers' forward
            runs += self.same_requests(self.variant(lean_decode=False), "transformers' forward (lean_decode off)",
                                       sessions)
        if self.llm.scheduler.slots is not None:  # the same engine, eager steps over the growing cache
            runs += self.same_requests(self.variant(cuda_graphs=False), "eager steps (cuda_graphs off)", sessions)
        if adapters:
            runs += self.adapter_runs(adapters, folder)
        return runs

    def same_requests(self, llm: Any, label: str, sessions: list[int]) -> list[tuple[str, Run]]:
        """The engine's 1-session and N-concurrent runs on another engine, named with `label`."""
        n = self.new_tokens
        runs: list[tuple[str, Run]] = [(f"engine, 1 session, {label}", lambda: self.engine(llm, [request(0, n)]))]
        runs += [(f"engine, {count} concurrent sessions, {label}",
                  partial(self.engine, llm, [request(i, n) for i in range(count)])) for count in sessions if count > 1]
        return runs

    def adapter_runs(self, count: int, folder: Path) -> list[tuple[str, Run]]:
        """A second engine on a copy of the model (so the runs above see a model without PEFT)."""
        names = make_adapters(self.llm.model, folder, count)
        tuned = self.variant(copy.deepcopy(self.llm.model), adapters={name: folder / name for name in names})
        self.engine(tuned, [request(i, 2, adapter=name) for i, name in enumerate(names)])  # load them all
        runs: list[tuple[str, Run]] = []
        for label, chosen in (("base rows, PEFT loaded", [None] * count), ("one adapter", [names[0]] * count),
                              (f"{count} distinct adapters", names)):
            requests = [request(i, self.new_tokens, adapter=a) for i, a in enumerate(chosen)]
            runs.append((f"engine, {count} concurrent, {label}", partial(self.engine, tuned, requests)))
        return runs

    def engine(self, llm: Any, requests: Sequence[Any]) -> Sample:
        """Every request started at once, each in its own thread: wall time and the tokens they got."""
        before = (llm.scheduler.steps, llm.scheduler.step_s)
        counts: list[int] = []
        barrier = threading.Barrier(len(requests) + 1)

        def call(r: Any) -> None:
            barrier.wait()
            counts.append(llm.complete(r).usage.completion_tokens)

        threads = [threading.Thread(target=call, args=(r,)) for r in requests]
        for t in threads:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        return Sample(seconds, sum(counts), llm.scheduler.steps - before[0], llm.scheduler.step_s - before[1])

    def unshared(self, requests: Sequence[Any]) -> Sample:
        """`engine`, with each prompt of a shared prefill running the start it shares with the others."""
        self.llm.scheduler.share_prefixes = False
        try:
            return self.engine(self.llm, requests)
        finally:
            self.llm.scheduler.share_prefixes = True

    def sequential(self, requests: Sequence[Any]) -> Sample:
        started = time.perf_counter()
        tokens = sum(self.llm.complete(r).usage.completion_tokens for r in requests)
        return Sample(time.perf_counter() - started, tokens)

    def generate(self, indices: list[int]) -> Sample:
        import torch

        from agent.llm.loading import on_threads

        llm = self.llm
        prompts = [llm.prompt_ids(request(i, self.new_tokens)) for i in indices]
        width = max(map(len, prompts))
        pad = sorted(llm.stop_ids)[0]
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=llm.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=llm.model.device)
        started = time.perf_counter()
        def generate() -> Any:
            with torch.inference_mode():
                return llm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.new_tokens,
                                          do_sample=False, pad_token_id=pad)

        out = on_threads(llm.threads, generate)  # as the engine computes: loading.on_threads
        return Sample(time.perf_counter() - started, len(indices) * (out.shape[1] - width))


def summarise(samples: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """Per run: the median tok/s over the rounds (and the range), its ratio to the first run's median."""
    rows = []
    for name, runs in samples.items():
        rates = sorted(s.tokens / s.seconds for s in runs)
        steps = sum(s.steps for s in runs)
        row: dict[str, Any] = {"name": name, "tok_s": round(statistics.median(rates), 2),
                               "tok_s_range": [round(rates[0], 2), round(rates[-1], 2)],
                               "tokens": runs[0].tokens}
        if steps:
            row["ms_per_step"] = round(sum(s.step_s for s in runs) / steps * 1000, 1)
        rows.append(row)
    for row in rows:
        row["x_generate_b1"] = round(row["tok_s"] / rows[0]["tok_s"], 2)
    return rows


AGENT_TOOLS = {  # name: (description, the one string parameter)
    "calculator": ("Evaluate an arithmetic expression exactly and return the number.", "expression"),
    "search_docs": ("Search the user's indexed documents and return the most relevant passages.", "query"),
    "read_file": ("Read a text file from the workspace and return its contents (at most 64 KiB).", "path"),
    "python": ("Run Python code in the sandbox and return what it prints; no network access.", "code"),
    "weather": ("Get the current weather and a three-day forecast for a city.", "city"),
    "send_email": ("Send an email from the user's account; asks the user for approval first.", "to"),
}


def agent_request(user: str, step: int) -> Any:
    """An agent's act prompt: system prompt, tool schemas, the request; step 2 adds a call and its result."""
    from agent.config import AgentSettings
    from agent.types import LLMRequest, Message, ToolSpec

    tools = tuple(ToolSpec(name, description, {"type": "object", "properties": {key: {
        "type": "string", "description": f"the {key} to use"}}, "required": [key]})
        for name, (description, key) in AGENT_TOOLS.items())
    messages = [Message("system", AgentSettings().system_prompt), Message("user", user)]
    if step == 2:
        messages += [Message("assistant", '<tool_call>\n{"name": "calculator", "arguments": {"expression": '
                             '"1250 * 0.0825"}}\n</tool_call>'), Message("tool", "103.125")]
    return LLMRequest("act", tuple(messages), tools=tools, max_new_tokens=1)


def time_to_first_token(base: Any, rounds: int) -> list[dict[str, Any]]:
    """Milliseconds to the first token of an agent's prompts, cold and with a cached prefix (see the module doc)."""
    import torch

    from agent.llm.engine import TransformersLLM
    from agent.llm.loading import on_threads

    llm = TransformersLLM(base.model, base.tokenizer, name=base.name, threads=base.threads,  # default prefix cache
                          int4="off" if base.int4 is None else "on")  # packed as `base` is
    prefix = llm.prefix_cache
    assert prefix is not None
    first = agent_request("What is the sales tax on 1250 dollars at 8.25%?", 1)
    second = agent_request("What is the sales tax on 1250 dollars at 8.25%?", 2)
    other = agent_request("Summarise the meeting notes in notes/monday.md for me.", 1)
    ids = torch.tensor([llm.prompt_ids(second)], device=llm.model.device)

    def baseline() -> None:
        with torch.inference_mode():
            llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                               do_sample=False, pad_token_id=sorted(llm.stop_ids)[0])

    def generate() -> None:
        on_threads(llm.threads, baseline)

    def timed(request: Any, before: Any = None) -> float:
        prefix.clear()
        if before is not None:
            llm.complete(before)
        started = time.perf_counter()
        llm.complete(request)
        return (time.perf_counter() - started) * 1000

    users = ["Summarise the meeting notes in notes/monday.md for me.", "What is 17% of 2,340?",
             "Find the docs that explain the sandbox's network policy.", "Email Ana the weather in Lisbon.",
             "Run a Python snippet that prints the first ten primes.", "Read README.md and list the commands.",
             "How warm will it be in Oslo tomorrow?", "Search the docs for 'prefix cache' and explain it."]
    sessions = [agent_request(user, 1) for user in users]

    def together() -> float:
        """The mean time to first token of `sessions` started at once, after `first` (system + tools cached)."""
        prefix.clear()
        llm.complete(first)
        barrier, taken = threading.Barrier(len(sessions)), []

        def call(request: Any) -> None:
            barrier.wait()
            started = time.perf_counter()
            llm.complete(request)
            taken.append(time.perf_counter() - started)

        threads = [threading.Thread(target=call, args=(r,)) for r in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.mean(taken) * 1000

    def transformers_prefill(case: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            llm.scheduler.lean_prefill = False
            try:
                return case()
            finally:
                llm.scheduler.lean_prefill = True
        return run

    llm.complete(first)  # compiles the tool set's grammar once, as a running agent already has
    chat = request(0, 1)
    steps, session, chatted = len(ids[0]), len(llm.prompt_ids(other)), len(llm.prompt_ids(chat))
    mean_tokens = round(statistics.mean(len(llm.prompt_ids(r)) for r in sessions))
    cases: list[tuple[str, int, Callable[[], float]]] = [  # name, prompt tokens, one timing
        ("generate, max_new_tokens=1", steps, lambda: _ms(generate)),
        ("engine, cold (empty prefix cache)", steps, lambda: timed(second)),
        ("engine, next step of the run (prefix cached)", steps, lambda: timed(second, before=first)),
        ("engine, new session (system + tools cached)", session, lambda: timed(other, before=first)),
        (f"engine, {len(sessions)} new sessions at once (mean)", mean_tokens, together),
        ("engine, a chat prompt, cold", chatted, lambda: timed(chat)),
    ]
    if llm.lean is not None and llm.lean.prefills_on(llm.model.device.type, None):  # the lean prefill applies
        cases += [(f"{name}, transformers' prefill", tokens, transformers_prefill(case))
                  for name, tokens, case in cases[2:] if "at once" not in name]
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(max(rounds, 3)):
        for (_, _, case), taken in zip(cases, times, strict=True):
            taken.append(case())
    cold = statistics.median(times[1])
    rows: list[dict[str, Any]] = []
    width = max(len(name) for name, _, _ in cases)
    title = "time to first token (median of the rounds)"
    print(f"\n| {title:{width}s} | prompt tokens | ms | range | of engine cold |")
    print(f"| {'-' * width} | ---: | ---: | ---: | ---: |")
    for (name, tokens, _), ms in zip(cases, times, strict=True):
        median = statistics.median(ms)
        rows.append({"name": name, "prompt_tokens": tokens, "ms": round(median, 1),
                     "ms_range": [round(min(ms), 1), round(max(ms), 1)], "of_cold": round(median / cold, 2)})
        print(f"| {name:{width}s} | {tokens} | {median:.1f} | {min(ms):.1f}-{max(ms):.1f} | {median / cold:.0%} |")
    return rows


def adapter_switch(base: Any, rounds: int) -> list[dict[str, Any]]:
    """Milliseconds per one-token request on one adapter, alternating two, and the first use; PEFT's set_adapter."""
    from peft import PeftModel

    from agent.llm.engine import TransformersLLM

    repeats = 8 * max(rounds, 3)
    with tempfile.TemporaryDirectory() as folder:
        names = make_adapters(base.model, Path(folder), 2)
        llm = TransformersLLM(copy.deepcopy(base.model), base.tokenizer, name=base.name, threads=base.threads,
                              prefix_cache_mb=0,
                              adapters={name: Path(folder) / name for name in names})
        ask = [request(0, 1, adapter=name) for name in names]
        first_use = _ms(lambda: llm.complete(ask[0]))
        llm.complete(ask[1])
        same: list[float] = []
        alternating: list[float] = []
        previous = 1
        for i in range(2 * repeats):  # adapters 0, 0, 1, 1, 0, 0, ...: every other request switches
            chosen = (i // 2) % 2
            took = _ms(partial(llm.complete, ask[chosen]))
            (same if chosen == previous else alternating).append(took)
            previous = chosen
        peft = PeftModel.from_pretrained(copy.deepcopy(base.model), str(Path(folder) / names[0]),
                                         adapter_name=names[0])
        peft.load_adapter(str(Path(folder) / names[1]), adapter_name=names[1])
        set_adapter = [_ms(lambda i=i: peft.set_adapter(names[i % 2])) for i in range(repeats)]  # type: ignore[misc]
    def spread(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4)
        return f"{q[0]:.1f}-{q[2]:.1f}"

    switch = statistics.median(alternating) - statistics.median(same)
    rows: list[dict[str, Any]] = [
        {"name": "engine, one-token request, same adapter as the last", "ms": statistics.median(same),
         "quartiles": spread(same)},
        {"name": "engine, one-token request, other adapter than the last", "ms": statistics.median(alternating),
         "quartiles": spread(alternating)},
        {"name": "  => cost of a switch (difference)", "ms": switch, "quartiles": ""},
        {"name": "engine, first request on an adapter (loads it)", "ms": first_use, "quartiles": ""},
        {"name": "PEFT set_adapter between 2 loaded adapters", "ms": statistics.median(set_adapter),
         "quartiles": spread(set_adapter)}]
    print(f"\n| {'adapter switch (medians of ' + str(repeats) + ')':56s} | ms | quartiles |")
    print(f"| {'-' * 56} | ---: | ---: |")
    for row in rows:
        row["ms"] = round(row["ms"], 2)
        print(f"| {row['name']:56s} | {row['ms']:.2f} | {row['quartiles']} |")
    return rows


def int4_fidelity(llm: Any) -> dict[str, Any]:
    """What packed 4-bit decode steps change: teacher-forced decode over agent/data/general_set.jsonl's replies
    (each prompt prefilled, then the reply fed one token per step, as the engine decodes), the reply tokens'
    mean negative log-likelihood and the steps' argmax, with the packed layers and with the float32 weights."""
    import torch

    from agent.llm.batching import KVBatch

    if llm.int4 is None:
        print("\nint4-fidelity: the engine does not pack this model's layers (see --int4)")
        return {}
    MASKING["on"] = False
    rows = [json.loads(line) for line in (ROOT / "agent/data/general_set.jsonl").read_text().splitlines() if line]
    nll: dict[str, list[float]] = {"float32": [], "int4": [], "batched": []}
    agree = {"int4": 0, "batched": 0}
    steps = 0

    def route(names: Sequence[str]) -> Any:  # base rows only: nothing to route
        return contextlib.nullcontext()

    for row in rows:
        prompt = llm.tokenizer.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=False)
        reply = row["messages"][1]["content"] + "<|im_end|>"
        prompt_ids = llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer = llm.tokenizer(prompt + reply, add_special_tokens=False)["input_ids"][len(prompt_ids):]
        chosen: dict[str, list[int]] = {}
        for mode in nll:  # batched: the reply twice in one batch (packed steps of 2 rows and more, leanstep.py)
            width = 2 if mode == "batched" else 1
            batch, logits = KVBatch.prefill(llm.model, prompt_ids, route, "__base__")
            if width == 2:
                batch.merge(KVBatch.prefill(llm.model, prompt_ids, route, "__base__")[0])
            seq = [logits]
            for token in answer[:-1]:  # packed: as the engine decodes (lean step where the model has one)
                with llm.int4.active() if mode != "float32" else contextlib.nullcontext():
                    lean = llm.lean if mode != "float32" else None
                    seq.append(batch.step([token] * width, route, ["__base__"] * width, lean)[0])
            nll[mode] += [-float(torch.log_softmax(x, -1)[t]) for x, t in zip(seq, answer, strict=True)]
            chosen[mode] = [int(x.argmax()) for x in seq[1:]]
        for mode in agree:
            agree[mode] += sum(a == b for a, b in zip(chosen["float32"], chosen[mode], strict=True))
        steps += len(answer) - 1
    result = {"tokens": len(nll["int4"]), "decode_steps": steps,
              "argmax_agreement": round(agree["int4"] / steps, 4),
              "argmax_agreement_batched": round(agree["batched"] / steps, 4),
              **{f"nll_{mode}": round(statistics.mean(values), 4) for mode, values in nll.items()}}
    print(f"\nint4-fidelity ({len(rows)} replies, {result['tokens']} tokens): mean NLL per token float32 "
          f"{result['nll_float32']}, packed one row (int4) {result['nll_int4']}, packed in a batch of 2 "
          f"(float16 copies where torch has FBGEMM) {result['nll_batched']}; decode-step argmax agreement with "
          f"float32: one row {agree['int4']}/{steps} ({agree['int4'] / steps:.2%}), batched "
          f"{agree['batched']}/{steps} ({agree['batched'] / steps:.2%})")
    return result


def _ms(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000


def make_adapters(model: Any, folder: Path, count: int) -> list[str]:
    """`count` LoRA adapters for `model` (rank 16 on q/k/v/o, random non-zero B, so each changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    names = [f"bench-{i}" for i in range(count)]
    peft_model = get_peft_model(copy.deepcopy(model), config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(param) * 0.01)
    peft_model.save_pretrained(str(folder))  # each adapter in folder/<name>/
    return names


def roofline(model: Any, rate: float) -> dict[str, Any]:
    """Weights read per token (the input embedding is a gather, unless the LM head shares it) over the
    bandwidth a big tensor sum reaches here: the batch-1 decode rate memory allows."""
    import torch

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not getattr(model.config, "tie_word_embeddings", False):
        embedding = model.get_input_embeddings().weight
        weights -= embedding.numel() * embedding.element_size()
    probe = torch.ones(256 * 2**20 // 4, dtype=torch.float32, device=model.device)  # 256 MiB
    times = []
    for _ in range(5):
        started = time.perf_counter()
        probe.sum().item()
        times.append(time.perf_counter() - started)
    bandwidth = probe.numel() * 4 / min(times)
    limit = bandwidth / weights
    print(f"weights read per token {weights / 1e6:.0f} MB; read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"roofline {limit:.1f} tok/s; engine at batch 1: {rate / limit:.1%} of it")
    return {"weights_mb": round(weights / 1e6), "bandwidth_gb_s": round(bandwidth / 1e9, 1),
            "roofline_tok_s": round(limit, 1), "share_of_roofline": round(rate / limit, 3)}


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len("run (median of the rounds)"), *(len(row["name"]) for row in rows))
    print(f"\n| {'run (median of the rounds)':{width}s} | tok/s | range | x generate b1 | ms/step |")
    print(f"| {'-' * width} | ---: | ---: | ---: | ---: |")
    for row in rows:
        low, high = row["tok_s_range"]
        print(f"| {row['name']:{width}s} | {row['tok_s']:.1f} | {low:.1f}-{high:.1f} | {row['x_generate_b1']:.2f} | "
              f"{row.get('ms_per_step', '')} |")


def _write_json(text_path: Path, report: dict[str, Any]) -> None:
    json_path = text_path.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"numbers written to {json_path}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import recorded

    with recorded("llm_engine") as text_path:
        numbers = main()
    _write_json(text_path, numbers)
