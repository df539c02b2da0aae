"""Grammar-constrained decoding: what the model may write, compiled from a request's tools and constraint.

The grammar is an xgrammar structural tag (docs/llm.md says why xgrammar rather than llguidance). For
tool_choice="auto" with one tool it reads:

    or:
      1 to MAX_CALLS_PER_REPLY calls separated by "\\n", each one of:
        tag  begin '<tool_call>\\n{"name": "calculator", "arguments": '
             content  json_schema <the tool's schema>, excluding "</tool_call>" inside strings
             end   '}\\n</tool_call>'
      sequence: regex [^<\\s], any text not containing "<tool_call>"

Each tool's name is tied to its own schema, so a call to an unknown tool or with another tool's arguments
cannot be written, and no string argument can contain "</tool_call>" (which would end the block early for
the parser; not enforced for a tool whose schema bounds string lengths, see `_call_tag`). A plain-text
answer may not start with "<" or whitespace nor contain "<tool_call>", so it can never be mistaken for a
malformed call. With tool_choice="none" and tools in the request, the answer alone. The end token is allowed
exactly when the grammar is complete, so generation cannot stop in the middle of a call (only max_new_tokens
can cut it).

xgrammar's JSON is strict (no properties or items the schema does not declare) and allows at most one
whitespace character between tokens (a small model under a whitespace-flexible grammar can pad forever).
JSON Schema keywords xgrammar does not implement are ignored: such a schema constrains less, and the tool
broker validates the arguments against the full schema anyway.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.errors import LLMError
from agent.llm.toolformat import CALL_CLOSE, CALL_OPEN
from agent.types import Constraint, LLMRequest, ToolChoice, ToolSpec

if TYPE_CHECKING:
    import torch

MAX_JSON_WHITESPACE = 1
# A small model can repeat the same call forever; after this many calls only the end token is left.
MAX_CALLS_PER_REPLY = 4
DEFAULT_CACHE_SIZE = 64
_CPP_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
# A final answer: not "<" or whitespace first, and never a call opener anywhere.
TEXT_FORMAT: dict[str, Any] = {
    "type": "sequence",
    "elements": [{"type": "regex", "pattern": r"[^<\s]"}, {"type": "any_text", "excludes": [CALL_OPEN]}],
}


def grammar_format(tools: Sequence[ToolSpec], tool_choice: ToolChoice,
                   constraint: Constraint | None) -> dict[str, Any] | None:
    """The structural-tag format for one request, or None when the output is free text."""
    answer = _answer_format(constraint)
    if not tools:
        return answer
    if tool_choice == "none":  # tools withdrawn for this reply: an answer, never call syntax (small models,
        return answer or TEXT_FORMAT  # shown calls and results, go on writing calls that would be dropped)
    one_call = {"type": "or", "elements": [_call_tag(spec) for spec in tools]}
    more_calls = {"type": "sequence", "elements": [{"type": "const_string", "value": "\n"}, one_call]}
    calls = {"type": "sequence", "elements": [
        one_call, {"type": "repeat", "min": 0, "max": MAX_CALLS_PER_REPLY - 1, "content": more_calls},
    ]}
    if tool_choice == "required":
        return calls
    return {"type": "or", "elements": [calls, answer or TEXT_FORMAT]}


def _call_tag(spec: ToolSpec) -> dict[str, Any]:
    begin = f'{CALL_OPEN}\n{{"name": {json.dumps(spec.name, ensure_ascii=False)}, "arguments": '
    # xgrammar drops minLength/maxLength of strings that have excludes; a length bound matters more (a small
    # model may never end an unbounded string), so such schemas go without the exclusion.
    excludes = [] if _has_length_bounds(spec.parameters) else [CALL_CLOSE]
    return {"type": "tag", "begin": begin, "content": _json_format(spec.parameters, excludes),
            "end": f"}}\n{CALL_CLOSE}"}


def _has_length_bounds(node: Any) -> bool:
    if isinstance(node, dict):
        return "minLength" in node or "maxLength" in node or any(_has_length_bounds(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_length_bounds(v) for v in node)
    return False


def _json_format(schema: dict[str, Any], excludes: list[str]) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise LLMError(f"a JSON schema must be an object, got {schema!r}"[:300])
    return {"type": "json_schema", "json_schema": schema, "excludes": excludes,
            "max_whitespace_cnt": MAX_JSON_WHITESPACE}


def _answer_format(constraint: Constraint | None) -> dict[str, Any] | None:
    if constraint is None or (constraint.json_schema is None and constraint.choices is None):
        return None
    if constraint.json_schema is not None:
        return _json_format(constraint.json_schema, [])
    choices = constraint.choices or ()
    if not choices or any(not isinstance(c, str) or not c for c in choices):
        raise LLMError(f"constraint choices must be non-empty strings, got {choices!r}")
    return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in choices]}


class TokenConstraint:
    """One request's grammar state: the mask of allowed next tokens, advanced on each chosen token.

    The mask is unpacked with numpy, not torch: on a busy 2-core machine every small multi-threaded torch op
    waits ~10 ms for a descheduled worker thread, which made the mask cost more than the model.
    """

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        import numpy as np
        import xgrammar

        self._matcher = matcher
        self._vocab_size = vocab_size
        self._stop_ids = np.array(sorted(stop_ids), dtype=np.int64)
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._allowed: Any = self._fill()  # None: not computed since the last token (see `prepare`)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits (1-D, one per vocabulary entry) of every token the grammar forbids to -inf."""
        import torch

        forbidden = ~self.prepare()
        n = min(self._vocab_size, logits.shape[-1])
        logits[n:] = float("-inf")
        if logits.device.type == "cpu":
            logits.numpy()[:n][forbidden[:n]] = float("-inf")
        else:
            logits[:n].masked_fill_(torch.from_numpy(forbidden[:n]).to(logits.device), float("-inf"))

    def advance(self, token_id: int, fill: bool = True) -> None:
        """Feed the chosen token to the grammar; `fill=False` leaves the next mask to `prepare` (or first use)."""
        if not self._matcher.accept_token(token_id):
            raise LLMError(f"constrained decoding failed: the grammar rejected token {token_id}")
        self._allowed = None
        if fill:
            self.prepare()

    def prepare(self) -> Any:
        """The allowed next tokens (a bool array), computed now if not yet since the last token."""
        if self._allowed is None and not self._matcher.is_terminated():
            self._allowed = self._fill()
        return self._allowed

    @property
    def finished(self) -> bool:
        """True when the grammar admits nothing but an end token (so computing it can be skipped)."""
        if self._matcher.is_terminated():
            return True
        allowed = self.prepare()
        count = int(allowed.sum())
        return count <= len(self._stop_ids) and int(allowed[self._stop_ids].sum()) == count

    def _fill(self) -> Any:
        import numpy as np

        self._matcher.fill_next_token_bitmask(self._bitmask)
        # Token i is allowed when bit i % 32 of word i // 32 is set: little-endian words, little bit order.
        words = self._bitmask[0].numpy()
        return np.unpackbits(words.view(np.uint8), bitorder="little")[: self._vocab_size].astype(bool)


