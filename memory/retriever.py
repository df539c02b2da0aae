"""Document retrieval: ingest files into the vector store as overlapping chunks, search them densely.

Each chunk's id comes from (absolute source path, chunk index), and re-ingesting a file first deletes that
file's old chunks, so a changed file is replaced, never duplicated. Hybrid lexical + dense search (RRF) is
planned; this is the dense half.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.protocols import Embedder
from agent.types import Passage
from memory.chunking import chunk_text
from memory.documents import SkippedFile, read_text, walk_files
from memory.store import VectorStore

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

COLLECTION = "documents"
# Chunks embedded and written per round trip: bounds memory on big files, keeps progress reports flowing.
WRITE_BATCH = 64

Progress = Callable[[str], None]


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did: files ingested, chunks written, and each skipped file with its reason."""

    files: tuple[str, ...]
    chunks: int
    skipped: tuple[SkippedFile, ...]

    def summary(self) -> str:
        text = f"ingested {len(self.files)} file(s), {self.chunks} chunk(s)"
        return text + (f"; skipped {len(self.skipped)}" if self.skipped else "")


def chunk_id(source: str, index: int) -> str:
    """A stable id for chunk `index` of `source` (hashed: Chroma ids should stay short)."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:20]
    return f"{digest}:{index}"


class DocumentStore:
    """The Retriever over ingested files: chunks in the "documents" collection, scored by cosine similarity."""

    def __init__(
        self, store: VectorStore, embedder: Embedder, chunk_chars: int = 800, overlap_chars: int = 120
    ) -> None:
        chunk_text("", chunk_chars, overlap_chars)  # validates the sizes now, not at the first ingest
        self._collection: Collection = store.collection(COLLECTION)
        self._embedder = embedder
        self.chunk_chars = chunk_chars
        self.overlap_chars = overlap_chars

    def ingest(self, paths: Sequence[Path], progress: Progress | None = None) -> IngestReport:
        """Ingest files and directories (recursively); unusable files are skipped with a reason."""
        files: list[str] = []
        skipped: list[SkippedFile] = []
        chunks = 0
        seen: set[str] = set()
        for item in walk_files(paths):
            if isinstance(item, Path) and str(item) in seen:
                continue  # named twice (a folder and a file in it): ingest once
            text = item if isinstance(item, SkippedFile) else read_text(item)
            if isinstance(text, SkippedFile):
                skipped.append(text)
                if progress:
                    progress(f"skipped {text.path}: {text.reason}")
                continue
            source = str(item)
            seen.add(source)
            added = self._ingest_text(source, text)
            files.append(source)
            chunks += added
            if progress:
                progress(f"ingested {source}: {added} chunk(s)")
        return IngestReport(tuple(files), chunks, tuple(skipped))

    def _ingest_text(self, source: str, text: str) -> int:
        self.remove(source)
        pieces = chunk_text(text, self.chunk_chars, self.overlap_chars)
        for start in range(0, len(pieces), WRITE_BATCH):
            batch = pieces[start : start + WRITE_BATCH]
            positions = range(start, start + len(batch))
            metadatas: list[Any] = [
                {"source": source, "position": pos, "offset": offset}
                for pos, (offset, _) in zip(positions, batch, strict=True)
            ]
            vectors: list[Sequence[float]] = [*self._embedder.embed([chunk for _, chunk in batch])]
            self._collection.add(
                ids=[chunk_id(source, pos) for pos in positions],
                embeddings=vectors,
                documents=[chunk for _, chunk in batch],
                metadatas=metadatas,
            )
        return len(pieces)

    def search(self, query: str, k: int) -> list[Passage]:
        """The k chunks most similar to `query`, best first; score is the cosine similarity."""
        if k < 1:
            raise ConfigError(f"search k must be at least 1, got {k}")
        stored = self._collection.count()
        if stored == 0 or not query.strip():
            return []
        vectors: list[Sequence[float]] = [*self._embedder.embed([query])]
        result = self._collection.query(
            query_embeddings=vectors,
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        docs = (result["documents"] or [[]])[0]
        metas = (result["metadatas"] or [[]])[0]
        dists = (result["distances"] or [[]])[0]
        passages = [_passage(doc, meta, dist) for doc, meta, dist in zip(docs, metas, dists, strict=True)]
        return sorted(passages, key=lambda p: p.score, reverse=True)

    def count(self) -> int:
        return self._collection.count()

    def sources(self) -> list[str]:
        """The absolute paths of every ingested file, sorted."""
        got = self._collection.get(include=["metadatas"])
        return sorted({str(m["source"]) for m in got["metadatas"] or []})

    def remove(self, source: str | Path) -> int:
        """Delete every chunk of one source file (resolved to its absolute path); returns how many."""
        key = str(Path(source).expanduser().resolve())
        found = self._collection.get(where={"source": key}, include=[])
        if found["ids"]:
            self._collection.delete(ids=found["ids"])
        return len(found["ids"])


def _passage(text: str, meta: Mapping[str, Any], distance: float) -> Passage:
    # Chroma's cosine distance is 1 - cosine similarity.
    return Passage(text=text, source=str(meta["source"]), position=int(meta["position"]), score=1.0 - distance)
