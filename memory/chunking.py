"""Split text into overlapping chunks that end at natural boundaries where possible.

A pure function, so it is tested on its own. Each chunk is returned with its character offset in the
original text: `text[offset:offset + len(chunk)] == chunk` always holds (chunks are the original characters,
trimmed of surrounding whitespace, never rewritten).
"""

from __future__ import annotations

from agent.errors import ConfigError

# Where a chunk may end, best first: a paragraph, a line, a sentence, a clause, a word.
BOUNDARIES = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")
# A boundary is only taken in the second half of the window, so chunks do not shrink to slivers.
MIN_FILL = 0.5


def chunk_text(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, str]]:
    """(offset, chunk) pairs covering every non-blank character of `text`, each chunk <= chunk_chars.

    Consecutive chunks share about `overlap_chars` characters (moved forward to a word start), so a
    sentence cut at a chunk's end is still whole at the next one's start. Blank text gives no chunks.
    """
    _validate(chunk_chars, overlap_chars)
    chunks: list[tuple[int, str]] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _chunk_end(text, start, chunk_chars, overlap_chars)
        piece = text[start:end].rstrip()
        if piece:
            chunks.append((start, piece))
        if end >= len(text):
            break
        start = _next_start(text, start, end, overlap_chars)
    return chunks


def _validate(chunk_chars: int, overlap_chars: int) -> None:
    if chunk_chars < 1:
        raise ConfigError(f"chunk_chars must be at least 1, got {chunk_chars}")
    if overlap_chars < 0:
        raise ConfigError(f"overlap_chars must not be negative, got {overlap_chars}")
    if overlap_chars >= chunk_chars:
        raise ConfigError(
            f"overlap_chars ({overlap_chars}) must be smaller than chunk_chars ({chunk_chars}), "
            "or chunking would never advance; lower [retrieval] overlap_chars"
        )


def _chunk_end(text: str, start: int, chunk_chars: int, overlap_chars: int) -> int:
    """Where the chunk starting at `start` ends: the best boundary in the window's tail, or a hard cut."""
    limit = start + chunk_chars
    if limit >= len(text):
        return len(text)
    # Past the overlap (so the next chunk starts later than this one) and past MIN_FILL of the window.
    floor = start + max(overlap_chars + 1, int(chunk_chars * MIN_FILL))
    for boundary in BOUNDARIES:
        cut = text.rfind(boundary, floor, limit)
        if cut != -1:
            # Keep the boundary's punctuation in this chunk; its whitespace is trimmed anyway.
            return cut + len(boundary.rstrip(" ")) if boundary.strip() else cut + len(boundary)
    return limit


def _next_start(text: str, start: int, end: int, overlap_chars: int) -> int:
    """Step back `overlap_chars` from `end`, then forward to a word start, staying after `start`."""
    if overlap_chars == 0:
        return _skip_space(text, end)
    candidate = max(end - overlap_chars, start + 1)
    # Do not begin mid-word: move to just after the next whitespace, unless that passes `end`.
    if candidate > 0 and not text[candidate - 1].isspace():
        space = _find_space(text, candidate, end)
        if space != -1:
            candidate = space
    return _skip_space(text, candidate)


def _find_space(text: str, lo: int, hi: int) -> int:
    for i in range(lo, hi):
        if text[i].isspace():
            return i
    return -1


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i
