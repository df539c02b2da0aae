"""The vector store: one Chroma client, owned by one process (or a Chroma server shared by many).

    with VectorStore.open(settings.chroma_dir, settings.home / "store.lock") as store:
        docs = store.collection("documents")

Collections are created without an embedding function and with cosine distance: we always pass embeddings
computed by `memory.embeddings.MiniLMEmbedder`, and Chroma's default embedding function must never run
(it downloads a model). chromadb is imported when a store is opened, not on `import memory`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from memory.lock import StoreLock

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from agent.config import Settings

DEFAULT_WAIT_S = 5.0
LOCK_FILE_NAME = "store.lock"


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


class VectorStore:
    """A Chroma client plus, for the embedded store, the lock that makes this process its only user.

    Use `open()` for the embedded store in a data directory, `http()` for a Chroma server. Closing is
    idempotent; after it, `collection()` raises. Thread-safe to share within the process.
    """

    def __init__(self, client: ClientAPI, location: str, lock: StoreLock | None = None) -> None:
        self._client: ClientAPI | None = client
        self.location = location
        self._lock = lock
        self._guard = threading.Lock()
        self._collections: dict[str, Collection] = {}

    @classmethod
    def open(
        cls, chroma_dir: Path, lock_file: Path | None = None, wait_s: float = DEFAULT_WAIT_S
    ) -> VectorStore:
        """Lock the data directory, then open the embedded Chroma store in `chroma_dir`.

        `lock_file` defaults to `store.lock` beside `chroma_dir`. Raises StoreLockedError when another
        process holds the lock for longer than `wait_s`.
        """
        lock = StoreLock(lock_file or chroma_dir.parent / LOCK_FILE_NAME, wait_s, guarded=chroma_dir)
        lock.acquire()
        try:
            import chromadb

            chroma_dir.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(chroma_dir), settings=_chroma_settings())
        except Exception as e:
            lock.release()
            raise ConfigError(
                f"could not open the vector store in {chroma_dir}: {e}. "
                "Check the directory is writable, or move it aside to start with an empty store."
            ) from e
        return cls(client, str(chroma_dir), lock)

    @classmethod
    def from_settings(cls, settings: Settings, wait_s: float = DEFAULT_WAIT_S) -> VectorStore:
        return cls.open(settings.chroma_dir, settings.home / LOCK_FILE_NAME, wait_s)

    @classmethod
    def http(cls, host: str, port: int = 8000) -> VectorStore:
        """A client of a Chroma server (`chroma run --path DIR`): the server serialises writers, no lock."""
        import chromadb

        try:
            client = chromadb.HttpClient(host=host, port=port, settings=_chroma_settings())
        except Exception as e:
            raise ConfigError(f"could not reach the Chroma server at {host}:{port}: {e}") from e
        return cls(client, f"http://{host}:{port}")

    @property
    def closed(self) -> bool:
        return self._client is None

    def collection(self, name: str) -> Collection:
        """The collection `name` (created on first use): no embedding function, cosine distance."""
        with self._guard:
            if self._client is None:
                raise ConfigError(f"the vector store at {self.location} is closed; open it again")
            found = self._collections.get(name)
            if found is None:
                found = self._create(self._client, name)
                self._collections[name] = found
            return found

    @staticmethod
    def _create(client: ClientAPI, name: str) -> Collection:
        from chromadb.errors import ChromaError

        try:
            return client.get_or_create_collection(
                name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        except (ChromaError, ValueError) as e:
            raise ConfigError(f"cannot open collection {name!r}: {e}") from e

    def close(self) -> None:
        with self._guard:
            client, self._client = self._client, None
            self._collections.clear()
        if client is None:
            return
        try:
            close = getattr(client, "close", None)
            if callable(close):
                close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"VectorStore({self.location!r}, {state})"
