"""Wiring: the graph of DESIGN.md, compiled with a checkpointer.

    START -> check_input --blocked--> refuse -> END
          -> classify_task -> select_adapter -> recall_episodes -> retrieve_context? -> make_plan?
          -> act <--------------------------------------------------------------+
               |-- tool calls --> check_tool_calls (approval interrupt) --> call_tools
               |                      --> check_tool_results --(all failed: re-plan)--+
               '-- final / budget --> check_output --> record_episode -> END
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from graphs import routing
from graphs.act import act
from graphs.deps import Deps
from graphs.finish import check_output, record_episode
from graphs.nodes import (
    check_input,
    classify_task,
    make_plan,
    recall_episodes,
    refuse,
    retrieve_context,
    select_adapter,
)
from graphs.state import AgentState
from graphs.toolsteps import call_tools, check_tool_calls, check_tool_results

Node = Callable[[AgentState, Runtime[Deps]], dict[str, Any]]

NODES: tuple[Node, ...] = (
    check_input, classify_task, select_adapter, recall_episodes, retrieve_context, make_plan, act,
    check_tool_calls, call_tools, check_tool_results, check_output, record_episode, refuse,
)


def timed(node: Node) -> Node:
    """Wrap a node: stream node_start/node_end events and add its wall time to the run's timings."""
    name = node.__name__

    @functools.wraps(node)
    def wrapper(state: AgentState, runtime: Runtime[Deps]) -> dict[str, Any]:
        runtime.stream_writer({"type": "node_start", "node": name})
        start = time.perf_counter()
        update = node(state, runtime)
        elapsed = time.perf_counter() - start
        timings = dict(state.get("timings", {}))
        timings[name] = round(timings.get(name, 0.0) + elapsed, 4)
        runtime.stream_writer({"type": "node_end", "node": name, "elapsed_s": elapsed})
        return {**update, "timings": timings}

    return wrapper


def build_graph(checkpointer: BaseCheckpointSaver[Any] | None = None
                ) -> CompiledStateGraph[AgentState, Deps, AgentState, AgentState]:
    graph: StateGraph[AgentState, Deps, AgentState, AgentState] = StateGraph(AgentState, context_schema=Deps)
    for node in NODES:
        graph.add_node(node.__name__, timed(node))  # type: ignore[call-overload]
    graph.add_edge(START, "check_input")
    graph.add_conditional_edges("check_input", routing.route_after_check_input, ["refuse", "classify_task"])
    graph.add_edge("classify_task", "select_adapter")
    graph.add_edge("select_adapter", "recall_episodes")
    graph.add_conditional_edges("recall_episodes", routing.route_after_recall_episodes,
                                ["retrieve_context", "make_plan", "act"])
    graph.add_conditional_edges("retrieve_context", routing.route_after_retrieve_context, ["make_plan", "act"])
    graph.add_conditional_edges("make_plan", routing.route_after_make_plan, ["refuse", "act"])
    graph.add_conditional_edges("act", routing.route_after_act, ["check_tool_calls", "check_output", "act"])
    graph.add_edge("check_tool_calls", "call_tools")
    graph.add_edge("call_tools", "check_tool_results")
    graph.add_conditional_edges("check_tool_results", routing.route_after_check_tool_results,
                                ["make_plan", "act"])
    graph.add_conditional_edges("check_output", routing.route_after_check_output, ["refuse", "record_episode"])
    graph.add_edge("record_episode", END)
    graph.add_edge("refuse", END)
    return graph.compile(checkpointer=checkpointer)
