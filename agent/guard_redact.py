"""Redaction of personal data and secrets: emails, phone numbers, card numbers, API keys and other secrets.

Patterns find loose candidates in linear time (each starts only at a token boundary, and repetition is
bounded or unambiguous); short candidates are then validated in Python (Luhn and issuer prefix for cards,
known national/international shapes for phones), so plain numbers, dates, prices and versions stay.

What it does not catch: numbers spelled out or split by words, phones without any separator and without a
"+", local formats outside the shapes below, secrets of vendors not listed, and low-entropy passwords. It
redacts what it recognises; it does not prove text is free of personal data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

REPLACEMENTS = {
    "email": "[redacted email]",
    "phone": "[redacted phone]",
    "card": "[redacted card number]",
    "api_key": "[redacted secret]",
}
_NOUNS = {"email": "email", "phone": "phone number", "card": "card number", "api_key": "secret"}
_ORDER = ("api_key", "email", "card", "phone")  # secrets first: keys hold digits that look like numbers

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
    r"(?![\w-])"
)
_CARD_CANDIDATE = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w])")
# Digit groups joined by exactly one separator each ("-", " (", ") "...): "a / b" or "a, b" end a candidate.
# The lookahead (7 digits, at most 2 separators apart) skips short numbers without a Python call.
_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+/.-])(?=\+?(?:[ ()./-]{0,2}\d){7})(?:\+|\()?\d+(?:(?:[ ./-]|\) ?| ?\()\d+){0,8}(?!\w)"
)
# How every accepted shape starts: a cheap first test before the full validation.
_PHONE_START = re.compile(r"\+|\(|0\d|[2-9]\d{2}[ .-]\d{3}|1[ .-]?(?:\(|[2-9]\d{2}[ .-])")
_PHONE_INTL = re.compile(r"\+\d{8,15}|\+\d{1,4}(?:[ .-]?\(\d{1,4}\) ?\d{1,8})?(?:[ .-]\d{1,8}){0,6}")
_PHONE_US = re.compile(r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}")
_PHONE_NATIONAL = re.compile(r"\(?0\d{1,4}\)?([ /.-])\d{2,8}(?:\1\d{2,8}){0,4}")
_GROUP_SEPARATOR = re.compile(r"[ ./-]+")

_SECRET_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private key", re.compile(
        r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----|.*\Z)",
        re.DOTALL)),
    ("OpenAI-style key", re.compile(r"(?<![\w-])sk-(?:[a-z]{2,8}-)?[A-Za-z0-9_-]{20,}")),
    ("GitHub token", re.compile(r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("Slack token", re.compile(r"(?<![\w-])xox[bpars]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")),
    ("JWT", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
# `api_key = "..."`, `token: ...`, `"password": "..."`, `Authorization: Bearer ...`: the name stays, the
# value goes, when the value looks generated (long, with letters and digits) rather than like code or prose.
_ASSIGNMENT = re.compile(
    r"(?<![a-z0-9])(?P<name>(?:api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|"
    r"(?:access|auth|refresh|bearer)?[_-]?token|password|passwd|pwd)\b[\"']?\s{0,4}[:=]\s{0,4}[\"']?"
    r"|\bbearer\s{1,4})(?P<value>[A-Za-z0-9_\-./+=~]{8,})",
    re.IGNORECASE,
)
_PASSWORD_NAMES = ("password", "passwd", "pwd")


def redact(text: str, kinds: Sequence[str]) -> tuple[str, Counter[str]]:
    """Replace what `kinds` ("email", "phone", "card", "api_key") name; returns the text and counts per kind."""
    counts: Counter[str] = Counter()
    for kind in _ORDER:
        if kind not in kinds:
            continue
        if kind == "api_key":
            text, found = redact_secrets(text)
            counts[kind] += len(found)
        else:
            text, n = _KIND_REDACTORS[kind](text)
            counts[kind] += n
    return text, counts


def describe_counts(counts: Counter[str]) -> str:
    """"1 email, 2 card numbers" in a fixed order; empty when nothing was counted."""
    parts = []
    for kind in ("email", "phone", "card", "api_key"):
        n = counts.get(kind, 0)
        if n:
            parts.append(f"{n} {_NOUNS[kind]}{'' if n == 1 else 's'}")
    return ", ".join(parts)


def redact_secrets(text: str) -> tuple[str, list[str]]:
    """Replace API keys, tokens, private keys and credential assignments; returns the text and what was found.

    Useful on its own for logs and stored episodes. The list names each secret's shape ("GitHub token",
    "private key", "credential assignment"...), once per occurrence, never the secret itself.
    """
    found: list[str] = []
    for label, regex in _SECRET_SHAPES:
        text, n = regex.subn(REPLACEMENTS["api_key"], text)
        found += [label] * n

    def assignment(match: re.Match[str]) -> str:
        name, value = match.group("name"), match.group("value")
        is_password = any(word in name.lower() for word in _PASSWORD_NAMES)
        long_enough = len(value) >= (8 if is_password else 16)
        generated = any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
        if not (long_enough and generated):
            return match.group()
        found.append("credential assignment")
        return name + REPLACEMENTS["api_key"]

    text = _ASSIGNMENT.sub(assignment, text)
    return text, found


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 9 in 10 random numbers do not)."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_start(candidate: str) -> bool:
    return candidate[:1] in ("2", "3", "4", "5", "6")


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and _card_issuer(digits) and luhn_valid(digits)


def _card_issuer(digits: str) -> bool:
    # Issuer prefixes (Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Discover/UnionPay/Maestro 6,
    # Diners/JCB 3, Maestro 50/56-58): drops Luhn-valid ids and timestamps that start with 0, 1, 7, 8 or 9.
    return digits[:1] in ("3", "4", "5", "6") or 2221 <= int(digits[:4] or 0) <= 2720


def _phone_start(candidate: str) -> bool:
    return _PHONE_START.match(candidate) is not None


def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if candidate.startswith("+"):
        return 8 <= digits <= 15 and _PHONE_INTL.fullmatch(candidate) is not None
    if _PHONE_US.fullmatch(candidate) is not None:
        return True
    # National numbers with a trunk 0, grouped by one consistent separator ("020 7946 0958",
    # "06 12 34 56 78", "030/123456"): mixed separators are dates and times ("03.04.2024 12").
    return 9 <= digits <= 12 and _PHONE_NATIONAL.fullmatch(candidate) is not None


@dataclass(frozen=True)
class _Shape:
    """How to validate one kind of number: its replacement, digit-count range and validator."""

    kind: str
    min_digits: int
    max_digits: int
    valid: Callable[[str], bool]
    plausible_start: Callable[[str], bool]  # a cheap test that rejects most candidates before `valid`


def _longest_valid_prefix(candidate: str, shape: _Shape) -> int:
    """Length of the longest prefix, cut at a group separator, that the shape accepts (0 if none).

    Candidates are greedy ("4111 1111 1111 1111 12" with an expiry month), so trailing groups are dropped
    one at a time until the rest validates.
    """
    for end in [len(candidate), *reversed([m.start() for m in _GROUP_SEPARATOR.finditer(candidate)])]:
        prefix = candidate[:end].rstrip("( ")
        digits = sum(c.isdigit() for c in prefix)
        if digits < shape.min_digits:
            break
        if digits <= shape.max_digits and shape.valid(prefix):
            return len(prefix)
    return 0


def _validated_sub(regex: re.Pattern[str], shape: _Shape, text: str) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        candidate = match.group()
        n = _longest_valid_prefix(candidate, shape) if shape.plausible_start(candidate) else 0
        if n == 0:
            return candidate
        count += 1
        return REPLACEMENTS[shape.kind] + candidate[n:]

    return regex.sub(replace, text), count


def _redact_email(text: str) -> tuple[str, int]:
    if "@" not in text:
        return text, 0
    return _EMAIL.subn(REPLACEMENTS["email"], text)


def _redact_card(text: str) -> tuple[str, int]:
    return _validated_sub(_CARD_CANDIDATE, _CARD, text)


def _redact_phone(text: str) -> tuple[str, int]:
    return _validated_sub(_PHONE_CANDIDATE, _PHONE, text)


_CARD = _Shape("card", 13, 19, _is_card, _card_start)
_PHONE = _Shape("phone", 7, 15, _is_phone, _phone_start)
_KIND_REDACTORS: dict[str, Callable[[str], tuple[str, int]]] = {
    "email": _redact_email,
    "card": _redact_card,
    "phone": _redact_phone,
}
