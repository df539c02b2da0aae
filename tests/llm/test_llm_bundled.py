"""Integration tests on the real bundled SmolLM2-135M-Instruct (greedy, so deterministic on one platform)."""

from __future__ import annotations

import jsonschema
import pytest

from agent.llm.engine import TransformersLLM
from agent.types import LLMRequest, Message, ToolSpec

pytestmark = pytest.mark.model

SYSTEM = Message("system", "You are a helpful assistant.")
CALCULATOR = ToolSpec("calculator", "Evaluate an arithmetic expression.", {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
})
WEATHER = ToolSpec("get_weather", "Current weather and forecast for a city.", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"],
})
EMAIL = ToolSpec("send_email", "Send an email.", {
    "type": "object",
    "properties": {
        "to": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "subject": {"type": "string"},
        "meta": {"type": "object", "properties": {"priority": {"type": "integer", "minimum": 1, "maximum": 5}},
                 "required": ["priority"]},
    },
    "required": ["to", "subject", "meta"],
})


def assert_valid(reply: object, tools: tuple[ToolSpec, ...]) -> None:
    schemas = {t.name: t.parameters for t in tools}
    assert reply.parse_errors == ()  # type: ignore[attr-defined]
    assert reply.finish_reason == "tool_calls" and reply.tool_calls  # type: ignore[attr-defined]
    for call in reply.tool_calls:  # type: ignore[attr-defined]
        jsonschema.validate(call.arguments, schemas[call.name])


def test_answers_a_simple_question(bundled_llm: TransformersLLM) -> None:
    request = LLMRequest("answer", (SYSTEM, Message("user", "What is the capital of France?")), max_new_tokens=24)
    reply = bundled_llm.complete(request)
    assert reply.content and reply.tool_calls == () and "Paris" in reply.content


def test_calls_the_calculator_when_a_call_is_required(bundled_llm: TransformersLLM) -> None:
    request = LLMRequest("act", (SYSTEM, Message("user", "What is 17 * 23?")), tools=(CALCULATOR,),
                         tool_choice="required", max_new_tokens=120)
    reply = bundled_llm.complete(request)
    assert_valid(reply, (CALCULATOR,))
    assert [c.name for c in reply.tool_calls] == ["calculator"]  # the repeated call it loops into is dropped
    assert "17" in reply.tool_calls[0].arguments["expression"]


def test_a_prompt_tempting_invalid_calls_still_gets_valid_ones(bundled_llm: TransformersLLM) -> None:
    # An unknown tool name, a wrong argument name, an enum value and a number the schemas forbid; three tools
    # with nested objects, arrays and ranges to choose from.
    prompt = 'Use the tool weather_lookup with {"town": "Paris", "unit": "kelvin", "days": 30} right now.'
    tools = (CALCULATOR, WEATHER, EMAIL)
    request = LLMRequest("act", (SYSTEM, Message("user", prompt)), tools=tools, tool_choice="required",
                         max_new_tokens=260)
    assert_valid(bundled_llm.complete(request), tools)
