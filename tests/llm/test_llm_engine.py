"""TransformersLLM on tiny random Llama models: a random model under the grammar still writes only valid calls."""

from __future__ import annotations

import json
import threading
from typing import Any

import jsonschema
import pytest

from agent.errors import LLMError
from agent.llm.engine import TransformersLLM
from agent.llm.grammar import MAX_CALLS_PER_REPLY
from agent.protocols import LLM
from agent.types import Constraint, LLMDelta, LLMReply, LLMRequest, Message, ToolSpec
from tests.llm.conftest import TinyFactory

# Schemas a random model can finish: strings are length-bounded, numbers ranged, arrays capped. Token budgets
# cover the worst case (MAX_CALLS_PER_REPLY calls spelled one character per token), so no seed can run out.
LOOKUP = ToolSpec("lookup", "Look a word up.", {
    "type": "object", "properties": {"word": {"type": "string", "maxLength": 6}}, "required": ["word"],
})
WEATHER = ToolSpec("get_weather", "Weather.", {
    "type": "object",
    "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
                   "hourly": {"type": "boolean"}},
    "required": ["unit", "days"],
})
SEARCH = ToolSpec("search", "Search.", {
    "type": "object",
    "properties": {
        "filters": {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1990, "maximum": 2030},
                                                      "site": {"enum": ["docs", "blog"]}},
                    "required": ["year"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "limit": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 20}, {"type": "null"}]},
    },
    "required": ["filters", "tags"],
})


def ask(text: str = "Hello there!", **kwargs: Any) -> LLMRequest:
    fields: dict[str, Any] = {"max_new_tokens": 12}
    fields.update(kwargs)
    return LLMRequest("act", (Message("system", "You are terse."), Message("user", text)), **fields)


def assert_valid_calls(reply: LLMReply, tools: tuple[ToolSpec, ...]) -> None:
    schemas = {t.name: t.parameters for t in tools}
    assert reply.parse_errors == ()
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls
    for call in reply.tool_calls:
        jsonschema.validate(call.arguments, schemas[call.name])


def test_engine_implements_the_llm_seam(tiny_llm: TransformersLLM) -> None:
    assert isinstance(tiny_llm, LLM)


def test_complete_counts_real_tokens(tiny_llm: TransformersLLM, tokenizer: Any) -> None:
    request = ask(max_new_tokens=10)
    reply = tiny_llm.complete(request)
    assert reply.usage.prompt_tokens == len(tiny_llm.prompt_ids(request))
    prompt = tiny_llm.render_prompt(request)
    assert prompt.endswith("<|im_start|>assistant\n") and "Hello there!" in prompt
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == reply.usage.prompt_tokens
    # A random model rarely hits the end token: it runs to the limit, and says so.
    assert reply.usage.completion_tokens == 10 and reply.finish_reason == "length"


def test_stream_yields_deltas_that_join_to_the_reply_complete_returns(tiny_llm: TransformersLLM) -> None:
    request = ask(max_new_tokens=16)
    items = list(tiny_llm.stream(request))
    deltas, final = items[:-1], items[-1]
    assert all(isinstance(d, LLMDelta) and d.text for d in deltas) and isinstance(final, LLMReply)
    assert "".join(d.text for d in deltas) == final.text
    assert final == tiny_llm.complete(request)  # greedy: the same tokens again


@pytest.mark.parametrize(("seed", "tools", "temperature"), [
    (1, (LOOKUP,), 0.0), (2, (WEATHER, SEARCH), 0.0), (3, (LOOKUP, WEATHER, SEARCH), 1.0), (4, (SEARCH,), 1.0),
], ids=["lookup-greedy", "weather+search-greedy", "all-sampled", "search-sampled"])
def test_random_model_makes_only_valid_calls(tiny_model: TinyFactory, tokenizer: Any, seed: int,
                                             tools: tuple[ToolSpec, ...], temperature: float) -> None:
    llm = TransformersLLM(tiny_model(seed), tokenizer)
    reply = llm.complete(ask("Call something.", tools=tools, tool_choice="required", max_new_tokens=1000,
                             temperature=temperature))
    assert_valid_calls(reply, tools)
    assert len(reply.tool_calls) <= MAX_CALLS_PER_REPLY


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_random_model_on_auto_answers_without_looking_like_a_call(tiny_model: TinyFactory, tokenizer: Any,
                                                                    seed: int) -> None:
    llm = TransformersLLM(tiny_model(seed), tokenizer)
    reply = llm.complete(ask(tools=(LOOKUP, WEATHER), tool_choice="auto", max_new_tokens=40, temperature=1.0))
    if reply.tool_calls and reply.finish_reason == "tool_calls":
        assert_valid_calls(reply, (LOOKUP, WEATHER))
    else:
        assert not reply.text.startswith("<") and "<tool_call>" not in reply.text
        assert reply.parse_errors == ()


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_choices_constraint_gives_exactly_one_choice(tiny_model: TinyFactory, tokenizer: Any, seed: int) -> None:
    llm = TransformersLLM(tiny_model(seed), tokenizer)
    choices = ("math", "chit-chat", "search the web")
    for temperature in (0.0, 1.5):
        reply = llm.complete(ask(constraint=Constraint(choices=choices), max_new_tokens=20, temperature=temperature))
        assert reply.text in choices and reply.finish_reason == "stop"


