"""Model mistakes and misbehaving tools come back to the model as observations; the run never crashes."""

from __future__ import annotations

import time

from agent.llm import ScriptedLLM, format_call
from tools import tool


@tool
def explode(reason: str) -> str:
    """A tool that always raises."""
    raise RuntimeError(f"kaboom: {reason}")


@tool(timeout_s=0.5)
def hang(seconds: float) -> str:
    """A tool that sleeps for a while."""
    time.sleep(seconds)
    return "woke up"


def _tool_messages(llm: ScriptedLLM, act_index: int) -> str:
    return "\n".join(m.content for m in llm.calls_for("act")[act_index].messages if m.role == "tool")


def test_unknown_tool_invalid_arguments_raise_and_timeout_are_observations(make_agent):
    calls = "\n".join([
        format_call("no_such_tool", {}),
        format_call("calculator", {"expr": "1+1"}),
        format_call("explode", {"reason": "test"}),
        format_call("hang", {"seconds": 5}),
    ])
    llm = ScriptedLLM({"plan": ["1. try things", "1. give up"], "act": [calls, "Those all failed."]})
    result = make_agent(llm, tools=(explode, hang)).invoke("try the tools", kind="project",)
    by_name = {c["name"]: c for c in result.tool_calls}
    assert set(by_name) == {"no_such_tool", "calculator", "explode", "hang"}
    assert not any(c["ok"] for c in result.tool_calls)
    assert "not available" in by_name["no_such_tool"]["error"] and "calculator" in by_name["no_such_tool"]["error"]
    assert "expression" in by_name["calculator"]["error"]
    assert "kaboom" in by_name["explode"]["error"]
    assert "timed out" in by_name["hang"]["error"].lower()
    seen = _tool_messages(llm, 1)
    assert "kaboom" in seen and "ERROR" in seen
    assert result.status == "done"


def test_all_calls_failing_triggers_a_bounded_replan(make_agent):
    llm = ScriptedLLM({
        "plan": ["1. explode", "1. use calculator instead"],
        "act": [format_call("explode", {"reason": "a"}), format_call("calculator", {"expression": "6*7"}), "42"],
    })
    result = make_agent(llm, tools=(explode,)).invoke("compute 6*7", kind="project")
    assert len(llm.calls_for("plan")) == 2
    assert "previous plan failed" in llm.calls_for("plan")[1].messages[-1].content
    assert result.answer == "42"
    llm.assert_complete()


def test_step_budget_ends_a_loop_with_a_clear_message(make_agent):
    steps = [format_call("calculator", {"expression": f"{n}+{n}"}) for n in range(3)]
    llm = ScriptedLLM({"plan": ["1. loop"], "act": steps})
    agent = make_agent(llm, agent={"max_steps": 3, "max_replans": 0})
    result = agent.invoke("keep calculating", kind="project")
    assert result.status == "budget"
    assert "step budget" in result.answer and "max_steps = 3" in result.answer
    assert len(llm.calls_for("act")) == 3
    llm.assert_complete()


def test_unreadable_call_is_shown_to_the_model(make_agent):
    llm = ScriptedLLM({"plan": ["1."], "act": ["<tool_call>\n{not json}\n</tool_call>", "Sorry, 2."]})
    result = make_agent(llm).invoke("what is 1+1", kind="project")
    assert result.answer == "Sorry, 2."
    assert "not valid JSON" in _tool_messages(llm, 1)


def test_a_repeated_call_gets_an_answer_instead_of_a_loop(make_agent):
    again = format_call("calculator", {"expression": "6*7"})
    llm = ScriptedLLM({"plan": ["1. calc"], "act": [again, again, "It is 42."]})
    result = make_agent(llm).invoke("compute 6*7", kind="project")
    assert result.answer == "It is 42." and result.status == "done"
    assert len(result.tool_calls) == 1  # the repeat never ran
    assert llm.calls_for("act")[2].tool_choice == "none"
    llm.assert_complete()


def test_a_model_that_only_repeats_itself_gets_its_tool_results_as_the_answer(make_agent):
    again = format_call("calculator", {"expression": "6*7"})
    llm = ScriptedLLM({"plan": ["1. calc"], "act": [again, again, again]})
    result = make_agent(llm).invoke("compute 6*7", kind="project")
    assert result.status == "done"
    assert 'calculator({"expression": "6*7"}) returned: 42' in result.answer


def test_an_answer_that_only_echoes_calls_is_replaced_by_the_tool_results(make_agent):
    """The bundled model, asked for an answer with its tools withdrawn, wrote its call back in a block of its own
    making ("<tool_call_result>", "<tool_code>"): not an answer."""
    again = format_call("calculator", {"expression": "6*7"})
    echo = '<tool_code>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_code>'
    llm = ScriptedLLM({"plan": ["1. calc"], "act": [again, again, echo]})
    result = make_agent(llm).invoke("compute 6*7", kind="project")
    assert result.status == "done" and "<tool_code>" not in result.answer
    assert 'calculator({"expression": "6*7"}) returned: 42' in result.answer
    llm.assert_complete()
