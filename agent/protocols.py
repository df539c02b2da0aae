"""The seams. Each is a small Protocol with its implementations elsewhere and a test double where needed.

    LLM             agent.llm.TransformersLLM, agent.llm.ScriptedLLM
    Embedder        memory.embeddings.MiniLMEmbedder
    Retriever       memory.retriever.DocumentStore
    EpisodicMemory  memory.episodic.ChromaEpisodes
    Sandbox         tools.sandbox (bubblewrap, unshare)

`tools` and `memory` both import from here and never from each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from agent.types import Episode, LLMDelta, LLMReply, LLMRequest, Passage


@runtime_checkable
class LLM(Protocol):
    def complete(self, request: LLMRequest) -> LLMReply:
        """Run one request to completion."""
        ...

    def stream(self, request: LLMRequest) -> Iterator[LLMDelta | LLMReply]:
        """Yield text deltas as they are decoded, then exactly one LLMReply (the same complete() returns)."""
        ...


class Embedder(Protocol):
    dimension: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-normalised embeddings, one per text."""
        ...


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[Passage]:
        """The k passages most relevant to the query, best first (empty when nothing is ingested)."""
        ...

    def count(self) -> int:
        """How many chunks are stored."""
        ...


class EpisodicMemory(Protocol):
    def record(self, episode: Episode) -> None: ...

    def recall(self, user_id: str, query: str, k: int, task_kind: str | None = None) -> list[Episode]:
        """Similar successful episodes of this user only, best first."""
        ...

    def list(self, user_id: str | None = None) -> list[Episode]: ...

    def forget(self, user_id: str | None = None) -> int:
        """Delete one user's episodes (or all with None); returns how many were deleted."""
        ...

    def set_feedback(self, episode_id: str, outcome: str | None, note: str | None) -> bool: ...
