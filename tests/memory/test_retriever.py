from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.protocols import Retriever
from memory import DocumentStore, MiniLMEmbedder, VectorStore, html_to_text

LOCKING = (
    "Design notes.\n\nThe store lock is an exclusive flock on store.lock in the data directory. "
    "A second process waits a few seconds and then reports who holds the lock."
)
BAKING = "Sourdough bread needs a starter, flour, water and salt. Bake it at 240 degrees for forty minutes."
HTML = """<html><head><title>Garden</title><style>body { color: red }</style>
<script>var secret = "do not index me";</script></head>
<body><h1>Tomatoes</h1><p>Water tomatoes deeply twice a week &amp; mulch them.</p></body></html>"""


@pytest.fixture
def docs(store: VectorStore, embedder: MiniLMEmbedder) -> DocumentStore:
    return DocumentStore(store, embedder, chunk_chars=200, overlap_chars=40)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "design.md").write_text(LOCKING, encoding="utf-8")
    (root / "sub" / "bread.txt").write_text(BAKING, encoding="utf-8")
    (root / "sub" / "garden.html").write_text(HTML, encoding="utf-8")
    (root / "notes.rst").write_text("Release notes\n=============\n\nVersion 2 adds teaching.", encoding="utf-8")
    (root / "tool.py").write_text('def add(a, b):\n    """Add two numbers."""\n    return a + b\n', encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "empty.md").write_text("   \n", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_text("hidden", encoding="utf-8")
    return root


def test_is_a_retriever(docs: DocumentStore) -> None:
    retriever: Retriever = docs  # checked by mypy: DocumentStore satisfies the seam
    assert retriever.search("anything", 3) == []  # nothing ingested yet
    assert docs.count() == 0 and docs.sources() == []


def test_ingest_walks_directories_and_reports_skipped_files(docs: DocumentStore, corpus: Path) -> None:
    messages: list[str] = []
    report = docs.ingest([corpus], progress=messages.append)
    names = sorted(Path(f).name for f in report.files)
    assert names == ["bread.txt", "design.md", "garden.html", "notes.rst", "tool.py"]
    assert all(Path(f).is_absolute() for f in report.files)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"image.png", "latin1.txt", "empty.md"}  # .git is not walked
    assert "unsupported file type '.png'" in reasons["image.png"]
    assert "not valid UTF-8" in reasons["latin1.txt"] and "offset 3" in reasons["latin1.txt"]
    assert "no text" in reasons["empty.md"]
    assert report.chunks == docs.count() >= 5
    assert len(messages) == 8 and any(m.startswith("skipped") for m in messages)
    assert docs.sources() == sorted(report.files)
    assert "skipped 3" in report.summary()


def test_search_returns_the_relevant_chunk_with_source_and_position(
    docs: DocumentStore, corpus: Path
) -> None:
    docs.ingest([corpus])
    [best, *rest] = docs.search("who holds the store lock when a second process waits?", 3)
    assert best.source == str((corpus / "design.md").resolve())
    assert "flock" in best.text or "holds the lock" in best.text
    assert best.position >= 0
    assert len(rest) == 2 and all(best.score >= p.score for p in rest)
    assert 0.3 < best.score <= 1.0
    [bread] = docs.search("how long should I bake sourdough?", 1)
    assert bread.source.endswith("bread.txt") and bread.position == 0


def test_html_is_ingested_as_visible_text(docs: DocumentStore, corpus: Path) -> None:
    docs.ingest([corpus / "sub" / "garden.html"])
    [hit] = docs.search("how often to water tomatoes", 1)
    assert "Water tomatoes deeply twice a week & mulch them." in hit.text
    assert "secret" not in hit.text and "color" not in hit.text


def test_positions_follow_chunk_order(docs: DocumentStore, tmp_path: Path) -> None:
    long = tmp_path / "long.txt"
    topics = ["volcanoes erupt lava", "penguins live in Antarctica", "jazz uses improvisation"]
    long.write_text("\n\n".join(f"Paragraph {i}: {t}. " * 4 for i, t in enumerate(topics)), encoding="utf-8")
    report = docs.ingest([long])
    assert report.chunks >= 3
    [hit] = docs.search("jazz improvisation", 1)
    assert hit.position == report.chunks - 1 and "jazz" in hit.text
    [hit] = docs.search("volcano lava", 1)
    assert hit.position == 0


def test_reingesting_a_file_replaces_its_chunks(docs: DocumentStore, tmp_path: Path) -> None:
    path = tmp_path / "changing.md"
    path.write_text("Version one talks about apples. " * 20, encoding="utf-8")
    first = docs.ingest([path]).chunks
    assert first > 1 and docs.count() == first
    path.write_text("Version two is about oranges only.", encoding="utf-8")
    assert docs.ingest([path]).chunks == 1
    assert docs.count() == 1
    [hit] = docs.search("apples", 5)
    assert "oranges" in hit.text


def test_a_file_named_twice_is_ingested_once(docs: DocumentStore, corpus: Path) -> None:
    report = docs.ingest([corpus / "sub", corpus / "sub" / "bread.txt"])
    assert sorted(Path(f).name for f in report.files) == ["bread.txt", "garden.html"]
    assert report.chunks == docs.count()


def test_remove_and_missing_paths(docs: DocumentStore, corpus: Path) -> None:
    docs.ingest([corpus / "design.md", corpus / "sub" / "bread.txt"])
    assert docs.remove(corpus / "design.md") >= 1
    assert [Path(s).name for s in docs.sources()] == ["bread.txt"]
    assert docs.remove(str(corpus / "nowhere.md")) == 0
    report = docs.ingest([corpus / "nowhere.md"])
    assert report.files == () and report.skipped[0].reason == "not found"


def test_bad_settings_fail_early(store: VectorStore, embedder: MiniLMEmbedder) -> None:
    with pytest.raises(ConfigError, match="overlap_chars"):
        DocumentStore(store, embedder, chunk_chars=100, overlap_chars=100)
    with pytest.raises(ConfigError, match="k must be"):
        DocumentStore(store, embedder).search("x", 0)


def test_html_to_text_keeps_paragraphs_and_entities() -> None:
    text = html_to_text("<div><p>One &lt;b&gt;</p><p>Two<br>Three</p><script>x()</script></div>")
    assert text == "One <b>\n\nTwo\nThree"
