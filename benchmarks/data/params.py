"""Invented functions for the tool-calling benchmark: typed parameters that can also say themselves in words.

A `Param` knows its JSON schema and how to draw a value together with the words a user would use for it:
`sample(rng) -> (surface, value)`, e.g. ("four", 4) or ("in Fahrenheit", "fahrenheit"). A request mentions a
required parameter where its function's ask template says `{name}`; an optional one, when drawn, by its
`phrase` ("for {} nights") appended to the request. The value is what a correct call must pass.

A `Function` is a tool the model is offered: name, description, domain, parameters and ask templates.
Arguments are always built in the schema's property order, which is the order the engine's grammar
(xgrammar) makes a constrained model write them in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.types import ToolSpec
from benchmarks.data.pools import FIRST_NAMES, LAST_NAMES

Sampler = Callable[[random.Random], tuple[str, Any]]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")


@dataclass(frozen=True, eq=False)  # identity: schemas are dicts
class Param:
    name: str
    schema: dict[str, Any]  # the property's JSON schema, description included
    sample: Sampler
    phrase: str = "{}"  # how a request mentions it when optional; "{}" is replaced by the surface
    required: bool = True


@dataclass(frozen=True, eq=False)  # identity: schemas are dicts
class Function:
    name: str
    description: str
    domain: str
    params: tuple[Param, ...]
    # Request templates: "{param}" for each required parameter; a question ends with "?", a statement that is
    # not a command ("my cat needs the vet.") with "."; anything else is a command ("book a table ...").
    asks: tuple[str, ...]

    def spec(self) -> ToolSpec:
        properties = {p.name: p.schema for p in self.params}
        schema: dict[str, Any] = {"type": "object", "properties": properties,
                                  "required": [p.name for p in self.params if p.required]}
        return ToolSpec(self.name, self.description, schema)

    @property
    def required(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.required)

    @property
    def optional(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.required)


def text(name: str, description: str, pool: Sequence[str], phrase: str = "{}", required: bool = True) -> Param:
    """A string drawn from `pool`; the request says it verbatim."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        value = rng.choice(pool)
        return value, value

    return Param(name, _schema("string", description), sample, phrase, required)


def made_up(name: str, description: str, make: Callable[[random.Random], str], phrase: str = "{}",
            required: bool = True) -> Param:
    """A string made by `make` (an id, an email, a date); the request says it verbatim."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        value = make(rng)
        return value, value

    return Param(name, _schema("string", description), sample, phrase, required)


def integer(name: str, description: str, low: int, high: int, phrase: str = "{}", required: bool = True) -> Param:
    """An int in [low, high]; small ones are sometimes spelled out ("three")."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        value = rng.randint(low, high)
        words = value < len(NUMBER_WORDS) and rng.random() < 0.25
        return (NUMBER_WORDS[value] if words else str(value)), value

    schema = _schema("integer", description, minimum=low, maximum=high)
    return Param(name, schema, sample, phrase, required)


def number(name: str, description: str, low: float, high: float, phrase: str = "{}", required: bool = True) -> Param:
    """A number with at most two decimals, written as a user would ("12.5", "40")."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        value = round(rng.uniform(low, high), rng.choice((0, 1, 2)))
        value = int(value) if value == int(value) else value
        return f"{value}", value

    return Param(name, _schema("number", description), sample, phrase, required)


def choice(name: str, description: str, options: Sequence[str], phrase: str = "{}", required: bool = True,
           said: dict[str, str] | None = None) -> Param:
    """An enum; `said` maps a value to the words a request uses for it (default: the value itself)."""
    words = said or {}

    def sample(rng: random.Random) -> tuple[str, Any]:
        value = rng.choice(options)
        return words.get(value, value), value

    schema = _schema("string", description, enum=list(options))
    return Param(name, schema, sample, phrase, required)


def flag(name: str, description: str, yes: str, no: str) -> Param:
    """An optional boolean: the request says `yes` for true and `no` for false."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        value = rng.random() < 0.6
        return (yes if value else no), value

    return Param(name, _schema("boolean", description), sample, "{}", False)


def items(name: str, description: str, pool: Sequence[str], phrase: str = "{}", required: bool = True) -> Param:
    """A list of 2 or 3 distinct strings from `pool`, said as "a, b and c"."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        chosen = rng.sample(list(pool), rng.choice((2, 3)))
        return ", ".join(chosen[:-1]) + " and " + chosen[-1], chosen

    schema = _schema("array", description, items={"type": "string"})
    return Param(name, schema, sample, phrase, required)


def record(name: str, description: str, fields: Sequence[Param], said: str, phrase: str = "{}",
           required: bool = True) -> Param:
    """A nested object of required fields; `said` places each field's surface ("{name} in {city}")."""
    def sample(rng: random.Random) -> tuple[str, Any]:
        drawn = {f.name: f.sample(rng) for f in fields}
        return said.format(**{k: s for k, (s, _) in drawn.items()}), {k: v for k, (_, v) in drawn.items()}

    schema = _schema("object", description, properties={f.name: f.schema for f in fields},
                     required=[f.name for f in fields])
    return Param(name, schema, sample, phrase, required)


def _schema(kind: str, description: str, **keywords: Any) -> dict[str, Any]:
    """A property's schema; an empty description is left out (it would only repeat the name)."""
    return {"type": kind, **({"description": description} if description else {}), **keywords}


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def email(rng: random.Random) -> str:
    host = rng.choice(("example.com", "example.org", "mail.example.net"))
    return f"{rng.choice(FIRST_NAMES).lower()}.{rng.choice(LAST_NAMES).lower()}@{host}"


def date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock(rng: random.Random) -> str:
    return f"{rng.randint(7, 21):02d}:{rng.choice(('00', '15', '30', '45'))}"


def code(prefix: str, digits: int = 4) -> Callable[[random.Random], str]:
    """Identifiers like "ORD-4821"."""
    def make(rng: random.Random) -> str:
        return f"{prefix}-{rng.randint(10 ** (digits - 1), 10 ** digits - 1)}"

    return make
