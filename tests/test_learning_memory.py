"""The learning loop's memory half, end to end through a real Agent (real classifier, Chroma, graph) around a
ScriptedLLM: a kind taught from five examples routes the next request at once, and rated runs steer later ones
(good runs come back as exemplars in the planner and act prompts, bad ones never do)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from agent.api import Agent
from agent.config import Settings
from agent.events import TaskKind
from agent.llm import ScriptedLLM, format_call
from agent.repl import Repl

RECIPES = ["how do I make a quick tomato soup?", "give me a recipe for pancakes without eggs",
           "what can I cook with chicken, rice and spinach?", "how long should I roast a whole chicken?",
           "a vegetarian lasagna recipe for six people"]
UNITS = ["convert 3 feet to metres", "how many grams are in 2 pounds?", "convert 20 litres to gallons",
         "how many centimetres is 5 inches?", "convert 100 fahrenheit to celsius"]


@pytest.fixture(scope="module")
def embedder() -> Any:
    from memory import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture
def make_agent(settings: Settings, embedder: Any) -> Iterator[Callable[[ScriptedLLM], Agent]]:
    agents: list[Agent] = []

    def make(llm: ScriptedLLM) -> Agent:
        agent = Agent(settings, llm=llm, embedder=embedder)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


def test_a_kind_taught_from_five_examples_routes_the_next_request(make_agent: Callable[..., Agent]) -> None:
    request = "what's a good recipe for banana bread?"
    llm = ScriptedLLM({"plan": ["1. list the ingredients 2. give the steps"], "act": ["Mash 3 bananas, ..."]})
    agent = make_agent(llm)
    before = agent.services.classifier.classify(request)
    assert before.kind != "recipe"
    agent.teach("recipe", RECIPES, description="cooking recipes and kitchen questions")
    events = list(agent.stream(request))
    [decided] = [e for e in events if isinstance(e, TaskKind)]
    assert (decided.kind, decided.method) == ("recipe", "prototype")  # no LLM fallback was needed
    assert llm.calls_for("classify") == [] and llm.calls_for("plan")  # a taught kind plans by default
    llm.assert_complete()


def _teach_units(agent: Agent) -> None:
    agent.services.classifier.teach("units", UNITS, description="unit conversions", plan=True, tools=True,
                                    require_tool=False, retrieve=False)


def _conversion(agent: Agent, llm: ScriptedLLM, request: str, expression: str, answer: str) -> str:
    llm.add("plan", f"1. multiply with the calculator: {expression}")
    llm.add("act", format_call("calculator", {"expression": expression}), answer)
    result = agent.invoke(request, kind="units", user_id="ada")
    assert result.status == "done" and result.answer == answer
    return result.run_id


def test_rated_runs_steer_the_planner_and_act_prompts(make_agent: Callable[..., Agent]) -> None:
    llm = ScriptedLLM()
    agent = make_agent(llm)
    _teach_units(agent)
    good = _conversion(agent, llm, "convert 12 inches to centimetres", "12 * 2.54", "12 inches is 30.48 cm.")
    bad = _conversion(agent, llm, "convert 12 inches to centimetres, please", "12 * 2.5", "12 inches is 30 cm.")
    assert agent.feedback(good, "good", "right factor") and agent.feedback(bad, "bad", "wrong factor")
    assert not agent.feedback("no-such-run", "good")
    _conversion(agent, llm, "convert 7 inches to centimetres", "7 * 2.54", "7 inches is 17.78 cm.")
    plan_prompt = llm.calls_for("plan")[2].messages[-1].content
    act_prompt = llm.calls_for("act")[4].messages[0].content
    for prompt in (plan_prompt, act_prompt):
        assert "Request: convert 12 inches to centimetres" in prompt and "30.48 cm" in prompt
        assert "12 * 2.5\"" not in prompt and "30 cm." not in prompt  # the run rated bad never comes back
    assert "Plan: 1. multiply with the calculator: 12 * 2.54" in plan_prompt  # the planner sees past plans
    assert 'calculator({"expression": "12 * 2.54"})' in act_prompt
    other_user = agent.services.episodes.recall("bob", "convert 7 inches to centimetres", k=3)
    assert other_user == []
    llm.assert_complete()


def test_repl_good_and_bad_rate_the_last_run(make_agent: Callable[..., Agent]) -> None:
    llm = ScriptedLLM()
    agent = make_agent(llm)
    _teach_units(agent)
    for expression in ("3 * 0.3048", "3 * 0.5"):
        llm.add("plan", "1. calculator")
        llm.add("act", format_call("calculator", {"expression": expression}), f"It is {expression}.")
    queue = ["convert 3 feet to metres", "/good exactly right", "convert 3 feet to metres again",
             "/bad wrong factor", "/quit"]
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False, color_system=None)

    def read(_prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    Repl(agent, thread_id="t", user_id="ada", console=console, read=read).loop()
    rated = agent.services.episodes.rated("ada")
    assert [(r.episode.answer, r.rating, r.episode.feedback) for r in rated] == [
        ("It is 3 * 0.3048.", "good", "exactly right"), ("It is 3 * 0.5.", "bad", "wrong factor")]
    assert buffer.getvalue().count("thanks, noted") == 2
    llm.assert_complete()


def test_the_intent_set_and_the_fallback_the_benchmark_counts(embedder: Any) -> None:
    """benchmarks/data/intents.jsonl holds what benchmarks/learning_memory.py promises, and the benchmark's
    "sent to the fallback" is the classifier's own below-threshold/margin path (Classification.method)."""
    from benchmarks.learning_memory import UNKNOWN, load_split, score_classifier, taught_classifier

    split = load_split()
    kinds = [k for k in split.test if k != UNKNOWN]
    assert len(kinds) >= 12 and len(split.dev[UNKNOWN]) + len(split.test[UNKNOWN]) >= 40
    for kind in kinds:
        parts = [set(split.pool[kind]), set(split.dev[kind]), set(split.test[kind])]
        assert sum(map(len, parts)) >= 25 and len(set.union(*parts)) == sum(map(len, parts))  # disjoint
    taught = {kind: split.pool[kind][:5] for kind in kinds}
    small = {kind: texts[:2] for kind, texts in split.test.items()}
    classifier = taught_classifier(embedder, taught, threshold=1.01, margin=0.0)
    everything = score_classifier(classifier, small)
    assert everything.fallback_in_kind == 1.0 and everything.fallback_unknown == 1.0
    assert everything.kept_correct == 0.0
    classifier.threshold = -1.0
    nothing = score_classifier(classifier, small)
    assert nothing.fallback_in_kind == 0.0 and nothing.fallback_unknown == 0.0
    assert nothing.kept_correct == nothing.accuracy == everything.accuracy > 0.5
