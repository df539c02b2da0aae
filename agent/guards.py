"""Guardrails: one check per checkpoint where untrusted text enters the run or an action leaves it.

    input        the user's request          empty, too long, policy patterns, direct prompt injection
    plan         the planner's output        injection markers (a sign the model followed injected text)
    tool_call    a call the model wants      destructive-command denylist, human approval
    tool_result  what a tool returned        size cap, indirect prompt injection
    retrieval    a retrieved passage         indirect prompt injection
    output       the final answer            emails, phones, card numbers, secrets redacted

Each check returns a `Verdict` (allow / redact / ask / block, with a reason and the text to use
downstream); the graph enforces it before the next step runs. Policy comes from `GuardSettings` and
`ToolSettings.approval`.

What these guards are not: a security boundary. Pattern matching catches the common, literal attacks and
cheap obfuscation (case, spacing, zero-width and look-alike characters; see `agent.guard_text`); a
paraphrased, translated or encoded injection passes. The sandbox (tools.sandbox) is what contains a tool
call, and human approval is what stops a side effect. Settings patterns run as given: a pattern with
catastrophic backtracking will be slow on long text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agent.config import GuardSettings
from agent.guard_patterns import DESTRUCTIVE_RULES, INDIRECT_RULES, TEMPLATE_RULES, Rule, compile_patterns
from agent.guard_redact import describe_counts, redact, redact_secrets
from agent.guard_scan import Hit, Scanner
from agent.guard_text import fold
from agent.types import Checkpoint, ToolCall, Verdict

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = ["INJECTION_REPLACEMENT", "Guards", "redact_secrets"]

INJECTION_REPLACEMENT = "[removed: possible prompt injection]"
_INJECTION = "prompt injection"


class Guards:
    """The guard checks of one run, with their patterns compiled once from the settings.

    Cheap and deterministic (regular expressions, no model): a speed bump and a tripwire, not a boundary
    (see the module docstring for what gets through).
    """

    def __init__(self, settings: GuardSettings, approval_tools: Sequence[str] = ()) -> None:
        self.settings = settings
        self.approval_tools = frozenset(approval_tools)
        injection = [Rule(_INJECTION, r) for r in compile_patterns(settings.injection_patterns,
                                                                     "injection_patterns")]
        blocked = [Rule("blocked by policy", r) for r in compile_patterns(settings.blocked_input_patterns,
                                                                            "blocked_input_patterns")]
        self._input = Scanner([*blocked, *injection])
        self._plan = Scanner([*injection, *TEMPLATE_RULES])
        self._indirect = Scanner([*injection, *INDIRECT_RULES])
        self._destructive = Scanner(DESTRUCTIVE_RULES)

    @classmethod
    def from_settings(cls, settings: Settings) -> Guards:
        """Guards with the [guards] policy and the [tools] approval list of one Settings."""
        return cls(settings.guards, settings.tools.approval)

    def check_input(self, text: str) -> Verdict:
        """Block empty or oversized input, policy patterns and direct prompt-injection attempts."""
        limit = self.settings.max_input_chars
        if len(text) > limit:
            return _block("input", f"input too long: {len(text):,} characters, the limit is {limit:,} "
                                   "(guards.max_input_chars): shorten it or attach it as a document")
        if not fold(text).strip():
            return _block("input", "empty input: type a request")
        hit = self._input.first_hit(text)
        if hit is not None:
            return _block("input", hit.describe())
        return Verdict("input", "allow", "no policy or injection pattern matched", text)

    def check_plan(self, plan: str, tool_names: Sequence[str]) -> Verdict:
        """Block a plan carrying injection phrases or chat-template tokens: the planner read injected text.

        `tool_names` (the tools the run offers) only feeds the reason, so a trace shows which tools the plan
        mentions; the plan is free text, so nothing is enforced about them here (calls are checked one by
        one at the tool_call checkpoint).
        """
        hit = self._plan.first_hit(plan)
        if hit is not None:
            return _block("plan", f"plan contains {hit.describe()}")
        lowered = plan.casefold()
        named = [name for name in tool_names if name.casefold() in lowered]
        tools = f"; mentions tools: {', '.join(named)}" if named else ""
        return Verdict("plan", "allow", f"no injection markers{tools}", plan)

    def check_tool_call(self, call: ToolCall, needs_approval: bool) -> Verdict:
        """Block obviously destructive shell commands in any string argument; ask when the tool needs a yes.

        The denylist is a speed bump, not a security boundary: the sandbox is.
        """
        for where, value in _strings(call.arguments, ""):
            hit = self._destructive.first_hit(value)
            if hit is not None:
                return _block("tool_call", f"tool {call.name}: destructive command ({hit.family}) "
                                           f"in argument {where or 'value'!r}: {hit.matched!r}")
        if needs_approval or call.name in self.approval_tools:
            return Verdict("tool_call", "ask", f"tool {call.name} needs approval")
        return Verdict("tool_call", "allow", f"tool {call.name}: no destructive pattern, no approval needed")

    def check_tool_result(self, text: str) -> Verdict:
        """Cap the size, then scan for indirect prompt injection and act per `settings.on_injection`."""
        limit = self.settings.max_tool_result_chars
        notes: list[str] = []
        if len(text) > limit:
            cut = len(text) - limit
            text = f"{text[:limit]}\n... [truncated {cut} chars]"
            notes.append(f"truncated {cut:,} chars (guards.max_tool_result_chars is {limit:,})")
        verdict = self._scan_untrusted("tool_result", text)
        if not notes:
            return verdict
        if verdict.action == "allow":
            return Verdict("tool_result", "redact", notes[0], text)
        return Verdict("tool_result", verdict.action, f"{notes[0]}; {verdict.reason}", verdict.text)

    def check_retrieved(self, text: str) -> Verdict:
        """Scan a retrieved passage for indirect prompt injection and act per `settings.on_injection`."""
        return self._scan_untrusted("retrieval", text)

    def check_output(self, text: str) -> Verdict:
        """Redact the kinds listed in `settings.redact` (email, phone, card, api_key) from the answer."""
        redacted, counts = redact(text, self.settings.redact)
        summary = describe_counts(counts)
        if not summary:
            checked = ", ".join(self.settings.redact) or "nothing (guards.redact is empty)"
            return Verdict("output", "allow", f"nothing to redact (checked: {checked})", text)
        return Verdict("output", "redact", f"redacted {summary}", redacted)

    def _scan_untrusted(self, checkpoint: Checkpoint, text: str) -> Verdict:
        hit = self._indirect.first_hit(text)
        if hit is None:
            return Verdict(checkpoint, "allow", "no injection markers", text)
        mode = self.settings.on_injection
        if mode == "block":
            return _block(checkpoint, f"possible {hit.describe()}")
        if mode == "ask":
            return Verdict(checkpoint, "ask", f"possible {hit.describe()}: approve to show it to the model", text)
        cleaned, hits = self._indirect.remove(text, INJECTION_REPLACEMENT)
        if not hits:
            # The fast scan and the mapped scan disagree (should not happen): fail closed, drop it all.
            cleaned, hits = INJECTION_REPLACEMENT, [hit]
        return Verdict(checkpoint, "redact", f"removed {_describe_hits(hits)}", cleaned)


def _block(checkpoint: Checkpoint, reason: str, text: str | None = None) -> Verdict:
    return Verdict(checkpoint, "block", reason, text)


def _describe_hits(hits: list[Hit]) -> str:
    first = hits[0].describe()
    return f"possible {first}" if len(hits) == 1 else f"{len(hits)} possible injections, first {first}"


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string inside nested dicts/lists of tool arguments, with a path like `files[0].content`."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")
