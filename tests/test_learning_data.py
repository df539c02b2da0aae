"""The learning benchmark's generated data and scorers (benchmarks/data/): pure Python, no model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xgrammar
from xgrammar import testing as xgrammar_testing

from agent.llm.grammar import grammar_format
from agent.llm.toolformat import format_call, parse_reply
from agent.training_data import load_chat_examples
from agent.types import Constraint, LLMReply, ToolCall
from benchmarks.data import invoices, toolcalls
from benchmarks.data.catalogue import HELD_OUT_DOMAINS, TRAIN_DOMAINS
from benchmarks.data.scoring import CallTally, judge_calls, judge_record

TRAIN = toolcalls.generate("train", 96, seed=0)
TEST = toolcalls.generate("test", 48, seed=0)


def reply(text: str, names: list[str]) -> LLMReply:
    return parse_reply(text, names)


def test_generators_are_deterministic_per_seed() -> None:
    assert [e.row() for e in toolcalls.generate("train", 96, seed=0)] == [e.row() for e in TRAIN]
    assert [e.row() for e in toolcalls.generate("train", 96, seed=1)] != [e.row() for e in TRAIN]
    assert [e.row() for e in invoices.generate("test", 20, 4)] == [e.row() for e in invoices.generate("test", 20, 4)]
    assert [e.text for e in invoices.generate("test", 20, 4)] != [e.text for e in invoices.generate("test", 20, 5)]


def test_every_kind_is_in_the_mix() -> None:
    kinds = [e.kind for e in TEST]
    assert {k: kinds.count(k) for k in set(kinds)} == {"single": 18, "parallel": 12, "chat": 6, "unsupported": 12}


def test_held_out_functions_never_occur_in_training() -> None:
    train = {f.name for domain in TRAIN_DOMAINS for f in domain}
    held = {f.name for domain in HELD_OUT_DOMAINS for f in domain}
    assert train and held and not train & held
    assert not {f.domain for d in TRAIN_DOMAINS for f in d} & {f.domain for d in HELD_OUT_DOMAINS for f in d}
    training = toolcalls.generate("train", 400, seed=3)
    offered_in_training = {t.name for e in training for t in e.tools}
    offered_in_test = {t.name for e in TEST for t in e.tools}
    assert not offered_in_training & held and offered_in_test <= held  # the test split is never renamed
    train_schemas = {json.dumps(t.parameters, sort_keys=True) for e in training for t in e.tools}
    assert not train_schemas & {json.dumps(t.parameters, sort_keys=True) for e in TEST for t in e.tools}


def test_training_renames_functions_and_parameters_consistently_within_an_example() -> None:
    training = toolcalls.generate("train", 200, seed=5)
    catalogue = {f.name for domain in TRAIN_DOMAINS for f in domain}
    renamed = [t for e in training for t in e.tools if t.name not in catalogue]
    assert len(renamed) > 50 and any(t.name[0].islower() and not t.name.islower() for t in renamed)  # camelCase
    for example in training:
        names = [t.name for t in example.tools]
        assert len(names) == len(set(names))
        # The calls name offered tools and fit their (renamed) schemas: checked for every example below.


@pytest.mark.parametrize("example", TRAIN + TEST, ids=lambda e: f"{e.kind}:{e.request[:40]}")
def test_targets_parse_with_the_engine_and_fit_their_schemas(example: toolcalls.ToolExample) -> None:
    parsed = parse_reply(example.reply, [t.name for t in example.tools])
    assert not parsed.parse_errors
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == list(example.calls)
    specs = {t.name: t for t in example.tools}
    for name, arguments in example.calls:
        jsonschema.validate(arguments, specs[name].parameters)
        # Arguments in schema order: the only order the engine's grammar lets a constrained model write.
        assert list(arguments) == [k for k in specs[name].parameters["properties"] if k in arguments]
    if not example.calls:
        assert parsed.content == example.reply and "<tool_call>" not in example.reply


def test_targets_are_sentences_the_grammar_admits() -> None:
    for example in TRAIN[:24] + TEST[:24]:
        assert _grammar_accepts(grammar_format(example.tools, "auto", None), example.reply), example.reply
    constraint = Constraint(json_schema=invoices.SCHEMA)
    for record in invoices.generate("test", 8, seed=0):
        assert _grammar_accepts(grammar_format((), "auto", constraint), record.reply)


def test_rows_are_chat_format_with_the_tools_the_request_offers() -> None:
    row = TRAIN[0].row()
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][-1]["content"] == TRAIN[0].reply
    assert [t["name"] for t in row["tools"]] == [t.name for t in TRAIN[0].tools]
    json.dumps(row)  # JSON-serialisable as a training file line
    request = TRAIN[0].request_for("tools", 64)
    assert request.tools == TRAIN[0].tools and request.tool_choice == "auto" and request.adapter == "tools"


def test_rows_read_back_through_the_trainers_loader(tmp_path: Path) -> None:
    examples = TRAIN[:8]
    records = invoices.generate("train", 4, seed=0)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [e.row() for e in examples] + [r.row() for r in records]))
    loaded = load_chat_examples(path)
    assert [c.tools for c in loaded[:8]] == [e.tools for e in examples]
    assert [c.prompt for c in loaded[:8]] == [e.messages for e in examples]
    assert [c.target for c in loaded] == [e.reply for e in examples] + [r.reply for r in records]


def test_requests_mention_the_values_the_calls_pass() -> None:
    for example in TRAIN + TEST:
        for _, arguments in example.calls:
            for value in _strings(arguments):
                assert value.casefold() in example.request.casefold(), (value, example.request)


def test_scorer_counts_right_wrong_and_no_call() -> None:
    names = ["get_forecast", "book_table"]
    expected = [("get_forecast", {"city": "Oslo", "days": 3})]
    right = judge_calls(expected, reply(format_call("get_forecast", {"days": 3.0, "city": " oslo"}), names))
    assert right.right and right.names_right and right.called
    wrong_value = judge_calls(expected, reply(format_call("get_forecast", {"city": "Oslo", "days": 4}), names))
    assert not wrong_value.right and wrong_value.names_right
    extra_argument = judge_calls(expected, reply(format_call("get_forecast", {"city": "Oslo", "days": 3,
                                                                             "unit": "celsius"}), names))
    assert not extra_argument.right and extra_argument.names_right
    wrong_name = judge_calls(expected, reply(format_call("book_table", {"city": "Oslo", "days": 3}), names))
    assert not wrong_name.right and not wrong_name.names_right
    prose = judge_calls(expected, reply("The forecast for Oslo is sunny.", names))
    assert not prose.right and not prose.called
    broken = judge_calls(expected, reply('<tool_call>\n{"name": "get_forecast", "arguments": {"city": "Oslo", '
                                         '"days": 3}\n</tool_call>', names))
    assert not broken.right and broken.called


def test_scorer_on_parallel_calls_ignores_order_but_not_count() -> None:
    names = ["get_forecast"]
    expected = [("get_forecast", {"city": "Oslo"}), ("get_forecast", {"city": "Lima"})]
    both = "\n".join(format_call("get_forecast", {"city": c}) for c in ("Lima", "Oslo"))
    assert judge_calls(expected, reply(both, names)).right
    one = judge_calls(expected, reply(format_call("get_forecast", {"city": "Oslo"}), names))
    assert not one.right and not one.names_right
    three = both + "\n" + format_call("get_forecast", {"city": "Quito"})
    assert not judge_calls(expected, reply(three, names)).right


def test_scorer_where_no_call_is_expected() -> None:
    names = ["get_forecast"]
    assert judge_calls([], reply("Hello! How can I help?", names)).right
    assert not judge_calls([], reply(format_call("get_forecast", {"city": "Oslo"}), names)).right
    assert not judge_calls([], reply("Sure <tool_call>{not json</tool_call>", names)).right


def test_tally_reports_each_share_over_its_own_examples() -> None:
    call = ToolCall("c1", "f", {"x": 1})
    hit = LLMReply(text="", content="", tool_calls=(call,))
    miss = LLMReply(text="no", content="no")
    verdicts = [("single", judge_calls([("f", {"x": 1})], hit)), ("single", judge_calls([("f", {"x": 2})], hit)),
                ("chat", judge_calls([], miss)), ("unsupported", judge_calls([], hit))]
    metrics = CallTally(verdicts).metrics()
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.5
    assert metrics["calls_exact"] == 0.5 and metrics["calls_names"] == 1.0 and metrics["no_call_right"] == 0.5
    assert metrics["by_kind"]["single"] == {"n": 2, "right": 0.5}


def test_invoice_splits_share_no_vendor_or_template() -> None:
    assert not set(invoices.TRAIN_VENDORS) & set(invoices.TEST_VENDORS)
    assert not set(invoices.TRAIN_TEMPLATES) & set(invoices.TEST_TEMPLATES)
    for example in invoices.generate("test", 30, seed=1):
        assert example.record["vendor"] in invoices.TEST_VENDORS and example.record["vendor"] in example.text
        jsonschema.validate(example.record, invoices.SCHEMA)
        assert json.loads(example.reply) == example.record


def test_invoice_scorer_checks_every_field() -> None:
    expected = {"vendor": "Glasswing IT", "date": "2025-07-09", "amount": 908.45, "currency": "USD"}
    good = 'Here it is: {"vendor": "glasswing it", "date": "2025-07-09", "amount": 908.450, "currency": "usd"}'
    assert judge_record(expected, good)["record"]
    wrong = judge_record(expected, '{"vendor": "Glasswing IT", "date": "July 9, 2025", "amount": "908.45", '
                                   '"currency": "USD"}')
    assert wrong == {"vendor": True, "date": False, "amount": False, "currency": True, "record": False}
    extra = '{"vendor": "Glasswing IT", "date": "2025-07-09", "amount": 908.45, "currency": "USD", "tax": 0}'
    assert not judge_record(expected, extra)["record"]
    assert judge_record(expected, "no JSON at all") == dict.fromkeys([*expected, "record"], False)


def test_dates_and_amounts_are_said_in_several_ways() -> None:
    texts = [e.text for e in invoices.generate("train", 200, seed=0)]
    for marker in ("€", "$", "Swiss francs", " of ", "-", ", 202"):
        assert any(marker in t for t in texts), marker


def _grammar_accepts(fmt: dict[str, Any] | None, text: str) -> bool:
    grammar = xgrammar.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": fmt}))
    return bool(xgrammar_testing._is_grammar_accept_string(grammar, text))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
