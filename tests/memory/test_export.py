"""Preference pairs from rated episodes (memory/export.py) and `metagent memory export --format dpo`, on
hand-recorded episodes in a temporary home; the file is read back with the trainer's own reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import Settings
from agent.errors import ConfigError
from agent.llm import format_call
from agent.training_data import load_preference_pairs
from agent.types import Episode
from memory import ChromaEpisodes, MiniLMEmbedder, VectorStore
from memory.export import preference_pairs

SYSTEM = "You are metagent."
INCHES = "convert 12 inches to centimetres"


def _call(expression: str, output: str, ok: bool = True) -> dict[str, Any]:
    return {"name": "calculator", "arguments": {"expression": expression}, "ok": ok,
            "output": output if ok else "", "error": None if ok else output}


def _episode(id: str, request: str, answer: str, calls: tuple[dict[str, Any], ...] = (), user: str = "ada",
             kind: str = "tool") -> Episode:
    return Episode(id=id, user_id=user, request=request, task_kind=kind, adapter=None, plan="", tool_calls=calls,
                   answer=answer, outcome="success", created_at=float(int(id[-1]) if id[-1].isdigit() else 0))


def _rate(memory: ChromaEpisodes, ratings: list[tuple[Episode, str]]) -> None:
    for episode, rating in ratings:
        memory.record(episode)
        memory.set_feedback(episode.id, {"good": "success", "bad": "failure"}[rating], None)


@pytest.fixture
def memory(store: VectorStore, embedder: MiniLMEmbedder) -> Iterator[ChromaEpisodes]:
    yield ChromaEpisodes(store, embedder)


def test_the_first_differing_turn_is_preferred_after_the_shared_calls(memory: ChromaEpisodes,
                                                                      embedder: MiniLMEmbedder) -> None:
    wrong_call = _episode("b1", INCHES, "It is 30 cm.", (_call("12 * 2.5", "30"),))
    right_call = _episode("g2", INCHES, "It is 30.48 cm.", (_call("12 * 2.54", "30.48"),))
    same_call_bad_answer = _episode("b3", INCHES, "It is about a foot.", (_call("12 * 2.54", "30.48"),))
    _rate(memory, [(wrong_call, "bad"), (right_call, "good"), (same_call_bad_answer, "bad")])
    pairs = preference_pairs(memory.rated("ada"), embedder, SYSTEM)
    assert [(p.good_id, p.bad_id) for p in pairs] == [("g2", "b1"), ("g2", "b3")]
    first, second = pairs
    assert first.prompt == ({"role": "system", "content": SYSTEM}, {"role": "user", "content": INCHES})
    assert first.chosen == format_call("calculator", {"expression": "12 * 2.54"})
    assert first.rejected == format_call("calculator", {"expression": "12 * 2.5"})
    assert second.prompt[2:] == ({"role": "assistant", "content": first.chosen},
                                 {"role": "tool", "content": "[calculator] 30.48"})
    assert (second.chosen, second.rejected, second.kind) == ("It is 30.48 cm.", "It is about a foot.", "tool")
    assert json.loads(first.to_json()).keys() == {"prompt", "chosen", "rejected", "kind"}


def test_pairs_need_one_user_one_kind_and_the_same_request(memory: ChromaEpisodes,
                                                             embedder: MiniLMEmbedder) -> None:
    good = _episode("g1", INCHES, "It is 30.48 cm.")
    _rate(memory, [
        (good, "good"),
        (_episode("b2", INCHES, "It is 30 cm.", user="bob"), "bad"),  # another user
        (_episode("b3", INCHES, "It is 30 cm.", kind="code"), "bad"),  # another kind
        (_episode("b4", "convert 7 inches to centimetres", "It is 17 cm."), "bad"),  # other numbers
        (_episode("b5", "write a haiku about autumn", "Leaves fall."), "bad"),  # another request
        (_episode("g6", INCHES, "30.48 centimetres."), "good"),  # two good runs: nothing to prefer
    ])
    memory.record(_episode("u7", INCHES, "It is 31 cm."))  # never rated
    assert preference_pairs(memory.rated(), embedder) == []
    _rate(memory, [(_episode("b8", "Convert 12 inches to centimetres, please", "Twelve."), "bad")])
    pairs = preference_pairs(memory.rated(), embedder)
    assert [(p.good_id, p.bad_id) for p in pairs] == [("g1", "b8"), ("g6", "b8")]
    assert pairs[0].prompt == ({"role": "user", "content": INCHES},)  # the good run's words, no system prompt
    assert preference_pairs(memory.rated(), embedder, min_similarity=1.0) == []  # no longer "the same request"
    with pytest.raises(ConfigError, match="between -1 and 1"):
        preference_pairs(memory.rated(), embedder, min_similarity=1.5)


def _record(settings: Settings, embedder: MiniLMEmbedder, ratings: list[tuple[Episode, str]]) -> None:
    with VectorStore.from_settings(settings) as store:
        _rate(ChromaEpisodes(store, embedder), ratings)


def test_cli_writes_what_the_dpo_trainer_reads(settings: Settings, embedder: MiniLMEmbedder, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _record(settings, embedder, [
        (_episode("g1", INCHES, "It is 30.48 cm.", (_call("12 * 2.54", "30.48"),)), "good"),
        (_episode("b2", INCHES, "It is 30 cm.", (_call("12 * 2.5", "30"),)), "bad"),
        (_episode("g3", INCHES, "It is 30.48 cm.", user="bob"), "good"),
        (_episode("b4", INCHES, "I cannot convert units.", user="bob"), "bad"),
    ])
    out = tmp_path / "prefs.jsonl"
    assert main(["memory", "export", "--format", "dpo", "--user", "ada", "--out", str(out)]) == 0
    assert "wrote 1 preference pair(s)" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [sorted(r) for r in rows] == [["chosen", "kind", "prompt", "rejected"]]
    [pair] = load_preference_pairs(out)
    assert pair.chosen == format_call("calculator", {"expression": "12 * 2.54"}) and pair.kind == "tool"
    assert [m.role for m in pair.prompt] == ["system", "user"]
    assert pair.prompt[0].content == settings.agent.system_prompt
    assert main(["memory", "export", "--format", "dpo"]) == 0  # every user, to standard output
    lines = capsys.readouterr().out.splitlines()
    assert sorted(json.loads(line)["rejected"] for line in lines) == sorted(["I cannot convert units.",
                                                                             pair.rejected])


def test_cli_says_why_there_is_nothing_to_export(settings: Settings, embedder: MiniLMEmbedder, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _record(settings, embedder, [(_episode("g1", INCHES, "It is 30.48 cm."), "good")])
    out = tmp_path / "prefs.jsonl"
    assert main(["memory", "export", "--format", "dpo", "--user", "ada", "--out", str(out)]) == 0
    message = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "no preference pairs" in message and "1 run(s) rated good and 0 rated bad" in message
    assert "/good and /bad" in message and not out.exists()
    with pytest.raises(SystemExit):
        main(["memory", "export", "--format", "csv"])
