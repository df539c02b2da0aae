"""Find pattern hits in folded text, and cut them out of the original text.

Scanning runs on `fold(text)` (cheap, C-level); only when something matches and must be removed does
`fold_mapped` map the hits back to spans of the original text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.guard_patterns import Rule
from agent.guard_text import fold, fold_mapped

_QUOTE_CHARS = 60


@dataclass(frozen=True)
class Hit:
    """A rule that matched: its family and the (folded) text it matched, shortened for messages."""

    family: str
    matched: str

    def describe(self) -> str:
        return f"{self.family}: {self.matched!r}"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


class Scanner:
    """A fixed set of rules run against folded text."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(rules)
        self._needs_lines = any(rule.lines for rule in self._rules)

    def first_hit(self, text: str) -> Hit | None:
        """The first rule (in rule order) that matches anywhere in the text, or None."""
        lines = fold(text, keep_newlines=True) if self._needs_lines else ""
        flat = lines.replace("\n", " ") if self._needs_lines else fold(text)
        for rule in self._rules:
            match = rule.regex.search(lines if rule.lines else flat)
            if match is not None:
                return Hit(rule.family, _quote(match.group()))
        return None

    def remove(self, text: str, replacement: str) -> tuple[str, list[Hit]]:
        """The text with every hit's span replaced (overlapping spans merged), and the hits."""
        lines, origin = fold_mapped(text)
        flat = lines.replace("\n", " ")  # same length, so `origin` holds for both views
        spans: list[tuple[int, int]] = []
        hits: list[Hit] = []
        for rule in self._rules:
            for match in rule.regex.finditer(lines if rule.lines else flat):
                if match.end() == match.start():
                    continue
                spans.append((origin[match.start()], origin[match.end() - 1] + 1))
                hits.append(Hit(rule.family, _quote(match.group())))
        return _replace_spans(text, spans, replacement), hits


def _replace_spans(text: str, spans: list[tuple[int, int]], replacement: str) -> str:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    pieces: list[str] = []
    last = 0
    for start, end in merged:
        pieces += [text[last:start], replacement]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
