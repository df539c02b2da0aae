from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.config import Settings
from agent.errors import ConfigError, StoreLockedError
from memory import VectorStore

REPO = Path(__file__).resolve().parents[2]


def _vectors(*rows: Sequence[float]) -> list[Sequence[float]]:
    return list(rows)


def _open_in_child(chroma_dir: Path, wait_s: float) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from agent.errors import StoreLockedError
        from memory import VectorStore
        try:
            VectorStore.open(Path({str(chroma_dir)!r}), wait_s={wait_s}).close()
        except StoreLockedError as e:
            print("LOCKED:", e)
            sys.exit(3)
        print("OPENED")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_second_process_gets_store_locked_error_naming_the_holder(tmp_path: Path) -> None:
    chroma_dir = tmp_path / "home" / "chroma"
    with VectorStore.open(chroma_dir) as store:
        store.collection("documents").add(ids=["a"], embeddings=_vectors([1.0, 0.0]), documents=["first"])
        started = time.monotonic()
        child = _open_in_child(chroma_dir, wait_s=0.5)
        assert child.returncode == 3, child.stdout + child.stderr
        message = child.stdout
        assert f"vector store in {chroma_dir} is in use by process" in message
        assert "pytest" in message or sys.argv[0] in message  # the holder's command line
        assert "Close that process" in message
        assert time.monotonic() - started > 0.5
        # The owner keeps working after the failed attempt.
        docs = store.collection("documents")
        docs.add(ids=["b"], embeddings=_vectors([0.0, 1.0]), documents=["second"])
        assert docs.count() == 2
    # Once closed, another process can open it.
    assert _open_in_child(chroma_dir, wait_s=0.5).stdout.strip() == "OPENED"


def test_holder_is_recorded_beside_the_lock_and_removed_on_close(tmp_path: Path) -> None:
    import os

    with VectorStore.open(tmp_path / "chroma") as store:
        owner = json.loads((tmp_path / "store.owner").read_text(encoding="utf-8"))
        assert owner["pid"] == os.getpid()
        assert isinstance(owner["command"], str) and owner["command"]
        assert not store.closed
    assert not (tmp_path / "store.owner").exists()


def test_a_second_open_in_the_same_process_is_refused_with_advice(tmp_path: Path) -> None:
    with VectorStore.open(tmp_path / "chroma"):
        with pytest.raises(StoreLockedError, match="this process .* share it"):
            VectorStore.open(tmp_path / "chroma", wait_s=0.1)


def test_waiting_opener_gets_the_store_when_the_holder_closes_in_time(tmp_path: Path) -> None:
    first = VectorStore.open(tmp_path / "chroma")
    timer = threading.Timer(0.3, first.close)
    timer.start()
    with VectorStore.open(tmp_path / "chroma", wait_s=10) as second:
        assert second.collection("episodes").count() == 0
    timer.join()


def test_data_persists_across_reopen_and_close_is_idempotent(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path / "chroma")
    store.collection("documents").add(ids=["a"], embeddings=_vectors([0.6, 0.8]), documents=["kept"])
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(ConfigError, match="closed"):
        store.collection("documents")
    with VectorStore.open(tmp_path / "chroma") as again:
        got = again.collection("documents").get(ids=["a"], include=["documents"])
        assert got["documents"] == ["kept"]


def test_collections_use_cosine_and_no_embedding_function(store: VectorStore) -> None:
    col = store.collection("documents")
    assert col.configuration_json["hnsw"]["space"] == "cosine"
    assert col._embedding_function is None
    col.add(ids=["x", "y"], embeddings=_vectors([1.0, 0.0], [0.0, 2.0]), documents=["x", "y"])
    result = col.query(query_embeddings=_vectors([2.0, 0.0]), n_results=2, include=["distances"])
    # Cosine: scale does not matter; identical direction -> distance 0, orthogonal -> 1.
    distances = result["distances"]
    assert distances is not None and distances[0] == pytest.approx([0.0, 1.0], abs=1e-6)
    # Texts without embeddings would need Chroma's default embedding function: refused, no download.
    with pytest.raises(ValueError, match="embedding function"):
        col.add(ids=["z"], documents=["no embedding given"])


def test_bad_collection_name_is_a_config_error(store: VectorStore) -> None:
    with pytest.raises(ConfigError, match="cannot open collection"):
        store.collection("x")


def test_from_settings_uses_the_data_directory(settings: Settings) -> None:
    with VectorStore.from_settings(settings) as store:
        assert store.location == str(settings.chroma_dir)
        assert (settings.home / "store.lock").exists()
        assert settings.chroma_dir.is_dir()


def test_unwritable_data_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot create the store lock"):
        VectorStore.open(blocker / "chroma")
