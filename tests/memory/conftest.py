"""One real MiniLM embedder for every memory test (it loads in a few seconds and is thread-safe)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory import MiniLMEmbedder, VectorStore


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    with VectorStore.open(tmp_path / "home" / "chroma", wait_s=0.5) as opened:
        yield opened
