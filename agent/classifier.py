"""The teachable task classifier: a few labelled examples define a task kind.

Each kind is a prototype: the normalised sum of its examples' sentence embeddings and of its label ("name:
description"), which counts as one more example (with 5 examples per kind it lifts accuracy on held-out
requests by about 3 points, with 1 example by 16: benchmarks/learning.py --sections classifier). A request
goes to the kind whose prototype is most similar (cosine). When the best score is low, or the runner-up is too close,
and an LLM is available, the LLM makes a constrained choice among the kind names instead, shown each kind's
description and its examples nearest to the request.

Built-in kinds are package data (agent/kinds/*.toml). Kinds taught at run time (`teach`, `metagent teach`)
are saved to `settings.kinds_file` as differences from the built-ins, so later releases can still improve
the built-in examples:

    {"version": 1, "kinds": [{"name": "sql", "description": "...", "examples": ["..."], "plan": true, ...}]}
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.config import ClassifierSettings
from agent.errors import ConfigError, LLMError
from agent.protocols import LLM, Embedder
from agent.types import Constraint, LLMRequest, Message

log = logging.getLogger(__name__)

KIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
FLAGS = ("retrieve", "plan", "tools", "require_tool")
# A taught kind that says nothing else may plan and use any tool, and must not be forced to call one.
NEW_KIND_FLAGS: dict[str, Any] = {"retrieve": False, "plan": True, "tools": True, "require_tool": False}
DEFAULT_KIND = "chat"
LLM_EXAMPLES_PER_KIND = 2
FILE_VERSION = 1
_DEFAULTS = ClassifierSettings.model_validate({})  # threshold and margin, tuned in agent/config.py

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TaskKind:
    """A kind of task and how the graph routes it.

    `retrieve`: fetch document passages first; `plan`: write a plan before acting; `tools`: offer all tools
    (True), none (False) or those named; `require_tool`: the first act step must call a tool.
    """

    name: str
    description: str
    retrieve: bool
    plan: bool
    tools: bool | tuple[str, ...]
    require_tool: bool
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Classification:
    kind: str
    confidence: float
    method: Literal["prototype", "llm", "default"]
    scores: dict[str, float]


# -- validation -----------------------------------------------------------------------------------------


def label(kind: TaskKind) -> str:
    """The text that stands for a kind's name and description in its prototype."""
    return f"{kind.name}: {kind.description}"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not KIND_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid task kind name {name!r}: use a letter followed by up to 63 letters, digits, '_' or '-' "
            "(no spaces), e.g. 'sql' or 'email-draft'"
        )
    return name


def check_examples(kind: str, examples: object) -> tuple[str, ...]:
    if isinstance(examples, str) or not isinstance(examples, Sequence):
        raise ConfigError(f"examples for kind {kind!r} must be a list of strings, got {examples!r}")
    cleaned: list[str] = []
    for example in examples:
        if not isinstance(example, str) or not example.strip():
            raise ConfigError(f"kind {kind!r} has an empty or non-text example: {example!r}; remove it")
        if example.strip() not in cleaned:
            cleaned.append(example.strip())
    return tuple(cleaned)


def check_flags(kind: str, flags: Mapping[str, object]) -> dict[str, Any]:
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} for kind {kind!r}; known: {', '.join(FLAGS)}")
    checked: dict[str, Any] = {}
    for key, value in flags.items():
        if key == "tools" and isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
            checked[key] = tuple(value)
        elif isinstance(value, bool):
            checked[key] = value
        else:
            wanted = "true/false or a list of tool names" if key == "tools" else "true or false"
            raise ConfigError(f"kind {kind!r}: {key} must be {wanted}, got {value!r}")
    return checked


def make_kind(data: Mapping[str, Any], origin: str) -> TaskKind:
    """A TaskKind from a mapping (a TOML file, a taught record); every field required."""
    missing = [f.name for f in fields(TaskKind) if f.name not in data]
    extra = sorted(set(data) - {f.name for f in fields(TaskKind)})
    if missing or extra:
        raise ConfigError(f"task kind in {origin}: missing {missing}, unknown {extra}")
    name = check_name(data["name"])
    examples = check_examples(name, data["examples"])
    if not examples:
        raise ConfigError(f"task kind {name!r} in {origin} needs at least one example")
    description = data["description"]
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"task kind {name!r} in {origin} needs a one-line description")
    flags = check_flags(name, {k: data[k] for k in FLAGS})
    return TaskKind(name=name, description=description.strip(), examples=examples, **flags)


# -- loading and saving ---------------------------------------------------------------------------------


def builtin_kinds() -> list[TaskKind]:
    """The kinds shipped in agent/kinds/*.toml, in name order."""
    folder = resources.files("agent").joinpath("kinds")
    kinds = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            try:
                data = tomllib.loads(entry.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"built-in task kind file {entry.name} is not valid TOML: {e}") from e
            kinds.append(make_kind(data, f"agent/kinds/{entry.name}"))
    return kinds


