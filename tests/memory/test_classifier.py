from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.classifier import (
    Classification,
    TaskClassifier,
    TaskKind,
    builtin_kinds,
    load_kinds,
    save_taught,
)
from agent.config import ClassifierSettings, Settings
from agent.errors import ConfigError
from agent.llm import ScriptedLLM
from memory import MiniLMEmbedder

DEFAULTS = ClassifierSettings.model_validate({})

# Written separately from the kind files' examples (none of these appear there): the accuracy check.
HELD_OUT = {
    "chat": [
        "hey, nice to meet you",
        "what's a good name for a cat?",
        "can you tell me a fun fact about octopuses?",
        "how are you doing today?",
        "explain the theory of relativity simply",
        "I just got a new job!",
        "what's the difference between a virus and a bacterium?",
        "write a haiku about winter",
    ],
    "docs": [
        "what does the onboarding guide say about laptops?",
        "in my notes, who is responsible for the release?",
        "find where the api documentation describes authentication",
        "what do the ingested minutes say about hiring?",
        "summarize the security policy document",
        "according to the contract I uploaded, what is the notice period?",
        "which chapter of the manual covers troubleshooting?",
        "does my documentation mention docker?",
    ],
    "tool": [
        "what is 345 times 12?",
        "convert 5 feet to centimeters",
        "what is 18% of 1250?",
        "list everything in the workspace folder",
        "open report.txt and show it to me",
        "write 'hello' into greeting.txt",
        "how many minutes are in 3.5 days?",
        "what is the cube root of 27000?",
    ],
    "code": [
        "write a python program that finds duplicate files",
        "create a function that flattens a nested list",
        "run a python script to compute the 50th prime",
        "why does my python code raise KeyError: 'name'?",
        "write a binary search in python",
        "write pytest tests for a stack class",
        "parse this json string in python and print the keys",
        "write a python generator that yields even numbers",
    ],
}

SQL_EXAMPLES = [
    "write a SQL query that counts orders per customer",
    "select all users who signed up last month in SQL",
    "join the orders and customers tables on customer id",
    "write a query to find the top 5 products by revenue",
    "group sales by region and sum the totals in SQL",
]


@pytest.fixture(scope="module")
def classifier(embedder: MiniLMEmbedder) -> TaskClassifier:
    """Built-in kinds, no LLM, the default thresholds; shared (centroids computed once)."""
    return TaskClassifier(embedder, builtin_kinds(), None, DEFAULTS.threshold, DEFAULTS.margin)


def test_builtin_kinds_are_complete() -> None:
    kinds = {k.name: k for k in builtin_kinds()}
    assert set(kinds) == {"chat", "docs", "tool", "code"}
    assert all(12 <= len(k.examples) <= 20 for k in kinds.values())
    assert kinds["chat"].tools is False and not kinds["chat"].plan and not kinds["chat"].retrieve
    assert kinds["docs"].retrieve and kinds["docs"].tools == ("search_docs",)
    assert kinds["tool"].tools == ("calculator", "python", "read_file", "write_file", "list_dir")
    assert kinds["tool"].require_tool and not kinds["tool"].plan
    assert kinds["code"].tools == ("python", "read_file", "write_file", "list_dir") and kinds["code"].require_tool
    held_out = {t for texts in HELD_OUT.values() for t in texts}
    assert not held_out & {e for k in kinds.values() for e in k.examples}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("hi, how are you?", "chat"),
        ("what is 17*23?", "tool"),
        ("write a python function that reverses a string", "code"),
        ("what does the ingested design doc say about locking?", "docs"),
        ("convert 3 kilograms to pounds", "tool"),
        ("thank you so much!", "chat"),
    ],
)
def test_obvious_requests(classifier: TaskClassifier, text: str, kind: str) -> None:
    result = classifier.classify(text)
    assert (result.kind, result.method) == (kind, "prototype")
    assert set(result.scores) == {"chat", "docs", "tool", "code"}
    assert result.confidence == max(result.scores.values())


def test_held_out_accuracy(classifier: TaskClassifier, capsys: pytest.CaptureFixture[str]) -> None:
    results = {kind: [classifier.classify(t) for t in texts] for kind, texts in HELD_OUT.items()}
    total = sum(len(v) for v in results.values())
    correct = sum(r.kind == kind for kind, rs in results.items() for r in rs)
    # Cases the thresholds would send to an LLM (were one given): confident ones must be right.
    unsure = [
        r for rs in results.values() for r in rs
        if r.confidence < DEFAULTS.threshold
        or r.confidence - sorted(r.scores.values())[-2] < DEFAULTS.margin
    ]
    confident_wrong = [
        (kind, r.kind) for kind, rs in results.items() for r in rs if r not in unsure and r.kind != kind
    ]
    with capsys.disabled():
        print(f"\nclassifier held-out accuracy: {correct}/{total}; {len(unsure)} would go to the LLM")
    assert correct / total >= 0.9
    assert not confident_wrong