class Grammars:
    """Compiles and caches grammars for one tokenizer (its vocabulary is analysed once, ~0.3 s).

    Compiled grammars are kept in an LRU keyed by (tool names and schemas, tool_choice, constraint); each
    request gets its own matcher, so concurrent requests never share parser state.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int],
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
        # Our own bounded LRU below replaces xgrammar's unbounded cache.
        self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.vocab_size = vocab_size
        self._stop_ids = list(stop_ids)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def for_request(self, request: LLMRequest) -> TokenConstraint | None:
        """The constraint for this request, or None when its output is free text."""
        import xgrammar

        key = _cache_key(request)
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
        if compiled is None:
            fmt = grammar_format(request.tools, request.tool_choice, request.constraint)
            if fmt is None:
                return None
            compiled = self._compile(fmt, request)
            with self._lock:
                self._cache[key] = compiled
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        matcher = xgrammar.GrammarMatcher(compiled, override_stop_tokens=self._stop_ids)
        return TokenConstraint(matcher, self.vocab_size, self._stop_ids)

    def _compile(self, fmt: dict[str, Any], request: LLMRequest) -> Any:
        try:
            return self._compiler.compile_structural_tag(json.dumps({"type": "structural_tag", "format": fmt}))
        except Exception as e:  # RuntimeError from the C++ schema converter, InvalidJSONError...
            raise LLMError(self._explain(e, request)) from e

    def _explain(self, error: Exception, request: LLMRequest) -> str:
        """Name the schema that fails: the whole grammar's error does not say which tool it came from."""
        schemas = [(f"arguments schema of tool {t.name!r}", t.parameters) for t in request.tools]
        if request.constraint is not None and request.constraint.json_schema is not None:
            schemas.append(("constraint's JSON schema", request.constraint.json_schema))
        for label, schema in schemas:
            try:
                self._compiler.compile_structural_tag(
                    json.dumps({"type": "structural_tag", "format": _json_format(schema, [])})
                )
            except Exception as e:
                return (f"the {label} cannot be compiled into a grammar: {_last_line(e)}. Fix the schema, or set "
                        "[model] constrained = false to decode without a grammar")
        return f"the grammar for this request does not compile: {_last_line(error)}"

    @property
    def cached(self) -> int:
        return len(self._cache)


def _cache_key(request: LLMRequest) -> str:
    tools = [(t.name, t.parameters) for t in request.tools] if request.tool_choice != "none" else []
    c = request.constraint
    constraint = None if c is None else [c.json_schema, list(c.choices) if c.choices is not None else None]
    return json.dumps([tools, bool(request.tools), request.tool_choice, constraint], sort_keys=True, default=str)


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    # xgrammar's C++ errors start with "[12:11:39] /project/cpp/file.cc:4950: ": keep the message only.
    return _CPP_PREFIX.sub("", lines[-1])[:300] if lines else type(error).__name__
