"""Cheap normalisation that guards match patterns against, so trivial obfuscation does not slip past them.

`fold` turns "IGNORE\u00a0 previous\u200b ｉｎｓｔｒｕｃｔｉｏｎｓ" into "ignore previous instructions":

- invisible format characters (zero-width spaces and joiners, soft hyphens, bidi controls, BOM) are dropped;
- Unicode "tag" characters (U+E0020..U+E007E, invisible on screen but read by models: "ASCII smuggling")
  are decoded to the ASCII they hide, so hidden instructions get scanned too;
- compatibility forms are unfolded (NFKD: fullwidth, mathematical bold...), accents and other combining marks
  are dropped, text is casefolded, and a few Cyrillic/Greek look-alikes map to Latin letters;
- every whitespace run becomes one space, or one newline when it holds a line break (`keep_newlines=True`),
  so patterns anchored at a line start still work.

What it does not do: undo paraphrase, translation, base64 or other encodings, leetspeak, words split by
punctuation, or the many homoglyphs outside the small table below. It is a cheap first filter.

`fold_mapped` gives the same text plus, for each folded character, the index of the original character it
came from, so a match on the folded text can be cut out of the original.
"""

from __future__ import annotations

import re
import unicodedata

# Look-alikes that survive NFKD (lower case, as they are applied after casefolding).
_CONFUSABLES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "һ": "h", "ӏ": "l", "ο": "o", "α": "a", "ι": "i", "κ": "k", "ν": "v", "τ": "t", "υ": "u",
})
# Invisible characters that are not in Unicode category Cf (fillers and blanks that render as nothing).
_INVISIBLE = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x034F})
_LINE_BREAKS = frozenset("\r\n\v\f\x85\u2028\u2029")
_TAG_FIRST, _TAG_LAST, _TAG_OFFSET = 0xE0020, 0xE007E, 0xE0000
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINE_RUN = re.compile(r" ?\n\s*")
_ANY_SPACE = re.compile(r"\s+")
# The per-character cache stops growing here, so hostile text full of distinct code points cannot bloat it.
_CACHE_LIMIT = 20_000


def _fold_char(ch: str) -> str:
    cp = ord(ch)
    if _TAG_FIRST <= cp <= _TAG_LAST:
        ch = chr(cp - _TAG_OFFSET)
    elif cp in _INVISIBLE or unicodedata.category(ch) == "Cf":
        return ""
    if ch in _LINE_BREAKS:
        return "\n"
    folded = unicodedata.normalize("NFKD", ch).casefold()
    kept = "".join(c for c in folded if not unicodedata.combining(c) and unicodedata.category(c) != "Mn")
    return kept.translate(_CONFUSABLES)


class _FoldTable(dict[int, str]):
    """A str.translate table filled on demand, so the per-character work runs once per distinct character."""

    def __missing__(self, cp: int) -> str:
        value = _fold_char(chr(cp))
        if len(self) < _CACHE_LIMIT:
            self[cp] = value
        return value


_TABLE = _FoldTable()


def fold(text: str, keep_newlines: bool = False) -> str:
    """The normalised text (see the module docstring); linear time, no Python loop per character."""
    chars = text.translate(_TABLE)
    if not keep_newlines:
        return _ANY_SPACE.sub(" ", chars)
    return _NEWLINE_RUN.sub("\n", _SPACES.sub(" ", chars))


def fold_mapped(text: str) -> tuple[str, list[int]]:
    """`fold(text, keep_newlines=True)` and, per folded character, the index of its source character.

    A whitespace run maps to its first character. Slower than `fold` (a Python loop), so callers run it
    only after `fold` found something.
    """
    out: list[str] = []
    origin: list[int] = []
    run_start = -1  # index where the pending whitespace run began, -1 when none
    run_newline = False
    for i, ch in enumerate(text):
        for c in _TABLE[ord(ch)]:
            if c.isspace():
                if run_start < 0:
                    run_start, run_newline = i, False
                run_newline = run_newline or c == "\n"
                continue
            if run_start >= 0:
                out.append("\n" if run_newline else " ")
                origin.append(run_start)
                run_start = -1
            out.append(c)
            origin.append(i)
    if run_start >= 0:
        out.append("\n" if run_newline else " ")
        origin.append(run_start)
    return "".join(out), origin
