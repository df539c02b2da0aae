"""Section "episodes" of benchmarks/learning.py: does the agent do better at a repeated task family when its
own rated past runs come back as exemplars? Through the real Agent graph on the bundled SmolLM2-135M.

The family: unit conversions the calculator tool can do when the model knows the factor (inches -> cm,
pounds -> kg, miles -> km, gallons -> litres). By itself the 135M model passes the number alone
(calculator("7")) or the unit ("5 miles"): it does not know the factors. The user first teaches a kind
"convert" (6 example requests; the calculator is its only tool, and a call is required), so every run of the
family takes the same short route whatever memory holds.

1. Teaching, as a user would: for each conversion the user asks once, spelling out the arithmetic ("calculate
   12 * 2.54 to convert 12 inches to centimetres": of four wordings tried on the bare act prompt, the one the
   model turned into the right call 5 times out of 5), checks the answer and rates the run with
   `Agent.feedback`: good when the answer holds the right number, else bad; with other numbers each time, until
   GOOD_PER_CONVERSION runs are good or TEACH_TRIES were made. Runs rated good are the exemplars.
2. Held out: 5 natural requests per conversion ("how many centimetres is 7 inches?"), with numbers and
   wording the teaching runs never had. Each runs twice on the same Agent: with memory (a user whose episodes
   are the rated teaching runs) and without (a user with none). Every held-out run uses its own user, given a
   copy of the teaching episodes, so one held-out run never becomes another's exemplar.
A run succeeds when its final answer holds the right value (within 1%); "right call" means some calculator call
returned it. Both conditions share the classifier, tools, prompts and model: only the recalled episodes differ.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.learning_table import Options, Row, SectionResult

KIND_EXAMPLES = ["convert 10 inches to centimetres", "how many kilograms is 20 pounds?",
                 "convert 3 miles to kilometres", "how many litres are in 5 gallons?",
                 "convert 100 fahrenheit to celsius", "how many feet is 2 metres?"]
GOOD_PER_CONVERSION = 2
TEACH_TRIES = 3  # per conversion
MAX_NEW_TOKENS = 96  # a call and its (dropped) repeat fit; an answer of a sentence or two
MAX_STEPS = 3
TOLERANCE = 0.01
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Conversion:
    name: str
    factor: float
    teach: str  # the user's explicit request: {n} and {f} are filled in
    held_out: tuple[str, ...]  # natural requests: {n}


CONVERSIONS = (
    Conversion("inches->cm", 2.54, "calculate {n} * {f} to convert {n} inches to centimetres", (
        "how many centimetres is {n} inches?", "convert {n} inches to cm", "I am {n} inches tall, what is that "
        "in centimeters?", "{n} inches in centimetres please", "a board is {n} inches long; how long in cm?")),
    Conversion("pounds->kg", 0.4536, "calculate {n} * {f} to convert {n} pounds to kilograms", (
        "how many kilograms is {n} pounds?", "convert {n} lb to kg", "my suitcase weighs {n} pounds, how many "
        "kilos is that?", "{n} pounds in kilograms please", "what is {n} pounds in kg?")),
    Conversion("miles->km", 1.609, "calculate {n} * {f} to convert {n} miles to kilometres", (
        "how many kilometres is {n} miles?", "convert {n} miles to km", "I ran {n} miles today, how far is "
        "that in kilometers?", "{n} miles in kilometres please", "what is {n} miles in km?")),
    Conversion("gallons->litres", 3.785, "calculate {n} * {f} to convert {n} gallons to litres", (
        "how many litres is {n} gallons?", "convert {n} gallons to liters", "the tank holds {n} gallons, how "
        "many litres is that?", "{n} gallons in litres please", "what is {n} US gallons in litres?")),
)


@dataclass(frozen=True)
class Outcome:
    correct: bool
    right_call: bool
    calls: int
    seconds: float
    answer: str


def value_in(text: str, truth: float) -> bool:
    """Some number in `text` is within TOLERANCE of `truth`."""
    for token in _NUMBER.findall(text):
        try:
            value = float(token.replace(",", ""))
        except ValueError:
            continue
        if abs(value - truth) <= TOLERANCE * abs(truth):
            return True
    return False


def run_one(agent: Any, request: str, truth: float, user: str) -> tuple[Outcome, str]:
    started = time.perf_counter()
    result = agent.invoke(request, user_id=user)
    calls = result.tool_calls
    print(f"    [{result.task_kind}] {[(c['name'], c['arguments'], c['output']) for c in calls]}")
    right_call = any(c["name"] == "calculator" and c["ok"] and value_in(str(c["output"]), truth) for c in calls)
    outcome = Outcome(value_in(result.answer or "", truth), right_call, len(calls),
                      round(time.perf_counter() - started, 1), (result.answer or "")[:160])
    return outcome, result.run_id


def teach(agent: Any, rng: random.Random, conversions: tuple[Conversion, ...]) -> list[dict[str, Any]]:
    """The user's teaching runs, each rated good or bad by whether its answer is right."""
    log = []
    for conv in conversions:
        good = 0
        for _ in range(TEACH_TRIES):
            n = rng.randint(3, 60)
            outcome, run_id = run_one(agent, conv.teach.format(n=n, f=conv.factor), n * conv.factor, "teacher")
            agent.feedback(run_id, "good" if outcome.correct else "bad")
            log.append({"conversion": conv.name, "n": n, **vars(outcome)})
            print(f"  teach {conv.name} n={n}: {'good' if outcome.correct else 'bad'} ({outcome.seconds} s) "
                  f"{outcome.answer[:80]!r}")
            good += outcome.correct
            if good == GOOD_PER_CONVERSION:
                break
    return log