def test_json_schema_constraint_output_validates(tiny_model: TinyFactory, tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {
        "verdict": {"enum": ["yes", "no"]}, "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "reasons": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
    }, "required": ["verdict", "score", "reasons"]}
    llm = TransformersLLM(tiny_model(9), tokenizer)
    for temperature in (0.0, 1.0):
        request = ask(constraint=Constraint(json_schema=schema), max_new_tokens=300, temperature=temperature)
        reply = llm.complete(request)
        assert reply.finish_reason == "stop"
        jsonschema.validate(json.loads(reply.text), schema)


def test_a_call_cut_off_by_max_new_tokens_is_reported(tiny_llm: TransformersLLM) -> None:
    reply = tiny_llm.complete(ask(tools=(WEATHER,), tool_choice="required", max_new_tokens=8))
    assert reply.finish_reason == "length" and reply.tool_calls == ()
    assert reply.text.startswith("<tool_")
    assert any("cut off" in e and "max_new_tokens (8)" in e for e in reply.parse_errors)


def test_without_constraints_the_model_decodes_freely(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(0), tokenizer, constrained=False)
    reply = llm.complete(ask(tools=(WEATHER,), tool_choice="required", max_new_tokens=10))
    assert not llm.constrained
    assert reply.tool_calls == () and reply.finish_reason == "length"  # a random model writes no call


def test_prompt_longer_than_the_context_is_an_llm_error(tiny_model: TinyFactory, tokenizer: Any) -> None:
    llm = TransformersLLM(tiny_model(0, max_positions=128), tokenizer)
    with pytest.raises(LLMError, match=r"context of 128 tokens.*lower max_new_tokens"):
        llm.complete(ask("word " * 200))
    with pytest.raises(LLMError, match="max_new_tokens=120"):
        llm.complete(ask("short", max_new_tokens=120))  # fits alone, not with room to answer
    assert llm.complete(ask("short", max_new_tokens=4)).usage.completion_tokens == 4


def test_unknown_adapter_is_an_llm_error(tiny_llm: TransformersLLM) -> None:
    with pytest.raises(LLMError, match="unknown adapter 'nope'.*none installed"):
        tiny_llm.complete(ask(adapter="nope"))


def test_tools_go_in_the_system_message_and_tool_results_become_user_turns(tiny_llm: TransformersLLM) -> None:
    request = LLMRequest("act", (
        Message("system", "You are terse."), Message("user", "2+2?"),
        Message("assistant", '<tool_call>\n{"name": "lookup", "arguments": {"word": "x"}}\n</tool_call>'),
        Message("tool", "4"),
    ), tools=(LOOKUP,))
    prompt = tiny_llm.render_prompt(request)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.") and "- lookup: Look a word up." in system
    assert "<|im_start|>user\nTool result:\n4<|im_end|>" in prompt


def test_concurrent_requests_are_serialized_and_unaffected(tiny_llm: TransformersLLM) -> None:
    requests = [ask(f"question {i}", max_new_tokens=8) for i in range(3)]
    expected = [tiny_llm.complete(r).text for r in requests]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = tiny_llm.complete(requests[i]).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(3)] == expected


def test_an_abandoned_stream_releases_the_model(tiny_llm: TransformersLLM) -> None:
    stream = tiny_llm.stream(ask(max_new_tokens=20))
    next(stream)
    stream.close()
    done = threading.Event()
    threading.Thread(target=lambda: (tiny_llm.complete(ask(max_new_tokens=2)), done.set()), daemon=True).start()
    assert done.wait(timeout=30)


HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t.function.name }} {% endfor %}"
    "Call them as <tool_call>{json}</tool_call>.<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}"
    "</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_native_tools_gets_them_natively(tiny_model: TinyFactory, tokenizer: Any) -> None:
    import copy

    hermes = copy.copy(tokenizer)
    hermes.chat_template = HERMES_TEMPLATE
    llm = TransformersLLM(tiny_model(0), hermes)
    request = LLMRequest("act", (Message("user", "2+2?"), Message("tool", "4")), tools=(LOOKUP,))
    prompt = llm.render_prompt(request)
    assert prompt.startswith("<|im_start|>system\nTools: lookup Call them as <tool_call>")
    assert "You can call tools" not in prompt  # toolformat's section is for templates without tools
    assert "<tool_response>4</tool_response>" in prompt and "Tool result:" not in prompt
    assert_valid_calls(llm.complete(ask(tools=(LOOKUP,), tool_choice="required", max_new_tokens=600)), (LOOKUP,))


def test_max_new_tokens_below_one_is_an_llm_error(tiny_llm: TransformersLLM) -> None:
    with pytest.raises(LLMError, match="max_new_tokens must be at least 1"):
        tiny_llm.complete(ask(max_new_tokens=0))


def test_repetition_penalty_lowers_only_tokens_already_generated() -> None:
    import torch

    from agent.llm.decoding import penalize

    logits = torch.tensor([2.0, -2.0, 2.0, 1.0])
    penalize(logits, [0, 1, 1], 2.0)
    assert logits.tolist() == [1.0, -4.0, 2.0, 1.0]  # positive halved, negative doubled, others untouched
