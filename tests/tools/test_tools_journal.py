"""The call journal: each key runs at most once, across restarts, threads and journal instances.

Evidence is a counter file on the host that every execution appends a line to, never what a tool returns.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.errors import AgentError
from agent.types import ToolCall
from tools import Broker, ToolRegistry, tool
from tools.journal import INTERRUPTED, CallJournal, JournaledCalls

COUNTER: dict[str, Path] = {}


def _count(label: str) -> str:
    with COUNTER["file"].open("a") as f:
        f.write(label + "\n")
    return f"did {label}"


@tool(side_effects=True, approval="side_effects")
def effect(label: str) -> str:
    """Do something that must happen once."""
    return _count(label)


@tool
def pure(label: str) -> str:
    """Compute something; running it twice does no harm."""
    return _count(label)


@tool
def wait_for(label: str, seconds: float) -> str:
    """Record, then wait a little."""
    time.sleep(seconds)
    return _count(label)


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    COUNTER["file"] = tmp_path / "counter.txt"
    COUNTER["file"].touch()
    return COUNTER["file"]


def runs(counter: Path) -> list[str]:
    return counter.read_text().split()


def make_calls(tmp_path: Path, max_parallel: int = 4) -> JournaledCalls:
    registry = ToolRegistry([effect, pure, wait_for])
    broker = Broker(registry, ToolSettings(max_parallel=max_parallel), tmp_path / "workspace")
    return JournaledCalls(broker, CallJournal(tmp_path / "home" / "tool_calls.sqlite"))


def test_a_recorded_call_returns_its_result_and_does_not_run_again(tmp_path: Path, counter: Path) -> None:
    calls = make_calls(tmp_path)
    call = ToolCall("c1", "effect", {"label": "a"})
    first = calls.call_many([call], ["run/1/0"])
    again = calls.call_many([call], ["run/1/0"])
    assert runs(counter) == ["a"]
    assert first == again and first[0].ok and first[0].output == "did a"
    calls.close()
    reopened = make_calls(tmp_path)  # a restart: a new process opens the same file
    assert reopened.call_many([call], ["run/1/0"]) == first
    assert runs(counter) == ["a"]
    reopened.close()


def test_an_unfinished_side_effect_call_is_not_repeated_but_a_pure_one_is(tmp_path: Path, counter: Path) -> None:
    calls = make_calls(tmp_path)
    hurt, safe = ToolCall("c1", "effect", {"label": "e"}), ToolCall("c2", "pure", {"label": "p"})
    # What a process that died mid-call leaves: `started` and no result.
    assert calls.journal.claim("run/1/0", hurt).fresh and calls.journal.claim("run/1/1", safe).fresh
    results = calls.call_many([hurt, safe], ["run/1/0", "run/1/1"])
    assert runs(counter) == ["p"]  # the side-effect call did not run again; the pure one did
    assert not results[0].ok and results[0].error == INTERRUPTED and results[0].call_id == "c1"
    assert results[1].ok and results[1].output == "did p"
    assert calls.call_many([hurt, safe], ["run/1/0", "run/1/1"])[1] == results[1]  # now recorded
    assert runs(counter) == ["p"]
    calls.close()


def test_a_call_that_needs_approval_is_never_repeated_even_without_side_effects(tmp_path: Path,
                                                                                counter: Path) -> None:
    registry = ToolRegistry([pure])
    broker = Broker(registry, ToolSettings(approval=["pure"]), tmp_path / "workspace")
    calls = JournaledCalls(broker, CallJournal(tmp_path / "j.sqlite"))
    call = ToolCall("c1", "pure", {"label": "x"})
    calls.journal.claim("k", call)
    assert calls.call_many([call], ["k"])[0].error == INTERRUPTED
    assert runs(counter) == []
    calls.close()


def test_a_process_ending_mid_call_leaves_the_key_started(tmp_path: Path, counter: Path) -> None:
    @tool(side_effects=True)
    def die(label: str) -> str:
        """Do the effect, then the process is told to stop."""
        _count(label)
        raise KeyboardInterrupt

    broker = Broker(ToolRegistry([die, effect]), ToolSettings(), tmp_path / "workspace")
    calls = JournaledCalls(broker, CallJournal(tmp_path / "j.sqlite"))
    both = [ToolCall("c1", "effect", {"label": "done"}), ToolCall("c2", "die", {"label": "died"})]
    with pytest.raises(KeyboardInterrupt):
        calls.call_many(both, ["k0", "k1"])
    assert sorted(runs(counter)) == ["died", "done"]
    results = calls.call_many(both, ["k0", "k1"])  # the step replayed after the restart
    assert sorted(runs(counter)) == ["died", "done"]  # nothing ran twice
    assert results[0].ok and results[0].output == "did done"
    assert results[1].error == INTERRUPTED
    calls.close()


def test_one_claimant_wins_a_key_across_threads_and_journal_instances(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    journals = [CallJournal(path) for _ in range(3)]  # three Agents sharing one data directory
    call = ToolCall("c", "effect", {"label": "x"})
    wins: list[str] = []
    start = threading.Barrier(12, timeout=10)

    def claim(i: int) -> None:
        start.wait()
        for key in ("k1", "k2", "k3"):
            if journals[i % 3].claim(key, call).fresh:
                wins.append(key)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(wins) == ["k1", "k2", "k3"]
    for j in journals:
        j.close()


def test_calls_overlap_up_to_max_parallel_and_keep_call_order(tmp_path: Path, counter: Path) -> None:
    calls = make_calls(tmp_path, max_parallel=2)
    batch = [ToolCall(f"c{i}", "wait_for", {"label": f"l{i}", "seconds": 0.3}) for i in range(4)]
    started = time.monotonic()
    results = calls.call_many(batch, [f"k{i}" for i in range(4)])
    elapsed = time.monotonic() - started
    assert [r.call_id for r in results] == ["c0", "c1", "c2", "c3"]
    assert 0.6 <= elapsed < 1.1  # two at a time: two rounds of 0.3 s, not one, not four
    calls.close()


def test_keys_must_be_one_per_call_and_distinct(tmp_path: Path) -> None:
    calls = make_calls(tmp_path)
    call = ToolCall("c", "pure", {"label": "x"})
    with pytest.raises(AgentError, match="one distinct idempotency key per call"):
        calls.call_many([call, call], ["k", "k"])
    with pytest.raises(AgentError, match="one distinct idempotency key per call"):
        calls.call_many([call], [])
    calls.close()


def test_a_key_recorded_for_another_call_is_a_loud_error(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path / "j.sqlite")
    journal.claim("k", ToolCall("c", "pure", {"label": "x"}))
    with pytest.raises(AgentError, match="was recorded for pure"):
        journal.claim("k", ToolCall("c", "pure", {"label": "y"}))
    journal.close()


def test_old_rows_are_pruned_and_the_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = CallJournal(path)
    journal.claim("old", ToolCall("c", "pure", {"label": "x"}))
    journal.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tool_calls SET started_at = 0")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal = CallJournal(path)
    assert journal.claim("old", ToolCall("c", "pure", {"label": "x"})).fresh
    journal.close()
