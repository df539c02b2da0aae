"""The patterns guards look for: injection markers, and a small denylist of destructive shell commands.

Every pattern here runs on folded text (see `agent.guard_text.fold`: lower case, one space per whitespace
run, invisible characters gone), so it is written in lower case with single spaces. Each is built to run in
linear time on hostile input: no nested unbounded repetition, and any lazy scan is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """One pattern and the family named in a verdict's reason when it matches.

    `lines` rules run on the newline-preserving fold, so `^` (with re.M) means a line start; the others run
    on the fold where newlines are spaces, so a phrase split across lines still matches.
    """

    family: str
    regex: re.Pattern[str]
    lines: bool = False


# Role spoofing: text that pretends the conversation moved on to the assistant's or the system's turn.
# "system:" alone is common in tool output ("System: Ubuntu 22.04"), so it counts only before an order.
_ROLE_SPOOFING = (
    r"(?m)^ ?(?:#{1,3} ?)?assistant ?:",
    r"(?m)^ ?(?:#{1,3} ?)?(?:system|developer)(?: message| prompt)? ?: ?"
    r"(?:you |ignore |disregard |forget |from now|always |never |do not |don't |new |your )",
)
# Chat-template control tokens of common open models: in retrieved text they can end a turn and open a
# fake one.
_TEMPLATE_TOKENS = (
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id"
    r"|begin_of_text)\|>|\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>"
)
# Our own tool-call wire format (agent.llm.toolformat): a block inside a result could make the model
# re-issue it as a call. The whole block goes when it is closed within a bound, a lone tag otherwise.
# The block scan stops at the next opening tag, so a text full of unclosed tags stays linear.
_TOOL_CALL_BLOCKS = r"(?s)<tool_call>(?:(?!<tool_call>).){0,4000}?</tool_call>|</?tool_(?:call|response)>"

_BUILTIN_FLAGS = re.IGNORECASE
TEMPLATE_RULES: tuple[Rule, ...] = (Rule("chat-template token", re.compile(_TEMPLATE_TOKENS, _BUILTIN_FLAGS)),)
INDIRECT_RULES: tuple[Rule, ...] = (
    *(Rule("role spoofing", re.compile(p, _BUILTIN_FLAGS), lines=True) for p in _ROLE_SPOOFING),
    *TEMPLATE_RULES,
    Rule("tool-call block", re.compile(_TOOL_CALL_BLOCKS, _BUILTIN_FLAGS)),
)

# The destructive-command denylist. A speed bump that catches a model (or an injected instruction) reaching
# for the obvious: it is NOT a security boundary. Any shell can spell these a thousand other ways (variables,
# base64, a Python script); the sandbox, with only the workspace writable, is what actually protects the host.
_ROOT_OR_HOME = (
    r"(?:/(?:bin|boot|dev|etc|home|lib|lib64|opt|proc|root|sbin|srv|sys|usr|var)?|~|\$home|\$\{home\})/?\*?"
    r"(?=$|[ ;&|'\"`)])"
)
_FLAGS = r"(?:-[\w-]+ ){0,8}?"
# A few shell words (not any text) between a command and the part that makes it destructive.
_WORDS = r"(?:[^ ;&|]+ ){0,10}?"
DESTRUCTIVE_RULES: tuple[Rule, ...] = (
    Rule("recursive rm of / or home",
         re.compile(rf"\brm {_FLAGS}(?:-[a-z]*r[a-z]*|--recursive) (?:-[\w-]+ ){{0,8}}{_ROOT_OR_HOME}")),
    Rule("rm --no-preserve-root", re.compile(rf"\brm {_WORDS}--no-preserve-root")),
    Rule("mkfs (format a filesystem)", re.compile(r"\bmkfs(?:\.[a-z0-9]+)?\b")),
    Rule("fork bomb", re.compile(r":\(\) ?\{ ?: ?\| ?: ?& ?\} ?; ?:|\b(\w+) ?\(\) ?\{ ?\1 ?\| ?\1 ?& ?\}")),
    Rule("dd onto a device", re.compile(
        rf"\bdd {_WORDS}of=/dev/(?!null\b|zero\b|stdout\b|stderr\b|tty\b|fd/)")),
    Rule("write onto a disk device",
         re.compile(r">\s?/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d)")),
    Rule("recursive chmod/chown of /", re.compile(r"\bch(?:mod|own) -[a-z]*r[a-z]* \S+ /(?=$|[ ;&|'\"])")),
    Rule("find / -delete", re.compile(rf"\bfind (?:/|~) {_WORDS}-delete\b")),
    Rule("shutil.rmtree of / or home", re.compile(r"\bshutil\.rmtree\( ?['\"](?:/|~|/home|/etc|/usr)/?['\"]")),
)


def compile_patterns(patterns: Sequence[str], field: str) -> tuple[re.Pattern[str], ...]:
    """Compile settings patterns once (case-insensitive); a bad one is a ConfigError that names it."""
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise ConfigError(
                f"invalid regex in [guards] {field}: {pattern!r}: {e}. "
                "Fix it (Python `re` syntax) or remove it from the settings file."
            ) from e
        if regex.search("") is not None:
            raise ConfigError(
                f"regex in [guards] {field} matches empty text, so it would match everything: {pattern!r}. "
                "Make it require at least one character."
            )
        compiled.append(regex)
    return tuple(compiled)
