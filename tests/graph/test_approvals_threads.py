"""Approval interrupts (approve, deny, a subset, across a restart) and threads that survive restarts."""

from __future__ import annotations

import pytest

from agent.api import Agent
from agent.errors import ConfigError
from agent.llm import ScriptedLLM, format_call


def _write(path: str, content: str) -> str:
    return format_call("write_file", {"path": path, "content": content})


def test_approve_runs_the_call(make_agent, workspace):
    llm = ScriptedLLM({"plan": ["1. write"], "act": [_write("a.txt", "hello"), "Written."]})
    agent = make_agent(llm)
    result = agent.invoke("write hello to a.txt", kind="project", thread_id="t1")
    assert result.interrupted and result.status == "interrupted"
    assert [p.name for p in result.pending] == ["write_file"]
    assert not (workspace / "a.txt").exists()  # nothing ran before the yes
    result = agent.resume("t1", True)
    assert result.status == "done" and result.answer == "Written."
    assert (workspace / "a.txt").read_text() == "hello"
    assert agent.pending("t1") == []


def test_deny_tells_the_model_and_runs_nothing(make_agent, workspace):
    llm = ScriptedLLM({"plan": ["1. write"], "act": [_write("b.txt", "x"), "OK, I did not write it."]})
    agent = make_agent(llm)
    agent.invoke("write x to b.txt", kind="project", thread_id="t2")
    result = agent.resume("t2", False)
    assert not (workspace / "b.txt").exists()
    assert "denied" in result.tool_calls[0]["error"]
    assert result.answer == "OK, I did not write it."


def test_approving_a_subset_of_parallel_calls(make_agent, workspace):
    both = _write("yes.txt", "1") + "\n" + _write("no.txt", "2")
    llm = ScriptedLLM({"plan": ["1. write two"], "act": [both, "One written."]})
    agent = make_agent(llm)
    result = agent.invoke("write two files", kind="project", thread_id="t3")
    ids = {p.arguments["path"]: p.id for p in result.pending}
    assert set(ids) == {"yes.txt", "no.txt"}
    result = agent.resume("t3", {ids["yes.txt"]: True})  # unlisted ids are denied
    assert (workspace / "yes.txt").exists() and not (workspace / "no.txt").exists()
    assert [c["ok"] for c in result.tool_calls] == [True, False]  # results in call order


def test_a_pending_approval_survives_a_restart(make_agent, settings, embedder, workspace):
    llm = ScriptedLLM({"plan": ["1. write"], "act": [_write("c.txt", "persisted")]})
    first = make_agent(llm)
    first.invoke("write c.txt", kind="project", thread_id="t4")
    first.close()
    llm2 = ScriptedLLM({"act": ["Done after restart."]})
    with Agent(settings, llm=llm2, embedder=embedder) as second:
        assert [p.name for p in second.pending("t4")] == ["write_file"]
        result = second.resume("t4", True)
    assert (workspace / "c.txt").read_text() == "persisted"
    assert result.answer == "Done after restart."
    assert [c["name"] for c in result.tool_calls] == ["write_file"]  # ran exactly once
    llm2.assert_complete()


def test_new_request_on_a_waiting_thread_is_refused_clearly(make_agent):
    llm = ScriptedLLM({"plan": ["1."], "act": [_write("d.txt", "x")]})
    agent = make_agent(llm)
    agent.invoke("write d", kind="project", thread_id="t5")
    with pytest.raises(ConfigError, match="waiting for an approval"):
        agent.invoke("something else", thread_id="t5")
    with pytest.raises(ConfigError, match="no pending approval"):
        agent.resume("other-thread", True)


def test_a_thread_resumes_after_a_restart(make_agent, settings, embedder):
    first = make_agent(ScriptedLLM({"act": ["Nice to meet you, Ada."]}))
    first.invoke("my name is Ada", kind="chat", thread_id="conv")
    first.close()
    llm = ScriptedLLM({"act": ["Your name is Ada."]})
    with Agent(settings, llm=llm, embedder=embedder) as second:
        result = second.invoke("what is my name?", kind="chat", thread_id="conv")
        assert len(second.history("conv")) == 4
    contents = [m.content for m in llm.requests[0].messages]
    assert "my name is Ada" in contents and "Nice to meet you, Ada." in contents
    assert result.answer == "Your name is Ada."


def test_episodes_are_recalled_per_user(make_agent):
    llm = ScriptedLLM({
        "plan": ["1. calc"] * 3,
        "act": [format_call("calculator", {"expression": "12*12"}), "144",
                format_call("calculator", {"expression": "13*13"}), "169",
                format_call("calculator", {"expression": "13*13"}), "169"],
    })
    agent = make_agent(llm)
    agent.invoke("what is 12 times 12?", kind="project", user_id="alice")
    agent.invoke("what is 13 times 13?", kind="project", user_id="alice")
    alice_prompt = llm.calls_for("act")[2].messages[0].content
    assert "12 times 12" in alice_prompt  # alice's earlier episode came back as an exemplar
    agent.invoke("what is 13 times 13?", kind="project", user_id="bob")
    bob_prompt = llm.calls_for("act")[4].messages[0].content
    assert "12 times 12" not in bob_prompt and "13 times 13" not in bob_prompt
    assert [e.user_id for e in agent.services.episodes.list("bob")] == ["bob"]
