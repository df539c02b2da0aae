"""End to end through the graph: an MCP server's tools and a LangChain tool, called by a scripted model
through a real Agent (broker, approvals, guards), and the server gone after Agent.close()."""

from __future__ import annotations

import sys
import uuid

from langchain_core.tools import tool as lc_tool

from agent.config import McpServerSettings
from agent.llm import ScriptedLLM, format_call
from tests.tools.test_tools_mcp import SERVER, wait_until_gone, with_tag


@lc_tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def _tool_messages(llm: ScriptedLLM, act_index: int) -> str:
    return "\n".join(m.content for m in llm.calls_for("act")[act_index].messages if m.role == "tool")


def test_an_mcp_tool_and_a_langchain_tool_through_the_agent(make_agent):
    tag = uuid.uuid4().hex
    servers = {"notes": McpServerSettings(command=[sys.executable, SERVER, "normal", tag], prefix="notes_")}
    calls = format_call("notes_read_notes", {}) + "\n" + format_call("shout", {"text": "done"})
    llm = ScriptedLLM({"plan": ["1. read the notes"], "act": [calls, "The notes say: note one, note two."]})
    agent = make_agent(llm, tools=(shout,), mcp={"servers": servers})
    result = agent.invoke("what do my notes say?", kind="project")
    assert result.status == "done" and result.answer == "The notes say: note one, note two."
    by_name = {c["name"]: c for c in result.tool_calls}
    assert by_name["notes_read_notes"]["ok"] and by_name["shout"]["ok"]
    seen = _tool_messages(llm, 1)
    assert "note one\nnote two" in seen and "DONE" in seen
    specs = {s.name for s in llm.calls_for("act")[0].tools}
    assert {"notes_add", "notes_read_notes", "shout"} <= specs
    llm.assert_complete()
    pids = with_tag(tag)
    assert pids
    agent.close()
    assert wait_until_gone(pids) == []


def test_an_mcp_tool_with_side_effects_waits_for_approval(make_agent):
    servers = {"calc": McpServerSettings(command=[sys.executable, SERVER, "normal"], tools=["add"])}
    llm = ScriptedLLM({"plan": ["1. add"], "act": [format_call("add", {"a": 2, "b": 3}), "It is 5."]})
    agent = make_agent(llm, mcp={"servers": servers})
    paused = agent.invoke("add 2 and 3", kind="project", thread_id="mcp-approval")
    assert paused.status == "interrupted" and [p.name for p in paused.pending] == ["add"]
    result = agent.resume("mcp-approval", True)
    assert result.status == "done" and result.answer == "It is 5."
    assert result.tool_calls[-1]["output"] == "5"

