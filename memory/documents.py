"""Turning files into text for ingestion: which files qualify, how they decode, HTML to text.

Every failure is a reason string, never an exception: ingesting a folder with one bad file ingests the
rest and reports that file as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".py"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES
# Larger files are almost always data or generated output, and would take minutes to embed on a CPU.
MAX_FILE_BYTES = 5_000_000


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


def walk_files(paths: Sequence[Path]) -> Iterator[Path | SkippedFile]:
    """Files under `paths` (directories recursively, in sorted order), or a SkippedFile saying why not.

    Hidden entries (".git", ".venv", ".env"...) inside a directory are skipped silently; a path named
    explicitly is always considered.
    """
    for path in paths:
        path = path.expanduser()
        if path.is_dir():
            yield from _walk_dir(path)
        elif path.is_file():
            yield path.resolve()
        elif path.exists():
            yield SkippedFile(str(path), "not a regular file")
        else:
            yield SkippedFile(str(path), "not found")


def _walk_dir(root: Path) -> Iterator[Path | SkippedFile]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield (Path(dirpath) / name).resolve()


def read_text(path: Path) -> str | SkippedFile:
    """The text of a supported file, or a SkippedFile with the reason it cannot be used."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = " ".join(sorted(SUPPORTED_SUFFIXES))
        return SkippedFile(str(path), f"unsupported file type {suffix or '(none)'!r} (supported: {kinds})")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return SkippedFile(str(path), f"too large ({size} bytes > {MAX_FILE_BYTES})")
        data = path.read_bytes()
    except OSError as e:
        return SkippedFile(str(path), f"unreadable: {e.strerror or e}")
    if b"\0" in data:
        return SkippedFile(str(path), "looks binary (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return SkippedFile(
            str(path), f"not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); convert it to UTF-8"
        )
    if suffix in HTML_SUFFIXES:
        text = html_to_text(text)
    if not text.strip():
        return SkippedFile(str(path), "no text in it")
    return text


# Elements whose end starts a new paragraph or line in the text, so chunking can cut there.
_BLOCKS = frozenset(
    "p div section article header footer nav aside main h1 h2 h3 h4 h5 h6 ul ol li table tr pre "
    "blockquote dl dt dd figure figcaption form title".split()
)
_DROPPED = frozenset({"script", "style", "noscript", "template", "svg"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._dropping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED:
            self._dropping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED:
            self._dropping = max(0, self._dropping - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._dropping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document: script/style dropped, block elements become paragraph breaks."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    # Collapse the many blank lines that nested blocks produce into single paragraph breaks.
    text, blank = [], False
    for line in lines:
        if line:
            text.append(line)
            blank = False
        elif not blank and text:
            text.append("")
            blank = True
    return "\n".join(text).strip()
