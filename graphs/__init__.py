"""The LangGraph state machine: state, nodes, routing and wiring. No I/O of its own: services come in Deps."""

from graphs.builder import NODES, build_graph
from graphs.deps import Deps
from graphs.state import AgentState, new_run

__all__ = ["NODES", "AgentState", "Deps", "build_graph", "new_run"]
