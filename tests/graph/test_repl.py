"""The chat REPL driven with scripted keyboard input: streaming, slash commands, approvals, threads."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

from rich.console import Console

from agent.llm import ScriptedLLM, format_call
from agent.repl import Repl


def keyboard(lines: Iterable[str]) -> Callable[[str], str]:
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read


def run_repl(agent, lines: list[str], thread: str = "t") -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False, color_system=None)
    Repl(agent, thread_id=thread, console=console, read=keyboard(lines)).loop()
    return buffer.getvalue()


def test_chat_turn_slash_commands_and_quit(make_agent):
    llm = ScriptedLLM({"act": ["Hello **there**."]})
    agent = make_agent(llm)
    out = run_repl(agent, ["/help", "hi!", "/trace", "/tools", "/memory", "/thread", "/nonsense", "/quit"])
    assert "/trace" in out and "Hello" in out and "there" in out
    assert "kind: chat" in out
    assert "calculator" in out  # /tools
    assert "unknown command /nonsense" in out
    assert "timings:" in out  # /trace
    llm.assert_complete()


def test_tool_calls_and_approval_prompt(make_agent, workspace):
    llm = ScriptedLLM({
        "plan": ["1. write the file"],
        "act": [format_call("write_file", {"path": "note.txt", "content": "hi"}), "Saved note.txt."],
    })
    agent = make_agent(llm)
    out = run_repl(agent, ["please save hi into note.txt", "y", "/good", "/quit"])
    assert "approval needed" in out and "write_file" in out
    assert (workspace / "note.txt").read_text() == "hi"
    assert "Saved note.txt." in out
    assert "thanks, noted" in out
    assert agent.services.episodes.list("default")[0].outcome == "success"


def test_thread_is_resumed_and_pending_approval_asked_on_start(make_agent, workspace):
    llm = ScriptedLLM({"plan": ["1."], "act": [format_call("write_file", {"path": "x.txt", "content": "1"}),
                                               "Done."]})
    agent = make_agent(llm)
    agent.invoke("write x.txt", kind="project", thread_id="resume-me")  # leaves an approval pending
    out = run_repl(agent, ["n", "/quit"], thread="resume-me")
    assert "approval needed" in out and not (workspace / "x.txt").exists()
    assert "Done." in out
