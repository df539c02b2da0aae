from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.protocols import EpisodicMemory
from agent.types import Episode
from memory import ChromaEpisodes, MiniLMEmbedder, VectorStore


def _episode(
    id: str, user: str, request: str, kind: str = "tool", outcome: str = "success", at: float = 0.0
) -> Episode:
    return Episode(
        id=id,
        user_id=user,
        request=request,
        task_kind=kind,
        adapter=None,
        plan="1. call the calculator",
        tool_calls=({"name": "calculator", "arguments": {"expression": "2+2"}},),
        answer="done",
        outcome=outcome,  # type: ignore[arg-type]
        created_at=at,
    )


@pytest.fixture
def memory(store: VectorStore, embedder: MiniLMEmbedder) -> Iterator[ChromaEpisodes]:
    episodes = ChromaEpisodes(store, embedder, min_score=0.3)
    seam: EpisodicMemory = episodes  # mypy checks the protocol
    assert seam is episodes
    yield episodes


def test_record_and_list_round_trip_newest_first(memory: ChromaEpisodes) -> None:
    old = _episode("e1", "alice", "convert 5 miles to km", at=100.0)
    new = _episode("e2", "alice", "what is 12 squared", at=200.0)
    memory.record(old)
    memory.record(new)
    assert memory.list("alice") == [new, old]  # tool_calls come back as a tuple of dicts
    assert memory.list() == [new, old]


def test_recall_never_returns_another_users_episodes(memory: ChromaEpisodes) -> None:
    memory.record(_episode("a1", "alice", "convert 10 miles to kilometres"))
    memory.record(_episode("b1", "bob", "convert 10 miles to kilometres"))
    memory.record(_episode("b2", "bob", "convert 3 miles to kilometres"))
    alice = memory.recall("alice", "convert 12 miles to km", k=5)
    assert [e.id for e in alice] == ["a1"]
    bob = memory.recall("bob", "convert 12 miles to km", k=5)
    assert {e.id for e in bob} == {"b1", "b2"}
    assert memory.recall("carol", "convert 12 miles to km", k=5) == []
    assert [e.id for e in memory.list("alice")] == ["a1"]


def test_recall_is_ranked_by_similarity_and_respects_min_score(memory: ChromaEpisodes) -> None:
    memory.record(_episode("near", "u", "convert 5 miles to kilometres"))
    memory.record(_episode("far", "u", "write a poem about autumn leaves", kind="chat"))
    ranked = memory.recall("u", "how many kilometres is 7 miles", k=2, min_score=-1.0)
    assert [e.id for e in ranked] == ["near", "far"]
    assert [e.id for e in memory.recall("u", "how many kilometres is 7 miles", k=2)] == ["near"]
    assert memory.recall("u", "how many kilometres is 7 miles", k=2, min_score=0.99) == []


def test_recall_returns_successful_episodes_only(memory: ChromaEpisodes) -> None:
    for i, outcome in enumerate(["success", "failure", "blocked", "budget"]):
        memory.record(_episode(f"e{i}", "u", f"convert {i + 2} miles to km", outcome=outcome))
    assert [e.id for e in memory.recall("u", "convert miles to km", k=4)] == ["e0"]


def test_recall_prefers_the_same_task_kind_then_fills_up(memory: ChromaEpisodes) -> None:
    memory.record(_episode("tool1", "u", "compute the area of a circle of radius 3", kind="tool"))
    memory.record(_episode("code1", "u", "write code computing the area of a circle", kind="code"))
    memory.record(_episode("code2", "u", "write python for the circumference of a circle", kind="code"))
    got = memory.recall("u", "compute the area of a circle of radius 3", k=2, task_kind="code", min_score=0.0)
    assert {e.id for e in got} == {"code1", "code2"}
    got = memory.recall("u", "compute the area of a circle of radius 3", k=3, task_kind="code", min_score=0.0)
    assert [e.id for e in got][-1] == "tool1" and len(got) == 3
    assert memory.recall("u", "anything", k=0) == []


