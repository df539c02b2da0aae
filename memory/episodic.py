"""Episodic memory: finished runs stored per user, recalled by similarity as exemplars for the planner.

Each episode is one record in the "episodes" collection: the embedding of its request, filterable metadata
(user_id, task_kind, outcome, rating, created_at) and the whole episode as JSON in the document. Every read
filters on user_id inside Chroma (a `where` clause), so one user's episodes never reach another user's prompts.

A user's rating (`Agent.feedback`, /good and /bad in the REPL) arrives through `set_feedback`: outcome
"success" is the rating good, "failure" bad. The rating is kept apart from the outcome the run itself reached
(a run that merely did not fail is unrated), so recall can put what the user approved first and the preference
export (memory/export.py) can pair good answers with bad ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

from agent.errors import ConfigError
from agent.protocols import Embedder
from agent.types import Episode
from memory.store import VectorStore

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

COLLECTION = "episodes"
OUTCOMES: tuple[str, ...] = get_args(get_type_hints(Episode)["outcome"])
DEFAULT_MIN_SCORE = 0.5
RATINGS = {"success": "good", "failure": "bad"}  # the outcome set_feedback gets -> the user's rating
CANDIDATES_PER_PLACE = 3  # recall looks this many times deeper than k, so a rated-good episode can move up


@dataclass(frozen=True)
class RatedEpisode:
    episode: Episode
    rating: Literal["good", "bad"]


class ChromaEpisodes:
    """EpisodicMemory over a VectorStore: per-user, similarity-ranked, successful episodes only on recall,
    the user's good ones first.

    Isolation is by the `user_id` string the caller gives: this class does not authenticate users.
    """

    def __init__(self, store: VectorStore, embedder: Embedder, min_score: float = DEFAULT_MIN_SCORE) -> None:
        self._collection: Collection = store.collection(COLLECTION)
        self._embedder = embedder
        self.min_score = min_score

    def record(self, episode: Episode) -> None:
        """Store (or replace, by id) one finished run."""
        _check_user(episode.user_id)
        if episode.outcome not in OUTCOMES:
            raise ConfigError(f"episode outcome {episode.outcome!r} is not one of {OUTCOMES}")
        vectors: list[Sequence[float]] = [*self._embedder.embed([episode.request])]
        self._collection.upsert(
            ids=[episode.id],
            embeddings=vectors,
            documents=[json.dumps(episode.to_dict())],
            metadatas=[_metadata(episode)],
        )

    def recall(
        self, user_id: str, query: str, k: int, task_kind: str | None = None, min_score: float | None = None
    ) -> list[Episode]:
        """Up to k successful episodes of this user similar to `query`: never a failed run or one rated bad.

        Order: with `task_kind`, episodes of that kind come first and others fill the remaining places; within
        each group, episodes the user rated good come before unrated ones, then by similarity. Episodes
        scoring below `min_score` (cosine similarity; default: the constructor's) are left out.
        """
        _check_user(user_id)
        if k < 1 or not query.strip():
            return []
        floor = self.min_score if min_score is None else min_score
        vector: list[Sequence[float]] = [*self._embedder.embed([query])]
        base: list[dict[str, Any]] = [{"user_id": user_id}, {"outcome": "success"}]
        if task_kind is None:
            return self._query(vector, base, k, floor)
        same = self._query(vector, [*base, {"task_kind": task_kind}], k, floor)
        if len(same) >= k:
            return same
        others = self._query(vector, [*base, {"task_kind": {"$ne": task_kind}}], k - len(same), floor)
        return same + others

    def _query(
        self, vector: list[Sequence[float]], clauses: list[dict[str, Any]], k: int, floor: float
    ) -> list[Episode]:
        """The k best matches of the filter: rated good first, then by similarity, none below `floor`."""
        # Chroma (>= 1.0) returns fewer than n_results when fewer records match the filter.
        result = self._collection.query(
            query_embeddings=vector,
            n_results=k * CANDIDATES_PER_PLACE,
            where={"$and": clauses},
            include=["documents", "distances", "metadatas"],
        )
        docs = (result["documents"] or [[]])[0]
        dists = (result["distances"] or [[]])[0]
        metas = (result["metadatas"] or [[]])[0]
        found = [(meta.get("rating") != "good", dist, doc)
                 for dist, doc, meta in zip(dists, docs, metas, strict=True) if 1.0 - dist >= floor]
        return [_episode(doc) for _, _, doc in sorted(found, key=lambda item: item[:2])[:k]]

    def rated(self, user_id: str | None = None) -> list[RatedEpisode]:
        """The episodes a user rated good or bad (one user's, or everyone's with None), oldest first."""
        clauses: list[dict[str, Any]] = [{"rating": {"$in": ["good", "bad"]}}]
        if user_id is not None:
            clauses.append(_user_filter(user_id))
        got = self._collection.get(where={"$and": clauses} if len(clauses) > 1 else clauses[0],
                                   include=["documents", "metadatas"])
        rated = [RatedEpisode(_episode(doc), "good" if meta["rating"] == "good" else "bad")
                 for doc, meta in zip(got["documents"] or [], got["metadatas"] or [], strict=True)]
        return sorted(rated, key=lambda r: (r.episode.created_at, r.episode.id))

    def list(self, user_id: str | None = None) -> list[Episode]:
        """All episodes (of one user, or everyone's with None), newest first."""
        got = self._collection.get(where=_user_filter(user_id), include=["documents"])
        episodes = [_episode(doc) for doc in got["documents"] or []]
        return sorted(episodes, key=lambda e: e.created_at, reverse=True)

    def forget(self, user_id: str | None = None) -> int:
        """Delete one user's episodes (everyone's with None); returns how many were deleted."""
        ids = self._collection.get(where=_user_filter(user_id), include=[])["ids"]
        if ids:
            self._collection.delete(ids=ids)
        return len(ids)

    def set_feedback(self, episode_id: str, outcome: str | None, note: str | None) -> bool:
        """Change an episode's outcome and/or feedback note; False when there is no such episode.

        This is the user's rating: outcome "success" rates the run good, "failure" bad (see RATINGS); any other
        outcome clears the rating. A note alone keeps the rating as it was.
        """
        if outcome is not None and outcome not in OUTCOMES:
            raise ConfigError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        got = self._collection.get(ids=[episode_id], include=["documents", "embeddings", "metadatas"])
        if not got["ids"] or got["embeddings"] is None:
            return False
        data = json.loads((got["documents"] or [""])[0])
        if outcome is not None:
            data["outcome"] = outcome
        if note is not None:
            data["feedback"] = note
        episode = _from_dict(data)
        old_rating = str(((got["metadatas"] or [{}])[0] or {}).get("rating", ""))
        rating = old_rating if outcome is None else RATINGS.get(outcome, "")
        # The embedding (of the request) does not change, but is passed back: a document without an
        # embedding would make Chroma try to compute one, and it has no embedding function by design.
        self._collection.update(
            ids=[episode_id],
            embeddings=got["embeddings"],
            documents=[json.dumps(episode.to_dict())],
            metadatas=[_metadata(episode, rating)],
        )
        return True

    def count(self) -> int:
        return self._collection.count()


def _check_user(user_id: str) -> None:
    if not user_id or not user_id.strip():
        raise ConfigError(f"episodes need a non-empty user_id, got {user_id!r}")


def _user_filter(user_id: str | None) -> Any:
    if user_id is None:
        return None
    _check_user(user_id)
    return {"user_id": user_id}


def _metadata(episode: Episode, rating: str = "") -> Any:
    """Chroma metadata; `rating` is "good", "bad" or "" (unrated: a new run, or one recorded again)."""
    return {
        "user_id": episode.user_id,
        "task_kind": episode.task_kind,
        "outcome": episode.outcome,
        "rating": rating,
        "created_at": float(episode.created_at),
    }


def _episode(document: str | None) -> Episode:
    return _from_dict(json.loads(document or "{}"))


def _from_dict(data: dict[str, Any]) -> Episode:
    data = dict(data)
    data["tool_calls"] = tuple(data.get("tool_calls") or ())
    return Episode(**data)
