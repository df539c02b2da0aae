"""What tools from other sources (LangChain tools, MCP servers) share before they reach the model's prompt:
cleaned names, descriptions, schemas and outputs, and argument models built from JSON schemas.

A foreign tool's name, description and schema are text somebody else wrote that goes verbatim into the
prompt, and its output comes back into it. Cleaning removes what a human reviewing the tool cannot see
(control characters and terminal escapes, zero-width, bidi and tag characters, private-use and unassigned
code points) and caps the length, so a hostile source cannot hide instructions from the reader or flood the
context window.

What this does NOT protect against: instructions written in plain visible text ("ignore previous
instructions") in a description or schema. Tool results pass the guards' injection screen; descriptions do
not, so only configure sources you trust, and read `metagent tools list` after adding one.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from agent.errors import ConfigError

DESCRIPTION_CAP_CHARS = 1024
SCHEMA_TEXT_CAP_CHARS = 512  # each description or title inside an argument schema
SCHEMA_CAP_BYTES = 16384  # the whole argument schema, as JSON
NAME_CAP_CHARS = 64

_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Terminal escape sequences (CSI "ESC [ ... m", OSC "ESC ] ... BEL", two-character ones): dropped whole.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})  # control, format (zero-width, bidi), private, ...
# Invisible letters and marks outside those categories: Hangul fillers, Mongolian vowel separator,
# Khmer inherent vowels, the combining grapheme joiner, variation selectors.
_DROP_EXTRA = frozenset("\u115f\u1160\u3164\uffa0\u180e\u17b4\u17b5\u034f") | frozenset(
    chr(c) for c in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)
_LINE_BREAKS = frozenset("\r\x0b\x0c\x85\u2028\u2029")


def strip_invisible(text: str) -> str:
    """`text` without control or invisible characters; tabs and newlines stay (other line breaks become
    newlines), every other space character becomes a plain space."""
    text = _ESCAPE.sub("", text.replace("\r\n", "\n"))
    if text.isascii():
        return _ASCII_CONTROL.sub(lambda m: "\n" if m.group() in _LINE_BREAKS else "", text)
    out: list[str] = []
    for ch in text:
        if ch in "\n\t":
            out.append(ch)
        elif ch in _LINE_BREAKS:
            out.append("\n")
        elif ch in _DROP_EXTRA:
            continue
        else:
            category = unicodedata.category(ch)
            if category == "Zs":
                out.append(" ")
            elif category not in _DROP_CATEGORIES:
                out.append(ch)
    return "".join(out)


def clean_text(text: str, cap_chars: int) -> str:
    """Visible text only, runs of spaces and blank lines collapsed, at most cap_chars (cut with "...")."""
    text = strip_invisible(text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ?\n[ \n]*\n", "\n\n", text).strip()
    if len(text) > cap_chars:
        text = text[: cap_chars - 3].rstrip() + "..."
    return text


def clean_description(text: str | None, fallback: str) -> str:
    """A tool description fit for the prompt (see `clean_text`); `fallback` when nothing visible is left."""
    cleaned = clean_text(text or "", DESCRIPTION_CAP_CHARS)
    return cleaned or fallback


def clean_name(name: str, prefix: str = "") -> str:
    """`prefix + name` as a tool name: invisible characters dropped, anything outside [A-Za-z0-9_-] turned
    into "_", starting with a letter or "_", at most 64 characters. Different names may clean to the same
    one; the registry refuses the second (use a prefix or an allowlist)."""
    cleaned = _NOT_NAME.sub("_", strip_invisible(prefix + name).strip())
    if not cleaned or not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = "_" + cleaned
    return cleaned[:NAME_CAP_CHARS]


def clean_output(text: str, cap_bytes: int) -> str:
    """A foreign tool's output for the model: cut to cap_bytes (head and tail), then control and invisible
    characters removed (terminal escapes and bidi overrides have no business in the prompt)."""
    from tools.broker import truncate  # tools.broker imports the registry, which may import this module

    return strip_invisible(truncate(text, cap_bytes))


def clean_schema(schema: Any, owner: str) -> dict[str, Any]:
    """A JSON schema from a foreign source, fit for the prompt: every key and string cleaned of invisible
    characters, descriptions and titles capped, and the whole at most SCHEMA_CAP_BYTES of JSON."""
    if schema is None:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise ConfigError(f"{owner}: its argument schema is a {type(schema).__name__}, not a JSON object")
    cleaned = _clean_node(schema, key=None)
    size = len(json.dumps(cleaned, ensure_ascii=False).encode())
    if size > SCHEMA_CAP_BYTES:
        raise ConfigError(
            f"{owner}: its argument schema is {size} bytes of JSON, over the {SCHEMA_CAP_BYTES}-byte cap for "
            "what goes into the prompt; leave this tool out (an allowlist of tools) or fix its source."
        )
    return cleaned  # type: ignore[no-any-return]


def _clean_node(node: Any, key: str | None) -> Any:
    if isinstance(node, dict):
        return {strip_invisible(str(k)): _clean_node(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean_node(item, None) for item in node]
    if isinstance(node, str):
        return clean_text(node, SCHEMA_TEXT_CAP_CHARS) if key in ("description", "title") else strip_invisible(node)
    return node


class JsonSchemaArgs(BaseModel):
    """Arguments checked against a JSON schema (with jsonschema) and kept exactly as given:
    `model_dump()` returns them. `model_json_schema()` is that schema, so the broker's error messages and the
    model's tool spec describe what the source declared. Build one with `json_args_model`."""

    model_config = ConfigDict(extra="allow")
    json_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    json_validator: ClassVar[Any] = None

    @model_validator(mode="before")
    @classmethod
    def _check_against_schema(cls, data: Any) -> Any:
        errors = sorted(cls.json_validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            problems = "; ".join(_problem(e) for e in errors[:5])
            raise PydanticCustomError("json_schema", "{problems}", {"problems": problems})
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls.json_schema)


def json_args_model(name: str, schema: dict[str, Any], owner: str) -> type[JsonSchemaArgs]:
    """A JsonSchemaArgs subclass for `schema` (ConfigError naming `owner` when it is not a valid schema).
    References are resolved inside the schema only: nothing is fetched."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    validator_cls = validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except SchemaError as e:
        raise ConfigError(f"{owner}: its argument schema is not a valid JSON schema: {e.message}") from e
    model: type[JsonSchemaArgs] = type(name, (JsonSchemaArgs,), {"__module__": __name__})
    model.json_schema = schema
    model.json_validator = validator_cls(schema)
    return model


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    return f"at {where!r}: {message}" if where else message
