from __future__ import annotations

import random

import pytest

from agent.errors import ConfigError
from memory import chunk_text


def _check_invariants(text: str, chunks: list[tuple[int, str]], size: int) -> None:
    covered: set[int] = set()
    previous = -1
    for offset, chunk in chunks:
        assert text[offset : offset + len(chunk)] == chunk  # offsets point at the original characters
        assert 0 < len(chunk) <= size
        assert chunk == chunk.strip()
        assert offset > previous  # strictly forward
        previous = offset
        covered.update(range(offset, offset + len(chunk)))
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert not missing, f"characters not in any chunk at {missing[:5]}"


def test_empty_and_blank_text_give_no_chunks() -> None:
    assert chunk_text("", 100, 10) == []
    assert chunk_text("  \n\n \t", 100, 10) == []


def test_text_shorter_than_a_chunk_is_one_trimmed_chunk() -> None:
    assert chunk_text("  hello world\n", 100, 10) == [(2, "hello world")]


def test_text_of_exactly_chunk_size_is_one_chunk() -> None:
    assert chunk_text("a" * 50, 50, 5) == [(0, "a" * 50)]


def test_prefers_paragraph_boundaries() -> None:
    paragraphs = ["First paragraph about apples. " * 3, "Second one about pears. " * 3, "Third on plums. " * 5]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk_text(text, 120, 0)
    assert [c for _, c in chunks] == [p.strip() for p in paragraphs]


def test_falls_back_to_sentences_then_words_then_hard_cuts() -> None:
    text = "One sentence here. Another sentence there. " * 10
    for _, chunk in chunk_text(text, 100, 0)[:-1]:
        assert chunk.endswith(".")
    words = " ".join(["word"] * 100)
    assert all(not c.startswith("ord") for _, c in chunk_text(words, 37, 0))
    assert chunk_text("x" * 25, 10, 3) == [(0, "x" * 10), (7, "x" * 10), (14, "x" * 10), (21, "xxxx")]


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    text = " ".join(f"w{i:03d}" for i in range(200))
    chunks = chunk_text(text, 100, 30)
    _check_invariants(text, chunks, 100)
    for (o1, c1), (o2, _) in zip(chunks, chunks[1:], strict=False):
        end1 = o1 + len(c1)
        assert o2 < end1  # overlapping
        assert end1 - o2 <= 30
        assert text[o2 - 1] == " "  # begins at a word start


@pytest.mark.parametrize("seed", range(20))
def test_random_texts_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["word", "longerword", ".", "\n", "\n\n", " ", "  ", "x" * 60, "é", "?"]
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 400)))
    size = rng.randint(5, 200)
    overlap = rng.randint(0, size - 1)
    _check_invariants(text, chunk_text(text, size, overlap), size)


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [(100, 100, "must be smaller"), (100, 150, "must be smaller"), (0, 0, "at least 1"), (10, -1, "negative")],
)
def test_bad_sizes_are_config_errors(size: int, overlap: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chunk_text("some text", size, overlap)