def held_out(rng: random.Random, conversions: tuple[Conversion, ...], per: int) -> list[tuple[str, str, float]]:
    cases = []
    for conv in conversions:
        for template in conv.held_out[:per]:
            n = rng.randint(3, 95)
            cases.append((conv.name, template.format(n=n), n * conv.factor))
    return cases


def seed_user(agent: Any, user: str) -> None:
    """Give `user` a copy of the teacher's episodes, ratings included."""
    episodes = agent.services.episodes
    for rated in episodes.rated("teacher"):
        copy = replace(rated.episode, id=f"{rated.episode.id}-{user}", user_id=user)
        episodes.record(copy)
        episodes.set_feedback(copy.id, "success" if rated.rating == "good" else "failure", None)


def make_agent(options: Options) -> Any:
    from agent.api import Agent
    from agent.config import Settings

    home = options.work_dir / "episodes-home"
    shutil.rmtree(home, ignore_errors=True)  # no episodes from an earlier run
    env = {**os.environ, "METAGENT_HOME": str(home)}
    env.setdefault("METAGENT_MODEL__CACHE_DIR", str(options.work_dir / "model-cache"))
    settings = Settings.load(env=env)
    model = {"max_new_tokens": MAX_NEW_TOKENS, **({"threads": options.threads} if options.threads else {})}
    settings = settings.model_copy(update={
        "model": settings.model.model_copy(update=model),
        "agent": settings.agent.model_copy(update={"max_steps": MAX_STEPS}),
    })
    agent = Agent(settings)
    agent.services.classifier.teach("convert", KIND_EXAMPLES, description="unit conversions with the calculator",
                                    retrieve=False, plan=False, tools=["calculator"], require_tool=True)
    return agent


def run_episodes(options: Options) -> SectionResult:
    conversions = CONVERSIONS[:1] if options.quick else CONVERSIONS
    per = 2 if options.quick else 5
    rng = random.Random(options.seed)
    started = time.perf_counter()
    with make_agent(options) as agent:
        print(f"episodes: model loaded in {time.perf_counter() - started:.1f} s; teaching runs:")
        taught = teach(agent, rng, conversions)
        good = sum(t["correct"] for t in taught)
        print(f"  {good} of {len(taught)} teaching runs rated good; held-out runs (with memory | without):")
        results: dict[str, list[Outcome]] = {"with": [], "without": []}
        cases = []
        for i, (name, request, truth) in enumerate(held_out(rng, conversions, per)):
            seed_user(agent, f"with-{i}")
            on, _ = run_one(agent, request, truth, f"with-{i}")
            off, _ = run_one(agent, request, truth, f"without-{i}")
            results["with"].append(on)
            results["without"].append(off)
            cases.append({"conversion": name, "request": request, "truth": truth, "with": vars(on),
                          "without": vars(off)})
            print(f"  {request!r} -> {truth:.4g}: {_mark(on)} {on.answer[:60]!r} | {_mark(off)} {off.answer[:60]!r}")
    return SectionResult(_rows(results, good, len(taught)), {"teaching": taught, "held_out": cases})


def _mark(outcome: Outcome) -> str:
    return ("ok" if outcome.correct else "no") + ("+call" if outcome.right_call else "")


def _rows(results: dict[str, list[Outcome]], good: int, taught: int) -> list[Row]:
    n = len(results["with"])
    task, model = "unit conversions (calculator)", "SmolLM2-135M bundled"
    setting = f"recall {good}/{taught} rated runs"

    def share(condition: str, field: str) -> float:
        return sum(bool(getattr(o, field)) for o in results[condition]) / n

    def mean_s(condition: str) -> float:
        return statistics.mean(o.seconds for o in results[condition])

    return [
        Row(task, model, setting, "correct answer (base: no memory)", share("with", "correct"), n,
            share("without", "correct")),
        Row(task, model, setting, "right calculator call", share("with", "right_call"), n,
            share("without", "right_call")),
        Row(task, model, setting, "seconds per run", mean_s("with"), n, mean_s("without"), unit="s"),
    ]