def load_kinds(kinds_file: Path | None) -> list[TaskKind]:
    """Built-in kinds merged with those taught and saved in `kinds_file` (which need not exist)."""
    kinds = {k.name: k for k in builtin_kinds()}
    for record in _read_taught(kinds_file):
        name = check_name(record.get("name"))
        base = kinds.get(name)
        where = str(kinds_file)
        if base is None:
            kinds[name] = make_kind({**NEW_KIND_FLAGS, **record}, where)
            continue
        examples = check_examples(name, record.get("examples", []))
        overrides = check_flags(name, {k: record[k] for k in FLAGS if k in record})
        if "description" in record:
            overrides["description"] = str(record["description"]).strip() or base.description
        kinds[name] = replace(base, examples=_merge(base.examples, examples), **overrides)
    return list(kinds.values())


def _read_taught(kinds_file: Path | None) -> list[dict[str, Any]]:
    if kinds_file is None or not kinds_file.is_file():
        return []
    try:
        data = json.loads(kinds_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read taught task kinds from {kinds_file}: {e}; fix or delete the file") from e
    records = data.get("kinds") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{kinds_file} should hold {{\"version\": 1, \"kinds\": [...]}}; fix or delete it")
    return records


def save_taught(path: Path, kinds: Sequence[TaskKind]) -> None:
    """Write what `kinds` add to or change in the built-ins to `path` (JSON, replaced atomically)."""
    builtins = {k.name: k for k in builtin_kinds()}
    records = [r for r in (_difference(k, builtins.get(k.name)) for k in kinds) if r is not None]
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": FILE_VERSION, "kinds": records}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot save taught task kinds to {path}: {e}") from e


def _difference(kind: TaskKind, base: TaskKind | None) -> dict[str, Any] | None:
    if base is None:
        full = {f.name: getattr(kind, f.name) for f in fields(TaskKind)}
        return {**full, "tools": _tools_json(kind.tools), "examples": list(kind.examples)}
    record: dict[str, Any] = {"name": kind.name}
    added = [e for e in kind.examples if e not in base.examples]
    if added:
        record["examples"] = added
    if kind.description != base.description:
        record["description"] = kind.description
    for flag in FLAGS:
        if getattr(kind, flag) != getattr(base, flag):
            record[flag] = _tools_json(kind.tools) if flag == "tools" else getattr(kind, flag)
    return record if len(record) > 1 else None


def _tools_json(tools: bool | tuple[str, ...]) -> bool | list[str]:
    return tools if isinstance(tools, bool) else list(tools)


def _merge(first: tuple[str, ...], more: Sequence[str]) -> tuple[str, ...]:
    return first + tuple(e for e in dict.fromkeys(more) if e not in first)


# -- the classifier -------------------------------------------------------------------------------------


class TaskClassifier:
    """Nearest-prototype task classification over sentence embeddings, with an LLM for unclear cases.

    Thread-safe. Example embeddings are computed on the first `classify` and cached; teaching a kind
    re-embeds that kind only. With `kinds_file`, `teach` saves what it learned there.
    """

    def __init__(
        self,
        embedder: Embedder,
        kinds: Sequence[TaskKind],
        llm: LLM | None = None,
        threshold: float = _DEFAULTS.threshold,
        margin: float = _DEFAULTS.margin,
        *,
        kinds_file: Path | None = None,
    ) -> None:
        if not kinds:
            raise ConfigError("the task classifier needs at least one task kind")
        names = [k.name for k in kinds]
        if len(set(names)) != len(names):
            raise ConfigError(f"task kind names must be unique, got {names}")
        self._embedder = embedder
        self._kinds = {k.name: k for k in kinds}
        self._llm = llm
        self.threshold = threshold
        self.margin = margin
        self.kinds_file = kinds_file
        self._lock = threading.RLock()
        self._example_vectors: dict[str, Vector] = {}
        self._centroids: dict[str, Vector] = {}

    def kinds(self) -> list[TaskKind]:
        with self._lock:
            return list(self._kinds.values())

    def kind(self, name: str) -> TaskKind:
        with self._lock:
            found = self._kinds.get(name)
            if found is None:
                raise ConfigError(f"unknown task kind {name!r}; known kinds: {', '.join(self._kinds)}")
            return found

    def classify(self, text: str) -> Classification:
        """The kind of task `text` asks for, with the cosine scores of every kind."""
        if not text.strip():
            return Classification(self._default_kind(), 0.0, "default", {})
        query = self._vectors([text])[0]
        with self._lock:
            self._ensure_centroids()
            scores = {name: float(c @ query) for name, c in self._centroids.items()}
        ranked = sorted(scores, key=lambda n: scores[n], reverse=True)
        best = ranked[0]
        gap = scores[best] - scores[ranked[1]] if len(ranked) > 1 else 1.0
        if self._llm is None or (scores[best] >= self.threshold and gap >= self.margin):
            return Classification(best, scores[best], "prototype", scores)
        choice = self._ask_llm(self._llm, text, query, ranked)
        if choice is None:
            return Classification(best, scores[best], "default", scores)
        return Classification(choice, scores[choice], "llm", scores)

    def teach(
        self, kind: str, examples: Sequence[str], description: str | None = None, **flags: Any
    ) -> TaskKind:
        """Add examples to a kind, or create it; takes effect at once and is saved to `kinds_file`."""
        check_name(kind)
        cleaned = check_examples(kind, examples)
        if not cleaned:
            raise ConfigError(f"teaching kind {kind!r} needs at least one example")
        if description is not None and not description.strip():
            raise ConfigError(f"the description of kind {kind!r} is empty; leave it out or say what it is")
        checked = check_flags(kind, flags)
        with self._lock:
            base = self._kinds.get(kind)
            if base is None:
                about = description or f"tasks like: {cleaned[0]}"
                taught = make_kind({**NEW_KIND_FLAGS, **checked, "name": kind, "description": about,
                                    "examples": cleaned}, "teach()")
            else:
                changes = {**checked, **({"description": description.strip()} if description else {})}
                taught = replace(base, examples=_merge(base.examples, cleaned), **changes)
            # Embed and save before changing anything, so a failure leaves the classifier as it was.
            vectors = self._vectors([*taught.examples, label(taught)])
            updated = {**self._kinds, kind: taught}
            if self.kinds_file is not None:
                save_taught(self.kinds_file, list(updated.values()))
            self._kinds = updated
            self._store_vectors(kind, vectors)
        return taught

    # -- internals --------------------------------------------------------------------------------------

    def _default_kind(self) -> str:
        return DEFAULT_KIND if DEFAULT_KIND in self._kinds else next(iter(self._kinds))

    def _vectors(self, texts: Sequence[str]) -> Vector:
        matrix = np.asarray(self._embedder.embed(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        normed: Vector = matrix / np.maximum(norms, 1e-12)  # normalised even if an Embedder is sloppy
        return normed

    def _ensure_centroids(self) -> None:
        missing = [k for k in self._kinds.values() if k.name not in self._centroids]
        if not missing:
            return
        # One embedding call for every kind still missing: batching is what makes the first call quick.
        matrix = self._vectors([t for k in missing for t in (*k.examples, label(k))])
        start = 0
        for kind in missing:
            self._store_vectors(kind.name, matrix[start : start + len(kind.examples) + 1])
            start += len(kind.examples) + 1

    def _store_vectors(self, name: str, vectors: Vector) -> None:
        """`vectors`: the kind's examples, then its label."""
        total = vectors.sum(axis=0)
        self._example_vectors[name] = vectors[:-1]
        self._centroids[name] = total / max(float(np.linalg.norm(total)), 1e-12)

    def _ask_llm(self, llm: LLM, text: str, query: Vector, ranked: list[str]) -> str | None:
        request = LLMRequest(
            purpose="classify",
            messages=(
                Message("system", "You sort requests into task kinds. Answer with one kind name only."),
                Message("user", self._prompt(text, query, ranked)),
            ),
            constraint=Constraint(choices=tuple(ranked)),
            max_new_tokens=16,
            temperature=0.0,
        )
        try:
            answer = llm.complete(request).content.strip()
        except LLMError as e:
            log.warning("task classification by the LLM failed, using the nearest prototype: %s", e)
            return None
        lowered = {name.lower(): name for name in ranked}
        return lowered.get(answer.lower().strip("'\"`. "))

    def _prompt(self, text: str, query: Vector, ranked: list[str]) -> str:
        """Kinds with descriptions, then labelled examples, then the request, as a pattern to complete.

        Labelled "Request:/Kind:" pairs work better than instructions alone for a small model (on the
        held-out set the bundled 135M model chose right 19/32 times this way, 6/32 with instructions and
        examples inline). The examples shown are those nearest the request: they say most about where
        the boundary lies.
        """
        lines = ["Task kinds:"]
        rounds: list[list[tuple[str, str]]] = [[] for _ in range(LLM_EXAMPLES_PER_KIND)]
        with self._lock:
            for name in ranked:
                kind = self._kinds[name]
                lines.append(f"- {name}: {kind.description}")
                nearest = np.argsort(-(self._example_vectors[name] @ query))[:LLM_EXAMPLES_PER_KIND]
                for i, index in enumerate(nearest):
                    rounds[i].append((kind.examples[int(index)], name))
        lines.append("")
        for example, name in (pair for shown in rounds for pair in shown):
            lines += [f"Request: {example}", f"Kind: {name}", ""]
        lines += [f"Request: {text}", "Kind:"]
        return "\n".join(lines)
