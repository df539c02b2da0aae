"""Memory: embeddings, the vector store, document retrieval and episodic memory.

    MiniLMEmbedder   the bundled all-MiniLM-L6-v2 (Embedder seam)
    VectorStore      one Chroma client: the embedded store, locked to one process, or a Chroma server
    DocumentStore    ingest files as overlapping chunks, dense search with citations (Retriever seam)
    ChromaEpisodes   per-user episodes recalled by similarity (EpisodicMemory seam)

Importing this package is cheap: torch, transformers and chromadb load when first used.
`memory` never imports `tools` or `graphs`.
"""

from __future__ import annotations

from memory.chunking import chunk_text
from memory.documents import SUPPORTED_SUFFIXES, SkippedFile, html_to_text
from memory.embeddings import MiniLMEmbedder, bundled_model_dir
from memory.episodic import ChromaEpisodes
from memory.lock import StoreLock
from memory.retriever import DocumentStore, IngestReport
from memory.store import VectorStore

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ChromaEpisodes",
    "DocumentStore",
    "IngestReport",
    "MiniLMEmbedder",
    "SkippedFile",
    "StoreLock",
    "VectorStore",
    "bundled_model_dir",
    "chunk_text",
    "html_to_text",
]
