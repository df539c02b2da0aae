"""Approvals under parallel calls and restarts (issue #4, items 5 and 6).

Every execution of a tool appends its label to a counter file on the host: "ran exactly once" is read from
that file, never from what a tool returned. LangGraph's known trouble spots are tested on purpose: resume
values reaching the wrong call when calls are parallel, alike, or not in id order; interrupts that fire again
after they were answered (an empty answer map, a restart, the next step).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.api import Agent
from agent.config import Settings
from agent.errors import ConfigError
from agent.events import InterruptEvent
from agent.llm import ScriptedLLM, format_call
from tests.graph.conftest import PROJECT_EXAMPLES
from tools import tool
from tools.journal import INTERRUPTED

COUNTER: dict[str, Path] = {}
MEET = threading.Barrier(2, timeout=5)
CRASH = threading.Event()  # arms crash(): its next run stops the process (raises KeyboardInterrupt) mid-call


class Crowd:
    """How many crowd() calls run at once, and the most seen."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()


CROWD = Crowd()


def _count(label: str) -> str:
    with COUNTER["file"].open("a") as f:
        f.write(label + "\n")
    return f"did {label}"


def _wait_for(label: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while label not in COUNTER["file"].read_text().split() and time.monotonic() < deadline:
        time.sleep(0.01)


@tool(side_effects=True, approval="side_effects")
def tally(label: str) -> str:
    """Record a label: a side effect that must happen at most once."""
    return _count(label)


@tool(side_effects=True, approval="side_effects")
def crash(label: str) -> str:
    """Do the effect; when armed, wait until tally('a') and flaky_pure('c') have started, then the process
    is stopped mid-call."""
    _count(label)
    if CRASH.is_set():
        CRASH.clear()
        _wait_for("a")
        _wait_for("c")
        raise KeyboardInterrupt
    return f"did {label}"


@tool
def flaky_pure(label: str) -> str:
    """A pure lookup whose first execution is cut off by the process stopping."""
    _count(label)
    marker = COUNTER["file"].with_suffix(".flaky")
    if not marker.exists():
        marker.touch()
        raise KeyboardInterrupt
    return f"looked up {label}"


@tool
def meet(label: str) -> str:
    """Wait for a partner call at a barrier: succeeds only when two calls run at the same time."""
    MEET.wait()
    return _count(label)


@tool
def crowd(label: str) -> str:
    """Note how many calls run at once."""
    with CROWD.lock:
        CROWD.active += 1
        CROWD.peak = max(CROWD.peak, CROWD.active)
    time.sleep(0.3)
    with CROWD.lock:
        CROWD.active -= 1
    return _count(label)


TOOLS = (tally, crash, flaky_pure, meet, crowd)
OpenAgent = Callable[..., Agent]


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    COUNTER["file"] = tmp_path / "counter.txt"
    COUNTER["file"].touch()
    return COUNTER["file"]


@pytest.fixture
def open_agent(settings: Settings, embedder: Any) -> Iterator[OpenAgent]:
    """An Agent on the test's data directory; call it again after closing one to simulate a restart."""
    agents: list[Agent] = []

    def make(llm: ScriptedLLM, max_parallel: int = 4) -> Agent:
        s = settings.model_copy(update={"tools": settings.tools.model_copy(update={"max_parallel": max_parallel})})
        agent = Agent(s, llm=llm, tools=TOOLS, embedder=embedder)
        agents.append(agent)
        agent.services.classifier.teach("project", PROJECT_EXAMPLES, description="multi-step work with tools",
                                        plan=True, tools=True, require_tool=True, retrieve=False)
        return agent

    yield make
    for a in agents:
        a.close()


def runs(counter: Path) -> list[str]:
    return counter.read_text().split()


def calls(*items: tuple[str, str]) -> str:
    return "\n".join(format_call(name, {"label": label}) for name, label in items)


def tool_messages(llm: ScriptedLLM) -> str:
    return "\n".join(m.content for m in llm.calls_for("act")[-1].messages if m.role == "tool")


def stop_agent(agent: Agent, how: str) -> None:
    """"close": an orderly exit. "crash": what a killed process leaves, nothing closed or flushed by us; only
    the store's OS lock goes, as the kernel drops a dead process's flocks (the checkpoint and journal
    connections stay open)."""
    if how == "close":
        agent.close()
    else:
        agent.services.store.close()


def test_approving_a_subset_of_three_parallel_calls_runs_exactly_those(open_agent, counter):
    llm = ScriptedLLM({"plan": ["1. tally"], "act": [calls(("tally", "x"), ("tally", "y"), ("tally", "z")),
                                                      "Two done."]})
    agent = open_agent(llm)
    result = agent.invoke("tally three", kind="project", thread_id="t")
    ids = [p.id for p in result.pending]
    assert [p.arguments["label"] for p in result.pending] == ["x", "y", "z"] and len(set(ids)) == 3
    assert runs(counter) == []  # nothing runs before the yes
    result = agent.resume("t", {ids[0]: True, ids[1]: False, ids[2]: True})
    assert sorted(runs(counter)) == ["x", "z"]  # exactly those, once each
    assert [c["id"] for c in result.tool_calls] == ids  # in call order
    assert [c["ok"] for c in result.tool_calls] == [True, False, True]
    assert "denied" in result.tool_calls[1]["error"] and "denied" in tool_messages(llm)
    assert result.status == "done" and agent.pending("t") == []
    llm.assert_complete()


@pytest.mark.parametrize("stop", ["close", "crash"])
def test_a_restart_between_interrupt_and_answer_loses_nothing_and_runs_nothing_twice(open_agent, counter, stop):
    first = open_agent(ScriptedLLM({"plan": ["1. tally"],
                                    "act": [calls(("tally", "p"), ("tally", "q"), ("tally", "r"))]}))
    before = first.invoke("tally", kind="project", thread_id="t").pending
    stop_agent(first, stop)
    llm = ScriptedLLM({"act": ["Done after the restart."]})
    second = open_agent(llm)
    assert second.pending("t") == before  # same ids, names, arguments
    events = list(second.resume_stream("t", {before[0].id: True, before[2].id: True}))
    assert not any(isinstance(e, InterruptEvent) for e in events)
    result = events[-1].result
    assert sorted(runs(counter)) == ["p", "r"]
    assert result.status == "done" and result.answer == "Done after the restart."
    assert [c["ok"] for c in result.tool_calls] == [True, False, True]
    second.close()
    third = open_agent(ScriptedLLM())
    assert third.pending("t") == []  # answered: the interrupt does not come back after another restart
    with pytest.raises(ConfigError, match="no pending approval"):
        third.resume("t", True)
    assert sorted(runs(counter)) == ["p", "r"]
    llm.assert_complete()


@pytest.mark.parametrize("stop", ["close", "crash"])
def test_a_crash_inside_call_tools_reruns_only_pure_unfinished_calls(open_agent, counter, stop):
    first = open_agent(ScriptedLLM({"plan": ["1. go"], "act": [calls(("tally", "a"), ("crash", "b"),
                                                                      ("flaky_pure", "c"))]}))
    first.invoke("go", kind="project", thread_id="t")
    CRASH.set()
    with pytest.raises(KeyboardInterrupt):
        first.resume("t", True)
    assert sorted(runs(counter)) == ["a", "b", "c"]
    stop_agent(first, stop)
    llm = ScriptedLLM({"act": ["Recovered."]})
    second = open_agent(llm)
    assert second.pending("t") == []  # nothing to approve: the calls were approved before the crash
    events = list(second.resume_stream("t"))
    assert not any(isinstance(e, InterruptEvent) for e in events)
    result = events[-1].result
    # tally('a') finished: its recorded result comes back. crash('b') was cut off and has side effects: not
    # repeated. flaky_pure('c') was cut off and is pure: run again.
    assert sorted(runs(counter)) == ["a", "b", "c", "c"]
    assert [(c["name"], c["ok"]) for c in result.tool_calls] == [("tally", True), ("crash", False),
                                                                   ("flaky_pure", True)]
    assert result.tool_calls[0]["output"] == "did a" and result.tool_calls[1]["error"] == INTERRUPTED
    assert "interrupted by a restart" in tool_messages(llm)
    assert result.status == "done" and result.answer == "Recovered."
    llm.assert_complete()


def test_resume_values_reach_their_own_calls_whatever_the_order_and_likeness(open_agent, counter, monkeypatch):
    # Ids in the reverse of the order the model wrote the calls, and two calls exactly alike.
    hexes = iter(["9" * 32, "5" * 32, "1" * 32])
    monkeypatch.setattr("agent.llm.toolformat.uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex=next(hexes))))
    llm = ScriptedLLM({"plan": ["1. tally"], "act": [calls(("tally", "same"), ("tally", "other"), ("tally", "same")),
                                                      "Done."]})
    agent = open_agent(llm)
    ids = [p.id for p in agent.invoke("tally", kind="project", thread_id="t").pending]
    assert ids == ["call_9999999999", "call_5555555555", "call_1111111111"]
    result = agent.resume("t", {ids[2]: True, ids[0]: False, ids[1]: True})  # answers in yet another order
    assert sorted(runs(counter)) == ["other", "same"]  # one of the twins ran, once
    assert [(c["id"], c["ok"]) for c in result.tool_calls] == [(ids[0], False), (ids[1], True), (ids[2], True)]
    llm.assert_complete()


def test_denying_everything_with_an_empty_map_does_not_ask_again(open_agent, counter):
    # LangGraph reads an empty dict as "a map of interrupt ids naming none" and the interrupt fires again;
    # the Agent answers every interrupt by its own id, so {} means: deny every call.
    llm = ScriptedLLM({"plan": ["1. tally"], "act": [calls(("tally", "x"), ("tally", "y")), "Nothing done."]})
    agent = open_agent(llm)
    agent.invoke("tally", kind="project", thread_id="t")
    result = agent.resume("t", {})
    assert result.status == "done" and result.pending == [] and runs(counter) == []
    assert all("denied" in c["error"] for c in result.tool_calls)
    llm.assert_complete()


def test_each_step_asks_for_its_own_calls(open_agent, counter):
    llm = ScriptedLLM({"plan": ["1. tally twice"], "act": [calls(("tally", "one")), calls(("tally", "two")),
                                                            "Both."]})
    agent = open_agent(llm)
    first = agent.invoke("tally", kind="project", thread_id="t").pending
    second = agent.resume("t", True)
    assert second.interrupted and [p.arguments["label"] for p in second.pending] == ["two"]
    assert second.pending[0].id != first[0].id and runs(counter) == ["one"]  # not approved by the old answer
    result = agent.resume("t", {second.pending[0].id: True})
    assert runs(counter) == ["one", "two"] and result.answer == "Both."
    llm.assert_complete()


def test_bad_resume_answers_are_clear_errors_and_run_nothing(open_agent, counter):
    llm = ScriptedLLM({"plan": ["1. tally"], "act": [calls(("tally", "x"), ("tally", "y")), "Done."]})
    agent = open_agent(llm)
    pending = agent.invoke("tally", kind="project", thread_id="t").pending
    ids = [p.id for p in pending]
    with pytest.raises(ConfigError, match=r"\['call_nope'\] are not pending calls; the pending calls are"):
        agent.resume("t", {ids[0]: True, "call_nope": True})
    with pytest.raises(ConfigError, match="must be True or False"):
        agent.resume("t", {ids[0]: "yes"})
    with pytest.raises(ConfigError, match="answer with True/False"):
        agent.resume("t")
    with pytest.raises(ConfigError, match="no pending approval"):
        agent.resume("elsewhere", True)
    assert runs(counter) == [] and agent.pending("t") == pending  # still waiting, unchanged
    assert agent.resume("t", {ids[1]: True}).status == "done" and runs(counter) == ["y"]
    llm.assert_complete()


def test_a_cut_off_run_is_not_resumed_with_no(open_agent, counter):
    agent = open_agent(ScriptedLLM({"plan": ["1. go"], "act": [calls(("crash", "b"))]}))
    agent.invoke("go", kind="project", thread_id="t")
    COUNTER["file"].write_text("a\nc\n")  # lets crash() stop at once
    CRASH.set()
    with pytest.raises(KeyboardInterrupt):
        agent.resume("t", True)
    with pytest.raises(ConfigError, match="cut off before it finished"):
        agent.resume("t", False)


def test_parallel_calls_overlap(open_agent, counter):
    llm = ScriptedLLM({"plan": ["1. meet"], "act": [calls(("meet", "m1"), ("meet", "m2")), "Met."]})
    result = open_agent(llm).invoke("meet", kind="project")
    # Each call waits at a two-party barrier: both succeed only if they ran at the same time.
    assert [c["ok"] for c in result.tool_calls] == [True, True], result.tool_calls
    assert sorted(runs(counter)) == ["m1", "m2"]


def test_parallel_calls_are_bounded_by_max_parallel_and_keep_call_order(open_agent, counter):
    llm = ScriptedLLM({"plan": ["1. crowd"], "act": [calls(*(("crowd", f"c{i}") for i in range(5))), "Done."]})
    CROWD.peak = 0
    result = open_agent(llm, max_parallel=2).invoke("crowd", kind="project")
    assert CROWD.peak == 2  # overlapped, and never more than two at once
    assert [c["arguments"]["label"] for c in result.tool_calls] == [f"c{i}" for i in range(5)]
    assert sorted(runs(counter)) == [f"c{i}" for i in range(5)]
