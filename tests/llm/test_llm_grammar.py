"""The grammar admits exactly the outputs parse_reply can read as valid calls (or a safe final answer)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import LLMError
from agent.llm.grammar import Grammars, TokenConstraint, grammar_format
from agent.types import Constraint, LLMRequest, Message, ToolChoice, ToolSpec

CALC = ToolSpec("calculator", "Evaluate arithmetic.", {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
})
WEATHER = ToolSpec("get_weather", "Weather for a city.", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit"],
})
TOOLS = (CALC, WEATHER)


def call(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def request(tool_choice: ToolChoice = "required", constraint: Constraint | None = None,
            tools: tuple[ToolSpec, ...] = TOOLS) -> LLMRequest:
    return LLMRequest("act", (Message("user", "hi"),), tools=tools, tool_choice=tool_choice, constraint=constraint)


@pytest.fixture(scope="module")
def grammars(tokenizer: Any) -> Grammars:
    return Grammars(tokenizer, 49152, [0, 2])


def accepts(constraint: TokenConstraint | None, tokenizer: Any, text: str) -> bool:
    """Walk the text's tokens through the mask; a complete output must then allow the end token."""
    import torch

    assert constraint is not None
    for token in tokenizer.encode(text, add_special_tokens=False):
        logits = torch.zeros(49152)
        constraint.mask(logits)
        if logits[token] == float("-inf"):
            return False
        constraint.advance(token)
    logits = torch.zeros(49152)
    constraint.mask(logits)
    return constraint.finished or bool(logits[2] == 0)


def test_free_text_needs_no_grammar() -> None:
    assert grammar_format((), "auto", None) is None
    assert grammar_format((), "none", None) is None
    assert grammar_format(TOOLS, "none", Constraint(choices=("a", "b"))) is not None


@pytest.mark.parametrize(("text", "ok"), [
    ("The answer is 391.", True),
    (call('{"name": "calculator", "arguments": {"expression": "17*23"}}'), False),  # tools withdrawn: no calls
    ("391, from <tool_call> above", False),
    (" 391", False),
])
def test_tools_withdrawn_leave_an_answer_without_call_syntax(grammars: Grammars, tokenizer: Any, text: str,
                                                             ok: bool) -> None:
    """tool_choice="none" with tools in the request (the agent asks for an answer from the results it has): a
    small model shown its calls goes on writing them, which would be dropped as text and run to max_new_tokens."""
    assert accepts(grammars.for_request(request("none")), tokenizer, text) is ok
    assert grammars.for_request(request("none", tools=())) is None  # no tools at all: free text


REQUIRED_CASES = [
    (call('{"name": "calculator", "arguments": {"expression": "2 + 2"}}'), True),
    (call('{"name": "calculator", "arguments": {"expression": "1"}}') + "\n"
     + call('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c", "days": 3}}'), True),
    (call('{"name": "calc", "arguments": {"expression": "2"}}'), False),  # unknown tool
    (call('{"name": "calculator", "arguments": {"city": "Oslo", "unit": "c"}}'), False),  # another tool's args
    (call('{"name": "calculator", "arguments": {"expression": "2", "extra": 1}}'), False),
    (call('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "kelvin"}}'), False),  # enum
    (call('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c", "days": 9}}'), False),  # maximum
    (call('{"name": "get_weather", "arguments": {"city": "Oslo"}}'), False),  # missing required
    (call('{"name": "calculator", "arguments": {"expression": "a</tool_call>"}}'), False),  # breaks the block
    (call('{"name": "calculator", "arguments": {"expression": "2"}}') + "\nDone.", False),  # text after calls
    ("The answer is 4.", False),  # required: no plain answer
]


@pytest.mark.parametrize(("text", "ok"), REQUIRED_CASES)
def test_required_admits_only_valid_calls(grammars: Grammars, tokenizer: Any, text: str, ok: bool) -> None:
    assert accepts(grammars.for_request(request("required")), tokenizer, text) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("The answer is 4.", True),
    (call('{"name": "calculator", "arguments": {"expression": "2 + 2"}}'), True),
    ("<b>bold</b> answer", False),  # could be a malformed call
    (" <tool_call>", False),
    ("Sure: <tool_call>\n{", False),
])
def test_auto_admits_calls_or_a_safe_answer(grammars: Grammars, tokenizer: Any, text: str, ok: bool) -> None:
    assert accepts(grammars.for_request(request("auto")), tokenizer, text) is ok


def test_choices_and_json_schema_constraints(grammars: Grammars, tokenizer: Any) -> None:
    choices = request("none", Constraint(choices=("math", "chit-chat")), tools=())
    assert accepts(grammars.for_request(choices), tokenizer, "chit-chat")
    assert not accepts(grammars.for_request(choices), tokenizer, "chit")
    assert not accepts(grammars.for_request(choices), tokenizer, "math!")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    as_json = request("none", Constraint(json_schema=schema), tools=())
    assert accepts(grammars.for_request(as_json), tokenizer, '{"ok": true}')
    assert not accepts(grammars.for_request(as_json), tokenizer, '{"ok": "yes"}')


def test_compiled_grammars_are_cached_per_tools_choice_and_constraint(tokenizer: Any) -> None:
    grammars = Grammars(tokenizer, 49152, [2], cache_size=2)
    for _ in range(3):
        grammars.for_request(request("required"))
    assert grammars.cached == 1
    grammars.for_request(request("auto"))
    grammars.for_request(request("auto", tools=(CALC,)))
    assert grammars.cached == 2  # LRU bound


def test_a_schema_that_cannot_compile_names_its_tool(grammars: Grammars) -> None:
    broken = ToolSpec("broken", "x", {"type": "object", "properties": {"p": {"$ref": "#/$defs/Missing"}}})
    with pytest.raises(LLMError, match="tool 'broken'.*constrained = false"):
        grammars.for_request(request("required", tools=(CALC, broken)))


def test_empty_choices_are_rejected(grammars: Grammars) -> None:
    with pytest.raises(LLMError, match="choices"):
        grammars.for_request(request("none", Constraint(choices=()), tools=()))
