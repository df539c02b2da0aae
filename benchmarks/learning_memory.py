"""Sections "classifier" and "episodes" of benchmarks/learning.py: the teachable classifier and experience.

    .venv/bin/python benchmarks/learning.py --sections classifier,episodes

classifier: the real TaskClassifier (agent/classifier.py) over the bundled MiniLM, each kind taught through
  `teach` from k = 1, 5, 10 examples drawn at random (20 seeded draws per k), on benchmarks/data/intents.jsonl:
  an intent set the project wrote for this benchmark (not taken from any package or public data set): 12 kinds
  (weather, calendar, email, math, code, translation, recipe, travel, music, shopping, smart-home, finance)
  with 30 requests each, and 44 requests that fit none of them ("unknown"). A fixed seeded split keeps, per
  kind, 12 requests to draw teaching examples from, 5 for a dev split and 13 for the test; the unknowns are
  split 14 dev / 30 test. Reported on the test split, mean and spread over the draws:
    accuracy            the nearest prototype is the right kind (what the classifier answers without an LLM);
    fallback (unknown)  unknown requests the classifier sends to its LLM fallback (best score below
                        `threshold`, or the runner-up within `margin`): Classification.method is not
                        "prototype" (the fallback is a ScriptedLLM with no replies, so it always falls through
                        to method "default" and the benchmark needs no model);
    fallback (in-kind)  in-kind requests sent there too; kept-correct: answered right without the fallback.
  Every kind is taught with the description "<kind> requests"; the classifier's prototype counts its label
  ("<kind>: <kind> requests") as one more example, and so does the baseline's.
  Baselines in the same run, on the same draws: a TF-IDF (word 1-2 grams) nearest-centroid classifier, and the
  k = 1 row. The default threshold/margin ([classifier] in agent/config.py) were tuned on the built-in kinds;
  the section also tunes them on the dev split (k = 5 draws) and reports the test numbers with both.
episodes: see learning_episodes.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.learning_table import Options, Row, SectionResult

INTENTS = Path(__file__).resolve().parent / "data" / "intents.jsonl"
KS = (1, 5, 10)
DRAWS = 20
POOL, DEV = 12, 5  # per kind: teaching pool, dev; the rest (13) is the test split
UNKNOWN_DEV = 14
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 14))  # 0.10 .. 0.65
MARGINS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Split:
    pool: dict[str, list[str]]
    dev: dict[str, list[str]]  # kind -> requests; UNKNOWN -> the unknown requests
    test: dict[str, list[str]]


@dataclass(frozen=True)
class Scores:
    accuracy: float
    kept_correct: float  # in-kind: right and not sent to the fallback
    fallback_in_kind: float
    fallback_unknown: float

    def balanced(self) -> float:
        """What the dev split tunes for: unknowns caught and in-kind requests answered right, equally."""
        return (self.kept_correct + self.fallback_unknown) / 2


def load_split(path: Path = INTENTS, seed: int = 0) -> Split:
    by_kind: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_kind.setdefault(row["kind"] or UNKNOWN, []).append(row["text"])
    rng = random.Random(seed)
    pool, dev, test = {}, {}, {}
    for kind, texts in sorted(by_kind.items()):
        texts = sorted(texts)
        rng.shuffle(texts)
        if kind == UNKNOWN:
            dev[kind], test[kind] = texts[:UNKNOWN_DEV], texts[UNKNOWN_DEV:]
        else:
            pool[kind], dev[kind], test[kind] = texts[:POOL], texts[POOL:POOL + DEV], texts[POOL + DEV:]
    return Split(pool, dev, test)


class CachedEmbedder:
    """The bundled MiniLM behind a cache: every text is embedded once for the whole section (same vectors)."""

    def __init__(self, texts: Sequence[str]) -> None:
        from memory import MiniLMEmbedder

        self._inner = MiniLMEmbedder()
        self._vectors = dict(zip(texts, self._inner.embed(list(texts)), strict=True))
        self.dimension = self._inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self._inner.embed(missing), strict=True))
        return [list(self._vectors[t]) for t in texts]


def taught_classifier(embedder: Any, examples: dict[str, list[str]], threshold: float, margin: float) -> Any:
    """A TaskClassifier holding only the benchmark's kinds, each taught through `teach`.

    The classifier needs one kind to exist; the first kind starts from its first example and gets the rest by
    `teach` like every other kind (same prototype: its examples and its label)."""
    from agent.classifier import NEW_KIND_FLAGS, TaskClassifier, make_kind
    from agent.llm import ScriptedLLM

    first = next(iter(examples))
    seed = make_kind({**NEW_KIND_FLAGS, "name": first, "description": first, "examples": examples[first][:1]},
                     "benchmark")
    classifier = TaskClassifier(embedder, [seed], llm=ScriptedLLM(), threshold=threshold, margin=margin)
    for kind, texts in examples.items():
        classifier.teach(kind, texts, description=describe(kind))
    return classifier


def describe(kind: str) -> str:
    return f"{kind} requests"


def with_labels(examples: dict[str, list[str]]) -> dict[str, list[str]]:
    """The taught examples plus each kind's label, as the classifier's prototypes count it (the baseline's input)."""
    from agent.classifier import NEW_KIND_FLAGS, label, make_kind

    def kind_label(kind: str, texts: list[str]) -> str:
        return label(make_kind({**NEW_KIND_FLAGS, "name": kind, "description": describe(kind), "examples": texts},
                               "benchmark"))

    return {kind: [*texts, kind_label(kind, texts)] for kind, texts in examples.items()}


def draw(pool: dict[str, list[str]], k: int, rng: random.Random) -> dict[str, list[str]]:
    return {kind: rng.sample(texts, k) for kind, texts in pool.items()}


def score_classifier(classifier: Any, data: dict[str, list[str]]) -> Scores:
    right = kept = fell = caught = total = 0
    for kind, texts in data.items():
        for text in texts:
            result = classifier.classify(text)
            fallback = result.method != "prototype"
            if kind == UNKNOWN:
                caught += fallback
                continue
            total += 1
            right += result.kind == kind
            kept += result.kind == kind and not fallback
            fell += fallback
    unknowns = len(data.get(UNKNOWN, [])) or 1
    return Scores(right / total, kept / total, fell / total, caught / unknowns)


class TfidfCentroids:
    """The baseline: TF-IDF over lower-cased word 1-2 grams (idf from the taught examples), nearest centroid."""

    def __init__(self, examples: dict[str, list[str]]) -> None:
        docs = [(kind, _grams(t)) for kind, texts in examples.items() for t in texts]
        df: dict[str, int] = {}
        for _, grams in docs:
            for g in set(grams):
                df[g] = df.get(g, 0) + 1
        self.idf = {g: math.log((1 + len(docs)) / (1 + n)) + 1 for g, n in df.items()}
        self.vocab = {g: i for i, g in enumerate(sorted(df))}
        self.kinds = list(examples)
        rows = {kind: [self._vector(grams) for k, grams in docs if k == kind] for kind in self.kinds}
        self.centroids = np.stack([_unit(np.mean(rows[kind], axis=0)) for kind in self.kinds])

    def _vector(self, grams: list[str]) -> Any:
        vector = np.zeros(len(self.vocab), dtype=np.float32)
        for g in grams:
            if g in self.vocab:
                vector[self.vocab[g]] += self.idf[g]
        return _unit(vector)

    def accuracy(self, data: dict[str, list[str]]) -> float:
        pairs = [(kind, t) for kind, texts in data.items() if kind != UNKNOWN for t in texts]
        right = sum(self.kinds[int(np.argmax(self.centroids @ self._vector(_grams(t))))] == kind for kind, t in pairs)
        return right / len(pairs)


def _grams(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def _unit(vector: Any) -> Any:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def tune(embedder: Any, split: Split, draws: list[dict[str, list[str]]]) -> tuple[float, float, float]:
    """(threshold, margin, dev score): the best balanced score on the dev split over the k = 5 draws."""
    best = (0.0, 0.0, -1.0)
    classifiers = [taught_classifier(embedder, taught, 0.0, 0.0) for taught in draws]
    for threshold in THRESHOLDS:
        for margin in MARGINS:
            for c in classifiers:
                c.threshold, c.margin = threshold, margin
            score = statistics.mean(score_classifier(c, split.dev).balanced() for c in classifiers)
            if score > best[2] + 1e-9:
                best = (threshold, margin, score)
    return best


def run_classifier(options: Options) -> SectionResult:
    """Accuracy and fallback rates at k = 1, 5, 10 with the default and the dev-tuned threshold/margin."""
    from agent.config import ClassifierSettings

    logging.getLogger("agent.classifier").setLevel(logging.ERROR)  # every fallback logs the LLM's "failure"
    split = load_split(seed=options.seed)
    texts = [t for part in (split.pool, split.dev, split.test) for group in part.values() for t in group]
    embedder = CachedEmbedder(texts)
    draws_n = 3 if options.quick else DRAWS
    rng = random.Random(options.seed)
    draws = {k: [draw(split.pool, k, rng) for _ in range(draws_n)] for k in KS}
    defaults = ClassifierSettings.model_validate({})
    threshold, margin, dev_score = tune(embedder, split, draws[5])
    print(f"classifier: {len(split.pool)} kinds; test {sum(len(v) for k, v in split.test.items() if k != UNKNOWN)} "
          f"in-kind + {len(split.test[UNKNOWN])} unknown; {draws_n} draws per k")
    print(f"default threshold {defaults.threshold} margin {defaults.margin}; tuned on dev (k=5): threshold "
          f"{threshold} margin {margin} (dev balanced score {dev_score:.3f})")
    settings = {"default": (defaults.threshold, defaults.margin), "dev-tuned": (threshold, margin)}
    details: dict[str, Any] = {"tuned": {"threshold": threshold, "margin": margin, "dev_balanced": dev_score},
                               "default": {"threshold": defaults.threshold, "margin": defaults.margin}, "runs": {}}
    rows: list[Row] = []
    for k in KS:
        tfidf = [TfidfCentroids(with_labels(taught)).accuracy(split.test) for taught in draws[k]]
        for name, (t, m) in settings.items():
            scores = [score_classifier(taught_classifier(embedder, taught, t, m), split.test) for taught in draws[k]]
            details["runs"][f"k={k} {name}"] = {"scores": [vars(s) for s in scores], "tfidf_accuracy": tfidf}
            rows += _rows(k, name, scores, tfidf, split)
    _print_spread(details["runs"])
    return SectionResult(rows, details)


def _rows(k: int, name: str, scores: list[Scores], tfidf: list[float], split: Split) -> list[Row]:
    in_kind = sum(len(v) for kind, v in split.test.items() if kind != UNKNOWN)
    unknown = len(split.test[UNKNOWN])
    task, model, setting = "intents (12 kinds)", "MiniLM prototype", f"k={k} {name}"

    def mean(field: str) -> float:
        return statistics.mean(float(getattr(s, field)) for s in scores)

    return [
        Row(task, model, setting, "accuracy (base: TF-IDF)", mean("accuracy"), in_kind, statistics.mean(tfidf)),
        Row(task, model, setting, "kept correct (no fallback)", mean("kept_correct"), in_kind),
        Row(task, model, setting, "in-kind sent to fallback", mean("fallback_in_kind"), in_kind),
        Row(task, model, setting, "unknown sent to fallback", mean("fallback_unknown"), unknown),
    ]


def _print_spread(runs: dict[str, Any]) -> None:
    print(f"{'setting':<22}{'accuracy':>18}{'kept correct':>18}{'in-kind->fallback':>20}{'unknown->fallback':>20}"
          f"{'TF-IDF accuracy':>18}")
    for name, run in runs.items():
        cells = []
        for field in ("accuracy", "kept_correct", "fallback_in_kind", "fallback_unknown"):
            values = [s[field] for s in run["scores"]]
            cells.append(_mean_sd(values))
        cells.append(_mean_sd(run["tfidf_accuracy"]))
        print(f"{name:<22}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (18, 18, 20, 20, 18), strict=True)))


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}%"


def run_episodes(options: Options) -> SectionResult:
    from benchmarks.learning_episodes import run_episodes as run

    return run(options)


SECTIONS = {"classifier": run_classifier, "episodes": run_episodes}
