"""Preference pairs from rated episodes: what `metagent memory export --format dpo` writes.

A pair is two episodes of one user and one task kind that answer the same request, one rated good and one
rated bad (`Agent.feedback`, /good and /bad). "The same request": the same text (ignoring case and spacing),
or request embeddings at least `min_similarity` alike (cosine, default 0.9: on MiniLM a paraphrase such as
"summarize my notes on the budget" / "summarise the budget notes" scores 0.90, "a haiku about autumn" /
"about spring" 0.83) *and* the same numbers, since "convert 12 inches" and "convert 7 inches" (0.78) ask for
different answers however alike they read.

Each pair is cut where the two runs part ways. The runs' tool calls are replayed while they agree (same call,
same result); the first turn where they differ is the reply to prefer: a tool call (written as the model
writes it, a `<tool_call>` block) or the final answer. What came before that turn is the prompt: the system
prompt when given, the request (the good run's words), then the shared calls and their results. Each call
is its own assistant turn (an episode keeps its calls in order but not which ones were made together).

One JSON object per line, the schema `metagent adapters train NAME --dpo FILE` reads:

    {"prompt": [{"role": "system" | "user" | "assistant" | "tool", "content": "..."}, ...],
     "chosen": "...", "rejected": "...", "kind": "..." or null}

Pairs never cross users: one user's episodes never reach another user's training file through here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from agent.errors import ConfigError
from agent.llm.toolformat import format_call
from agent.protocols import Embedder
from agent.types import Episode
from memory.episodic import RatedEpisode

DEFAULT_MIN_SIMILARITY = 0.9
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    kind: str | None
    good_id: str
    bad_id: str

    def to_json(self) -> str:
        """One line of the DPO file (the episode ids are not part of the schema)."""
        row = {"prompt": list(self.prompt), "chosen": self.chosen, "rejected": self.rejected, "kind": self.kind}
        return json.dumps(row, ensure_ascii=False)


def preference_pairs(rated: Sequence[RatedEpisode], embedder: Embedder, system: str | None = None,
                     min_similarity: float = DEFAULT_MIN_SIMILARITY) -> list[PreferencePair]:
    """Every (good, bad) pair of the same user, kind and request, cut where the two runs differ, oldest
    bad episode first; pairs whose runs never differ, and repeats of a row already made, are left out."""
    if not -1.0 <= min_similarity <= 1.0:
        raise ConfigError(f"min_similarity is a cosine similarity between -1 and 1, got {min_similarity}; "
                          f"{DEFAULT_MIN_SIMILARITY} pairs paraphrases of one request")
    if not rated:
        return []
    vectors = _unit_vectors(embedder, [r.episode.request for r in rated])
    pairs: list[PreferencePair] = []
    seen: set[str] = set()
    for b, bad in enumerate(rated):
        if bad.rating != "bad":
            continue
        for g, good in enumerate(rated):
            if good.rating != "good" or not _same_task(good.episode, bad.episode, float(vectors[g] @ vectors[b]),
                                                       min_similarity):
                continue
            pair = _pair(good.episode, bad.episode, system)
            if pair is not None and pair.to_json() not in seen:
                seen.add(pair.to_json())
                pairs.append(pair)
    return pairs


def write_jsonl(pairs: Iterable[PreferencePair], out: TextIO) -> int:
    """Write one line per pair; returns how many were written."""
    count = 0
    for pair in pairs:
        out.write(pair.to_json() + "\n")
        count += 1
    return count


def _unit_vectors(embedder: Embedder, texts: list[str]) -> Any:
    matrix = np.asarray(embedder.embed(texts), dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _same_task(good: Episode, bad: Episode, similarity: float, min_similarity: float) -> bool:
    if good.user_id != bad.user_id or good.task_kind != bad.task_kind:
        return False
    if " ".join(good.request.lower().split()) == " ".join(bad.request.lower().split()):
        return True
    return similarity >= min_similarity and _NUMBER.findall(good.request) == _NUMBER.findall(bad.request)


def _pair(good: Episode, bad: Episode, system: str | None) -> PreferencePair | None:
    """The two runs' first differing turn as chosen/rejected, what they shared before it as the prompt."""
    prompt: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    prompt.append({"role": "user", "content": good.request})
    good_turns, bad_turns = _turns(good), _turns(bad)
    for (chosen, good_result), (rejected, bad_result) in zip(good_turns, bad_turns, strict=False):
        if chosen != rejected:
            if not chosen.strip() or not rejected.strip():
                return None  # an empty answer (a blocked run) is no reply to learn from
            return PreferencePair(tuple(prompt), chosen, rejected, good.task_kind or None, good.id, bad.id)
        if good_result is None or good_result != bad_result:
            return None  # the same final answer, or the same call with different results: nothing to prefer
        prompt += [{"role": "assistant", "content": chosen}, {"role": "tool", "content": good_result}]
    return None  # unreachable: every run's turns end with its answer, so the shorter one differs first


def _turns(episode: Episode) -> list[tuple[str, str | None]]:
    """(assistant turn, tool result) for each call, then (answer, None)."""
    turns: list[tuple[str, str | None]] = []
    for call in episode.tool_calls:
        name = str(call.get("name"))
        # The same result wording the act prompt uses (graphs/prompts.py result_message).
        body = call.get("output", "") if call.get("ok") else f"ERROR: {call.get('error')}"
        turns.append((format_call(name, dict(call.get("arguments") or {})), f"[{name}] {body}"))
    turns.append((episode.answer, None))
    return turns
