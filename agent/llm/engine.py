"""TransformersLLM: the in-process engine behind the `LLM` seam (transformers + torch).

One resident model serves every session of the process. Concurrent requests are batched continuously by
one decode thread (scheduler.py): a request that arrives while others decode joins their batch at the next
step, each row with its own grammar, sampling, limits and adapter; a stream closed early leaves the batch.
At most `max_batch` rows decode at once ([model] max_batch); the rest wait their turn.

A prompt that starts like an earlier one (the same system prompt and tool schemas, or the previous step of
the same run) is prefilled only past the shared prefix: the KV of recent prompts is kept, per adapter, up to
[model] prefix_cache_mb (prefixcache.py).

Prompts use the tokenizer's chat template. A template that speaks the Hermes <tool_call> format natively
(it mentions `tools` and `<tool_call>`, e.g. Qwen2.5) gets the tools through `tools=`; any other (SmolLM2)
gets them in the system message (`toolformat.with_tools`). `role="tool"` messages become user messages
starting "Tool result:" when the template has no tool role.

Adapters are PEFT LoRA directories, loaded on first use into the one base model (the base is never
reloaded); a request names its adapter, `adapter=None` runs the base model. Rows with different adapters
decode in the same forward (lora.py).

A call block that repeats an earlier one of the same reply ends the reply, and the repeat is dropped from
`tool_calls` (it stays in `text`, which always equals the streamed deltas): small models loop.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.errors import ConfigError, LLMError
from agent.llm.decoding import FinishReason, Sampler, TextStream
from agent.llm.grammar import Grammars
from agent.llm.int4 import Int4Decode, Mode
from agent.llm.leanstep import LeanDecode
from agent.llm.loading import Progress, cpu_threads, load_model
from agent.llm.lora import LoraSet
from agent.llm.prefixcache import PrefixCache
from agent.llm.scheduler import Done, Job, Scheduler
from agent.llm.slots import SlotCache
from agent.llm.toolformat import CALL_CLOSE, CALL_OPEN, parse_reply, with_tools
from agent.types import LLMDelta, LLMReply, LLMRequest, Message, Usage

# End-of-turn tokens of common chat formats: generation stops on any of them that the vocabulary has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class TransformersLLM:
    """Runs requests on a local transformers causal LM, with grammar-constrained tool calls and LoRA adapters.

    Build it with `from_settings` (loads the configured model) or directly from a loaded model and tokenizer
    (tests use a tiny random model). It does not download weights or truncate prompts: a prompt too long for
    the context is an LLMError, raised in its caller alone.
    """

    def __init__(self, model: Any, tokenizer: Any, *, adapters: Mapping[str, Path] | None = None,
                 constrained: bool = True, name: str = "model", prefix_cache_mb: int = 256,
                 int4: Mode = "auto", lean_decode: bool = True, cuda_graphs: bool = True,
                 graph_tokens: int = 4096, threads: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.stop_ids = _stop_ids(model, tokenizer)
        self.context_tokens = _context_tokens(model, tokenizer)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._grammars = Grammars(tokenizer, vocab_size, sorted(self.stop_ids)) if constrained else None
        template = str(getattr(tokenizer, "chat_template", "") or "")
        self._native_tools = "tools" in template and CALL_OPEN in template
        self._tool_role = "'tool'" in template or '"tool"' in template
        self._lora = LoraSet(model, adapters)
        prefix = PrefixCache(prefix_cache_mb * 2**20) if prefix_cache_mb > 0 else None
        self.int4 = Int4Decode.prepare(model, int4)  # None: decode reads the weights as loaded
        decoding = self.int4.active if self.int4 is not None else nullcontext
        self.lean = LeanDecode.build(model, self.int4) if lean_decode else None  # None: transformers' forward
        # on CUDA: decode steps replay CUDA graphs over a static KV cache (slots.py); None elsewhere
        slots = SlotCache.for_model(model, self.lean, min(graph_tokens, self.context_tokens), cuda_graphs)
        self._scheduler = Scheduler(model, self._lora, prefix=prefix, decoding=decoding, lean=self.lean,
                                    slots=slots, threads=threads)
        self.repetition_penalty = 1.0  # free text only; see decoding.penalize

    @classmethod
    def from_settings(cls, settings: Settings, progress: Progress | None = None,
                      adapters: Mapping[str, Path] | None = None) -> TransformersLLM:
        loaded = load_model(settings, progress)
        llm = cls(loaded.model, loaded.tokenizer, adapters=adapters, constrained=settings.model.constrained,
                  name=loaded.name, prefix_cache_mb=settings.model.prefix_cache_mb, int4=settings.model.int4,
                  lean_decode=settings.model.lean_decode, cuda_graphs=settings.model.cuda_graphs,
                  graph_tokens=settings.model.graph_tokens, threads=cpu_threads(settings.model.threads))
        llm.repetition_penalty = settings.model.repetition_penalty
        llm.max_batch = settings.model.max_batch
        if progress is not None and llm.int4 is not None:
            kind = "exact 4-bit weights" if llm.int4.exact else "quantized from the loaded weights"
            progress(f"decode steps read 4-bit packed layers ({kind}; [model] int4 = \"off\" turns this off)")
        return llm

    @property
    def constrained(self) -> bool:
        return self._grammars is not None

    @property
    def max_batch(self) -> int:
        """How many requests decode together; more wait for a free row."""
        return self._scheduler.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        if value < 1:
            raise ConfigError(f"max_batch must be at least 1, got {value}; set [model] max_batch to 1 or more")
        self._scheduler.max_batch = value

    @property
    def threads(self) -> int:
        """The decode thread's torch CPU threads (loading.cpu_threads; training uses them too); 0: as they are.
        A change applies when the decode thread next starts (it exits when idle)."""
        return self._scheduler.threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._scheduler.threads = value

    @property
    def scheduler(self) -> Scheduler:
        """The decode thread's scheduler (its counters: steps, max_rows_seen, waiting, running)."""
        return self._scheduler

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The prompts' KV kept for reuse (its `stats`: lookups, hits, reused and prefilled tokens); None when off."""
        return self._scheduler.prefix

    @contextmanager
    def changing_weights(self) -> Iterator[None]:
        """Around code that changes the model's weights in place (training does): no prompt's KV is kept or
        reused meanwhile, and what was kept before is dropped (it was computed with the old weights)."""
        scheduler = self._scheduler
        kept, scheduler.prefix = scheduler.prefix, None
        try:
            yield
        finally:
            if kept is not None:
                kept.clear()
            scheduler.prefix = kept

    @property
    def adapters(self) -> list[str]:
        return self._lora.names

    def add_adapter(self, name: str, path: Path) -> None:
        """Make an adapter available to requests (loaded on first use); a retrained one replaces its namesake
        for requests that start after this call."""
        self._lora.add(name, path)

    def complete(self, request: LLMRequest) -> LLMReply:
        for item in self.stream(request):
            if isinstance(item, LLMReply):
                return item
        raise LLMError("the engine produced no reply")  # unreachable: stream always ends with a reply

    def stream(self, request: LLMRequest) -> Generator[LLMDelta | LLMReply, None, None]:
        """Text deltas as decoded (they join to the reply's `text`), then one LLMReply.

        Closing the generator early (or dropping it) cancels the request: its row leaves the batch.
        """
        job = self._job(request)
        self._scheduler.submit(job)
        text = TextStream(self.tokenizer)
        calls: set[str] = set()
        finish: FinishReason = "length"
        count = 0
        try:
            for event in job.results():
                if isinstance(event, Done):
                    finish, count = event.finish_reason, event.completion_tokens
                    break
                count += 1
                delta = text.push(event)
                if delta:
                    yield LLMDelta(delta)
                if _repeats_a_call(text.text, calls):
                    finish = "stop"
                    break
        finally:
            job.cancel()  # a no-op once the job is done; otherwise its row leaves the batch
        rest = text.finish()
        if rest:
            yield LLMDelta(rest)
        usage = Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=count)
        yield _reply(text.text, request, usage, finish)

    def _job(self, request: LLMRequest) -> Job:
        """Everything a request needs before it can decode; its mistakes raise here, in the caller."""
        prompt_ids = self.prompt_ids(request)
        self._lora.check(request.adapter)
        constraint = self._grammars.for_request(request) if self._grammars is not None else None
        sampler = Sampler(self.stop_ids, request.max_new_tokens, constraint, request.temperature,
                          self.repetition_penalty)
        return Job(prompt_ids, request.adapter, sampler)

    def render_prompt(self, request: LLMRequest) -> str:
        """The prompt text exactly as the model sees it."""
        messages = list(request.messages)
        native = self._native_tools and bool(request.tools) and request.tool_choice != "none"
        if not native:
            messages = with_tools(messages, request.tools, request.tool_choice)
        tools = [_openai_tool(t) for t in request.tools] if native else None
        try:
            prompt: str = self.tokenizer.apply_chat_template(
                [self._message_dict(m) for m in messages], tools=tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # jinja TemplateError: e.g. a template that insists on alternating roles
            raise LLMError(f"the model's chat template rejected the messages: {e}") from e
        return prompt

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        """The prompt's token ids; raises LLMError when prompt plus max_new_tokens exceed the context."""
        if request.max_new_tokens < 1:
            raise LLMError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        ids: list[int] = self.tokenizer(self.render_prompt(request), add_special_tokens=False)["input_ids"]
        if len(ids) + request.max_new_tokens > self.context_tokens:
            raise LLMError(
                f"the prompt is {len(ids)} tokens; with max_new_tokens={request.max_new_tokens} it exceeds the "
                f"model's context of {self.context_tokens} tokens. Shorten the conversation (fewer history "
                "messages, smaller tool results or documents) or lower max_new_tokens."
            )
        return ids

    def _message_dict(self, message: Message) -> dict[str, str]:
        if message.role == "tool" and not self._tool_role:
            return {"role": "user", "content": f"Tool result:\n{message.content}"}
        return message.to_dict()


def _reply(text: str, request: LLMRequest, usage: Usage, finish: FinishReason) -> LLMReply:
    names = [t.name for t in request.tools]
    cut = _cut_call_start(text) if finish == "length" else None
    if cut is None:
        return _unique_calls(parse_reply(text, names, usage, finish))
    # max_new_tokens ran out inside a call: say so plainly instead of "invalid JSON".
    reply = parse_reply(text[:cut], names, usage, "length")
    error = (
        f"the tool call was cut off: max_new_tokens ({request.max_new_tokens}) ran out before {CALL_CLOSE} "
        f"({text[cut:][:200]!r}); make fewer or shorter calls, or raise max_new_tokens"
    )
    reply = replace(reply, text=text, finish_reason="length", parse_errors=(*reply.parse_errors, error))
    return _unique_calls(reply)


def _repeats_a_call(text: str, seen: set[str]) -> bool:
    """True when the text just completed a call block identical to an earlier one in this reply.

    Small models loop (the bundled one writes the same call over and over); the repeat ends the reply
    and `_reply` drops it, which saves the tokens and a second run of the same tool.
    """
    if not text.endswith(CALL_CLOSE):
        return False
    block = text[text.rfind(CALL_OPEN):]
    if block in seen:
        return True
    seen.add(block)
    return False


def _unique_calls(reply: LLMReply) -> LLMReply:
    keys = [(c.name, json.dumps(c.arguments, sort_keys=True)) for c in reply.tool_calls]
    unique = tuple(c for i, c in enumerate(reply.tool_calls) if keys[i] not in keys[:i])
    return reply if len(unique) == len(reply.tool_calls) else replace(reply, tool_calls=unique)


def _cut_call_start(text: str) -> int | None:
    """Where an unfinished call starts: an open block, or a partial "<tool_call" where a call can begin."""
    opened = text.rfind(CALL_OPEN)
    if opened > text.rfind(CALL_CLOSE):
        return opened
    for size in range(len(CALL_OPEN) - 1, 0, -1):
        start = len(text) - size
        if text.endswith(CALL_OPEN[:size]) and (start == 0 or text[:start].rstrip().endswith(CALL_CLOSE)):
            return start
    return None


def _openai_tool(spec: Any) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters}}


def _stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    if not ids:
        raise LLMError("the tokenizer and model name no end-of-sequence token; cannot tell when to stop")
    return frozenset(ids)


def _context_tokens(model: Any, tokenizer: Any) -> int:
    configured = getattr(model.config, "max_position_embeddings", None)
    if isinstance(configured, int) and configured > 0:
        return configured
    return int(min(getattr(tokenizer, "model_max_length", 4096), 1_000_000))