def test_feedback_changes_outcome_and_note(memory: ChromaEpisodes) -> None:
    memory.record(_episode("e1", "u", "convert 5 miles to km"))
    assert memory.set_feedback("e1", "failure", "the answer was wrong")
    [stored] = memory.list("u")
    assert stored.outcome == "failure" and stored.feedback == "the answer was wrong"
    assert memory.recall("u", "convert 5 miles to km", k=1) == []  # no longer recalled
    assert memory.set_feedback("e1", "success", None)
    [stored] = memory.list("u")
    assert stored.outcome == "success" and stored.feedback == "the answer was wrong"
    assert [e.id for e in memory.recall("u", "convert 5 miles to km", k=1)] == ["e1"]
    assert not memory.set_feedback("missing", "success", None)
    with pytest.raises(ConfigError, match="not one of"):
        memory.set_feedback("e1", "great", None)


def test_forget_one_user_or_everyone(memory: ChromaEpisodes) -> None:
    for i in range(3):
        memory.record(_episode(f"a{i}", "alice", f"question {i}"))
    memory.record(_episode("b0", "bob", "question"))
    assert memory.forget("alice") == 3
    assert memory.list("alice") == [] and len(memory.list("bob")) == 1
    assert memory.forget("alice") == 0
    assert memory.forget() == 1
    assert memory.count() == 0


def test_record_replaces_an_episode_with_the_same_id(memory: ChromaEpisodes) -> None:
    first = _episode("e1", "u", "first request")
    memory.record(first)
    memory.record(replace(first, answer="second answer"))
    [stored] = memory.list("u")
    assert stored.answer == "second answer"


def test_episodes_survive_a_restart(tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    with VectorStore.open(tmp_path / "chroma") as store:
        ChromaEpisodes(store, embedder).record(_episode("e1", "u", "convert 5 miles to km"))
    with VectorStore.open(tmp_path / "chroma") as store:
        assert [e.id for e in ChromaEpisodes(store, embedder).recall("u", "5 miles in km", k=1)] == ["e1"]


def test_blank_user_is_refused(memory: ChromaEpisodes) -> None:
    with pytest.raises(ConfigError, match="user_id"):
        memory.record(_episode("e1", " ", "x"))
    with pytest.raises(ConfigError, match="user_id"):
        memory.recall("", "x", k=1)


def test_recall_puts_episodes_rated_good_first_within_a_kind(memory: ChromaEpisodes) -> None:
    memory.record(_episode("near", "u", "convert 7 inches to centimetres"))  # the closest, never rated
    memory.record(_episode("good", "u", "how many centimetres are in a foot?"))
    memory.record(_episode("bad", "u", "convert 7 inches to centimetres please"))
    memory.record(_episode("other", "u", "convert 7 inches to centimetres in python", kind="code"))
    assert memory.set_feedback("good", "success", None)
    assert memory.set_feedback("bad", "failure", "wrong factor")
    query = "convert 7 inches to centimetres"
    assert [e.id for e in memory.recall("u", query, k=1, task_kind="tool", min_score=0.0)] == ["good"]
    got = memory.recall("u", query, k=4, task_kind="tool", min_score=0.0)
    assert [e.id for e in got] == ["good", "near", "other"]  # same kind (good, then unrated), then the rest
    assert "bad" not in [e.id for e in memory.recall("u", query, k=4, min_score=-1.0)]


def test_rated_lists_what_the_user_rated_and_a_note_keeps_the_rating(memory: ChromaEpisodes) -> None:
    memory.record(_episode("e1", "u", "convert 5 miles to km", at=1.0))
    memory.record(_episode("e2", "u", "convert 6 miles to km", at=2.0))
    memory.record(_episode("e3", "u", "convert 7 miles to km", at=3.0))  # unrated: not listed
    memory.record(_episode("v1", "v", "convert 5 miles to km", at=4.0))
    memory.set_feedback("e2", "failure", None)
    memory.set_feedback("e1", "success", None)
    memory.set_feedback("v1", "success", None)
    assert [(r.episode.id, r.rating) for r in memory.rated("u")] == [("e1", "good"), ("e2", "bad")]
    assert [r.episode.id for r in memory.rated()] == ["e1", "e2", "v1"]
    memory.set_feedback("e2", None, "it used the wrong factor")
    assert [(r.rating, r.episode.feedback) for r in memory.rated("u")][1] == ("bad", "it used the wrong factor")
    memory.set_feedback("e2", "budget", None)  # an outcome that is not a rating clears it
    assert [r.episode.id for r in memory.rated("u")] == ["e1"]
    memory.record(replace(memory.rated("u")[0].episode, answer="recorded again"))  # a new record is unrated
    assert memory.rated("u") == []
