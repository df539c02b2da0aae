"""Every route through the graph, end to end on ScriptedLLM with the real services around it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.events import Final, NodeEnd, NodeStart, TaskKind, Token, ToolCallEvent, ToolResultEvent
from agent.llm import ScriptedLLM, format_call


def test_chat_skips_plan_retrieval_and_tools(make_agent):
    llm = ScriptedLLM({"act": ["Hello! How can I help?"]})
    agent = make_agent(llm)
    result = agent.invoke("hi there", kind="chat")
    assert result.status == "done"
    assert result.answer == "Hello! How can I help?"
    assert result.task_kind == "chat"
    assert "make_plan" not in result.timings and "retrieve_context" not in result.timings
    assert {"check_input", "classify_task", "act", "check_output", "record_episode"} <= set(result.timings)
    assert llm.requests[0].tools == () and llm.requests[0].tool_choice == "none"
    llm.assert_complete()


def test_classifier_picks_the_kind_without_forcing(make_agent):
    llm = ScriptedLLM({"act": ["Hi!"]})
    result = make_agent(llm).invoke("hello, how are you today?")
    assert result.task_kind == "chat"


def test_tool_route_plans_calls_and_answers(make_agent):
    llm = ScriptedLLM({
        "plan": ["1. Use calculator on 17*23.\n2. Report the result."],
        "act": [format_call("calculator", {"expression": "17*23"}), "17 * 23 = 391."],
    })
    result = make_agent(llm).invoke("what is 17*23?", kind="project")
    assert result.status == "done"
    assert result.plan.startswith("1. Use calculator")
    assert [c["name"] for c in result.tool_calls] == ["calculator"]
    assert result.tool_calls[0]["ok"] and "391" in result.tool_calls[0]["output"]
    assert result.answer == "17 * 23 = 391."
    # The first act step was forced to call a tool; the second saw the result.
    first, second = llm.calls_for("act")
    assert first.tool_choice == "required" and second.tool_choice == "auto"
    assert any("391" in m.content for m in second.messages if m.role == "tool")
    assert result.usage["completion_tokens"] > 0
    llm.assert_complete()


def test_tool_kind_calls_a_tool_first_without_a_plan(make_agent):
    llm = ScriptedLLM({"act": [format_call("calculator", {"expression": "17*23"}), "391"]})
    result = make_agent(llm).invoke("what is 17*23?", kind="tool")
    assert "make_plan" not in result.timings and result.plan == ""
    first = llm.calls_for("act")[0]
    assert first.tool_choice == "required"
    assert {t.name for t in first.tools} == {"calculator", "python", "read_file", "write_file", "list_dir"}
    assert result.tool_calls[0]["output"] == "391" and result.answer == "391"
    llm.assert_complete()


def test_docs_route_retrieves_and_cites(make_agent, tmp_path: Path):
    doc = tmp_path / "locking.md"
    doc.write_text("# Locking\n\nThe vector store is owned by one process, which holds store.lock.\n")
    llm = ScriptedLLM({"act": ["One process owns the store and holds store.lock [1]."]})
    agent = make_agent(llm)
    agent.ingest([doc])
    result = agent.invoke("who owns the vector store according to the docs?", kind="docs")
    assert "retrieve_context" in result.timings
    assert result.citations and result.citations[0]["n"] == 1
    assert result.citations[0]["source"].endswith("locking.md")
    assert "locking.md" in result.answer  # the sources line under the answer
    prompt = llm.requests[0].messages[0].content
    assert "store.lock" in prompt and "[1]" in prompt


def test_unknown_forced_kind_is_a_clear_error(make_agent):
    agent = make_agent(ScriptedLLM())
    with pytest.raises(ConfigError, match="nonsense"):
        agent.invoke("hi", kind="nonsense")


def test_stream_yields_typed_events_in_order(make_agent):
    llm = ScriptedLLM({
        "plan": ["1. calculator"],
        "act": [format_call("calculator", {"expression": "2+2"}), "The answer is 4."],
    })
    events = list(make_agent(llm).stream("what is 2+2?", kind="project"))
    kinds = [type(e) for e in events]
    assert kinds[0] is NodeStart and isinstance(events[-1], Final)
    assert TaskKind in kinds and ToolCallEvent in kinds and ToolResultEvent in kinds and NodeEnd in kinds
    assert kinds.index(ToolCallEvent) < kinds.index(ToolResultEvent) < kinds.index(Token)
    assert "".join(e.text for e in events if isinstance(e, Token)).strip() == "The answer is 4."


def test_async_faces(make_agent):
    llm = ScriptedLLM({"act": ["one", "two"]})
    agent = make_agent(llm)

    async def go() -> tuple[str, list[object]]:
        result = await agent.ainvoke("hi", kind="chat")
        events = [e async for e in agent.astream("hi again", kind="chat")]
        return result.answer, events

    answer, events = asyncio.run(go())
    assert answer == "one"
    assert isinstance(events[-1], Final) and events[-1].result.answer == "two"


def test_only_offered_tools_can_run(make_agent, workspace):
    # chat offers no tools: a call block the model writes anyway is text, and nothing runs
    llm = ScriptedLLM({"act": ["Sure. " + format_call("write_file", {"path": "x.txt", "content": "1"})]})
    result = make_agent(llm).invoke("hello", kind="chat")
    assert result.tool_calls == [] and not (workspace / "x.txt").exists()
    assert result.answer == "Sure."


def test_a_call_to_a_tool_not_offered_is_an_observation(make_agent):
    # docs offers search_docs only: a call to calculator comes back as an error naming what is available
    llm = ScriptedLLM({"act": [format_call("calculator", {"expression": "1+1"}), "I can only search."]})
    result = make_agent(llm).invoke("what do my notes say about x?", kind="docs")
    assert not result.tool_calls[0]["ok"] and "search_docs" in result.tool_calls[0]["error"]
    assert result.answer.startswith("I can only search.")


def test_search_docs_results_are_cited_by_their_own_labels(make_agent, tmp_path):
    (tmp_path / "zebra.md").write_text("Zebras eat grass on the savanna.\n")
    (tmp_path / "atlantis.md").write_text("Atlantis is a legendary island.\n")
    llm = ScriptedLLM({"plan": ["1. search"],
                       "act": [format_call("search_docs", {"query": "what do zebras eat", "k": 1}),
                               "Zebras eat grass [S1]."]})
    agent = make_agent(llm)
    agent.ingest([tmp_path])
    result = agent.invoke("what do zebras eat? search my notes", kind="project")
    assert [c["n"] for c in result.citations] == ["S1"]
    assert result.citations[0]["source"].endswith("zebra.md")
    assert "[S1]" in result.answer and "zebra.md" in result.answer and "atlantis" not in result.answer
