"""Scorers for the learning benchmark: tool-call replies against expected calls, and extracted records.

Tool calls are read from the engine's parse of the reply (`LLMReply.tool_calls`, `parse_errors`), exactly as
the agent would act on them. A call is right when its name and its arguments equal the expected ones after
normalisation: strings compared with whitespace collapsed and case folded, numbers as numbers (4 == 4.0),
key order ignored; an argument too many or too few is wrong. A reply is right when it makes exactly the
expected calls (any order) and nothing unreadable; where no call is expected, when it makes none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.types import LLMReply

Call = tuple[str, dict[str, Any]]


def canonical(value: Any) -> Any:
    """A value normalised for comparison (see the module docstring)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return round(float(value), 6)
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    return value


def _keys(calls: Sequence[Call], with_arguments: bool) -> list[str]:
    return sorted(json.dumps([name, canonical(args) if with_arguments else None], sort_keys=True)
                  for name, args in calls)


@dataclass(frozen=True)
class CallVerdict:
    """How one reply did. `right`: exact calls (or rightly none); `names_right`: the right functions."""

    expected_call: bool
    called: bool
    right: bool
    names_right: bool


def judge_calls(expected: Sequence[Call], reply: LLMReply) -> CallVerdict:
    made = [(c.name, c.arguments) for c in reply.tool_calls]
    called = bool(made) or bool(reply.parse_errors)  # an unreadable call is still an attempt to call
    if not expected:
        return CallVerdict(False, called, not called, not called)
    clean = not reply.parse_errors
    return CallVerdict(True, called, clean and _keys(made, True) == _keys(expected, True),
                       clean and _keys(made, False) == _keys(expected, False))


@dataclass
class CallTally:
    """Verdicts of one model variant over a test set, summed by example kind."""

    verdicts: Sequence[tuple[str, CallVerdict]]

    def metrics(self) -> dict[str, Any]:
        with_calls = [v for _, v in self.verdicts if v.expected_call]
        without = [v for _, v in self.verdicts if not v.expected_call]
        by_kind: dict[str, list[CallVerdict]] = {}
        for kind, verdict in self.verdicts:
            by_kind.setdefault(kind, []).append(verdict)
        return {
            "n": len(self.verdicts),
            "accuracy": _share(v.right for _, v in self.verdicts),
            "calls_exact": _share(v.right for v in with_calls),
            "calls_names": _share(v.names_right for v in with_calls),
            "no_call_right": _share(v.right for v in without),
            "by_kind": {kind: {"n": len(vs), "right": _share(v.right for v in vs)} for kind, vs in by_kind.items()},
        }


def judge_record(expected: dict[str, Any], text: str) -> dict[str, bool]:
    """Field-by-field match of the first JSON object in `text` against `expected`, plus "record" (all of them)."""
    found = first_object(text)
    fields = {key: key in found and _same_field(key, found[key], value) for key, value in expected.items()}
    fields["record"] = all(fields.values()) and set(found) == set(expected)
    return fields


def first_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply (a model may wrap it in prose or a code fence); {} when there is none."""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _same_field(key: str, found: Any, expected: Any) -> bool:
    if key == "amount":
        return isinstance(found, int | float) and not isinstance(found, bool) and bool(abs(found - expected) < 0.005)
    if key == "currency":
        return isinstance(found, str) and found.strip().upper() == expected
    if key == "date":
        return bool(found == expected)
    return bool(canonical(found) == canonical(expected))


def _share(flags: Any) -> float | None:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else None