def test_teaching_a_new_kind_works_at_once_and_persists(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    kinds_file = tmp_path / "kinds.json"
    taught = TaskClassifier(embedder, load_kinds(kinds_file), None, kinds_file=kinds_file)
    query = "write an SQL query listing customers without orders"
    assert taught.classify(query).kind != "sql"
    kind = taught.teach("sql", SQL_EXAMPLES, description="database queries in SQL")
    assert kind == TaskKind("sql", "database queries in SQL", False, True, True, False, tuple(SQL_EXAMPLES))
    assert taught.classify(query).kind == "sql"
    assert taught.kind("sql") == kind
    # A fresh classifier built from the file knows the kind too.
    again = TaskClassifier(embedder, load_kinds(kinds_file), None)
    assert again.kind("sql") == kind
    assert again.classify(query).kind == "sql"
    assert [k.name for k in again.kinds()] == ["chat", "code", "docs", "tool", "sql"]


def test_teaching_a_builtin_kind_adds_examples_and_saves_only_the_difference(
    embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    kinds_file = tmp_path / "kinds.json"
    c = TaskClassifier(embedder, load_kinds(kinds_file), None, kinds_file=kinds_file)
    before = len(c.kind("tool").examples)
    kind = c.teach("tool", ["how much is 3 dozen eggs", "what is 17*23?"], plan=True)
    assert len(kind.examples) == before + 1  # the duplicate is not added twice
    assert kind.plan is True and kind.require_tool is True
    saved = json.loads(kinds_file.read_text(encoding="utf-8"))
    assert saved == {"version": 1, "kinds": [{"name": "tool", "examples": ["how much is 3 dozen eggs"],
                                               "plan": True}]}
    assert {k.name: k for k in load_kinds(kinds_file)}["tool"] == kind


def test_low_confidence_falls_back_to_a_constrained_llm_choice(embedder: MiniLMEmbedder) -> None:
    llm = ScriptedLLM({"classify": ["docs"]})
    # An impossible threshold makes every request "unsure".
    c = TaskClassifier(embedder, builtin_kinds(), llm, threshold=1.01, margin=0.0)
    result = c.classify("hello there, friend")
    assert result.kind == "docs" and result.method == "llm"
    assert result.confidence == result.scores["docs"]
    [request] = llm.calls_for("classify")
    assert request.constraint is not None and request.constraint.choices is not None
    assert set(request.constraint.choices) == {"chat", "docs", "tool", "code"}
    prompt = request.messages[-1].content
    assert "hello there, friend" in prompt
    assert all(f"- {k.name}: {k.description}" in prompt for k in builtin_kinds())
    assert "Request: hello there!\nKind: chat" in prompt  # the chat example nearest the request
    assert prompt.endswith("Request: hello there, friend\nKind:")
    assert prompt.count("\nKind: ") == 8  # two labelled examples per kind
    llm.assert_complete()


def test_a_small_margin_also_asks_the_llm(embedder: MiniLMEmbedder) -> None:
    llm = ScriptedLLM({"classify": ["tool"]})
    c = TaskClassifier(embedder, builtin_kinds(), llm, threshold=-1.0, margin=2.0)
    assert c.classify("what is 2+2?").method == "llm"


def test_a_failing_llm_leaves_the_prototype_choice(embedder: MiniLMEmbedder) -> None:
    c = TaskClassifier(embedder, builtin_kinds(), ScriptedLLM(), threshold=1.01, margin=0.0)
    result = c.classify("what is 17*23?")  # the LLM has no reply scripted: it raises LLMError
    assert (result.kind, result.method) == ("tool", "default")


def test_confident_prototypes_do_not_call_the_llm(embedder: MiniLMEmbedder) -> None:
    llm = ScriptedLLM()
    c = TaskClassifier(embedder, builtin_kinds(), llm, threshold=0.0, margin=0.0)
    assert c.classify("what is 17*23?").method == "prototype"
    assert llm.requests == []


def test_blank_request_gets_the_default_kind(classifier: TaskClassifier) -> None:
    assert classifier.classify("   ") == Classification("chat", 0.0, "default", {})


@pytest.mark.parametrize(
    ("kind", "examples", "flags", "message"),
    [
        ("", ["x"], {}, "invalid task kind name ''"),
        ("my kind", ["x"], {}, "no spaces"),
        ("sql!", ["x"], {}, "invalid task kind name 'sql!'"),
        ("9sql", ["x"], {}, "invalid task kind name"),
        ("sql", [], {}, "at least one example"),
        ("sql", ["ok", "   "], {}, "empty or non-text example"),
        ("sql", "select 1", {}, "must be a list of strings"),
        ("sql", ["x"], {"retreive": True}, "unknown setting"),
        ("sql", ["x"], {"plan": "yes"}, "plan must be true or false"),
        ("sql", ["x"], {"tools": [1]}, "tools must be true/false or a list of tool names"),
    ],
)
def test_bad_teaching_input_is_a_config_error(
    classifier: TaskClassifier, kind: str, examples: object, flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        classifier.teach(kind, examples, **flags)  # type: ignore[arg-type]
    assert [k.name for k in classifier.kinds()] == ["chat", "code", "docs", "tool"]


def test_unknown_kind_and_bad_kinds_file(classifier: TaskClassifier, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task kind 'sql'; known kinds: chat, code, docs, tool"):
        classifier.kind("sql")
    broken = tmp_path / "kinds.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="fix or delete"):
        load_kinds(broken)
    broken.write_text(json.dumps({"version": 1, "kinds": [{"name": "bad name", "examples": ["x"]}]}))
    with pytest.raises(ConfigError, match="invalid task kind name 'bad name'"):
        load_kinds(broken)


def test_save_and_load_round_trip_through_settings(settings: Settings) -> None:
    new = TaskKind("sql", "SQL", False, True, ("python",), False, ("select 1",))
    save_taught(settings.kinds_file, [*builtin_kinds(), new])
    assert load_kinds(settings.kinds_file) == [*builtin_kinds(), new]
    assert json.loads(settings.kinds_file.read_text(encoding="utf-8"))["kinds"][0]["tools"] == ["python"]


def test_a_failed_save_leaves_the_classifier_unchanged(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    c = TaskClassifier(embedder, builtin_kinds(), None, kinds_file=blocker / "kinds.json")
    with pytest.raises(ConfigError, match="cannot save taught task kinds"):
        c.teach("sql", SQL_EXAMPLES)
    assert [k.name for k in c.kinds()] == ["chat", "code", "docs", "tool"]
