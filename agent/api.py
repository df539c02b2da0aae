"""The Python API.

    from agent import Agent, tool

    @tool
    def word_count(text: str) -> int:
        \"\"\"Count the words in a text.\"\"\"
        return len(text.split())

    with Agent(tools=[word_count]) as agent:
        result = agent.invoke("How many words are in 'to be or not to be'?")
        print(result.answer, result.tool_calls)
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Settings
from agent.errors import AgentError, ConfigError
from agent.events import Event, Final, InterruptEvent, from_graph
from agent.protocols import LLM, Embedder
from agent.result import Approval, Result
from agent.services import Progress, Services, build_services

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

DEFAULT_USER = "default"


class Agent:
    """One agent: a resident model, tools, memory and the graph, shared by every thread and user.

    Threads (`thread_id`) keep conversations; users (`user_id`) keep episodic memory apart. Runs that need
    a human yes pause with `Result.status == "interrupted"`; answer with `resume()`.
    """

    def __init__(self, settings: Settings | None = None, *, llm: LLM | None = None, tools: Sequence[Any] = (),
                 embedder: Embedder | None = None, progress: Progress | None = None) -> None:
        from graphs import build_graph

        self.settings = settings or Settings.load()
        self.services: Services = build_services(self.settings, llm, tools, embedder, progress)
        self._graph = build_graph(self.services.checkpointer)
        self._deps = _deps(self.settings, self.services)
        self._lock = threading.Lock()  # SqliteSaver shares one connection: one run at a time per Agent

    @classmethod
    def from_settings(cls, path: str | Path | None = None, **kwargs: Any) -> Agent:
        return cls(Settings.load(Path(path) if path is not None else None), **kwargs)

    # -- running -----------------------------------------------------------------------------------------

    def invoke(self, text: str, *, thread_id: str | None = None, user_id: str = DEFAULT_USER,
               kind: str | None = None) -> Result:
        """Run one request to its end (or to an approval interrupt) and return the Result."""
        return _final(self.stream(text, thread_id=thread_id, user_id=user_id, kind=kind))

    def stream(self, text: str, *, thread_id: str | None = None, user_id: str = DEFAULT_USER,
               kind: str | None = None) -> Iterator[Event]:
        """Run one request, yielding typed events as they happen; the last event is Final(result)."""
        from graphs import new_run

        if not isinstance(text, str):
            raise ConfigError(f"the request must be a string, got {type(text).__name__}")
        _check_id("user_id", user_id)
        thread = thread_id or f"run-{_new_id()}"
        _check_id("thread_id", thread)
        if kind is not None:
            self.services.classifier.kind(kind)  # ConfigError for an unknown kind, before anything runs
        if self.pending(thread):
            raise ConfigError(
                f"thread {thread!r} is waiting for an approval; answer it with resume() before a new request"
            )
        run = new_run(text, _new_id(), user_id, kind)
        yield from self._drive(run, thread)

    def resume(self, thread_id: str, decisions: bool | Mapping[str, bool] | None = None) -> Result:
        """Answer a pending approval, or continue a run that was cut off; see resume_stream()."""
        return _final(self.resume_stream(thread_id, decisions))

    def resume_stream(self, thread_id: str, decisions: bool | Mapping[str, bool] | None = None
                      ) -> Iterator[Event]:
        """Go on with a thread's paused run, yielding its events.

        Waiting for approval: `decisions` is True/False for every pending call, or {call_id: bool}. Only an
        explicit True approves; ids left out are denied; an id that is not pending, or a value that is not a
        bool, is a ConfigError and nothing runs. Each answer goes to its own call by id, whatever the order
        of the calls or how alike they are.

        Cut off mid-run (the process ended during a step): the run goes on from its last checkpoint with
        `decisions` None or True (there is nothing to decide; calls approved before stay approved, and the
        call journal keeps any call from running twice). False is refused: send a new request instead, which
        abandons the cut-off run.
        """
        state = self._graph.get_state(self._config(thread_id))
        yield from self._drive(_resume_input(thread_id, state, decisions), thread_id)

    def pending(self, thread_id: str) -> list[Approval]:
        """The tool calls a paused run of this thread waits on (empty when it waits on nothing)."""
        return _approvals(self._graph.get_state(self._config(thread_id)))

    async def ainvoke(self, text: str, **kwargs: Any) -> Result:
        return await asyncio.to_thread(self.invoke, text, **kwargs)

    async def astream(self, text: str, **kwargs: Any) -> AsyncIterator[Event]:
        """Async iteration over stream(): the run goes on in a worker thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for event in self.stream(text, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as e:  # handed to the consumer, re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, pump)
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        await worker

    # -- teaching, memory, documents -----------------------------------------------------------------

    def teach(self, kind: str, examples: Sequence[str], description: str | None = None) -> None:
        """Define a new task kind (or add examples to one) from a few examples; persisted."""
        self.services.classifier.teach(kind, list(examples), description=description)

    def ingest(self, paths: Sequence[str | Path], progress: Progress | None = None) -> Any:
        return self.services.documents.ingest([Path(p) for p in paths], progress=progress)

    def feedback(self, run_id: str, rating: str, note: str | None = None) -> bool:
        """Mark a run's episode good or bad ("good"/"bad"); good episodes are recalled as exemplars."""
        outcomes = {"good": "success", "bad": "failure"}
        if rating not in outcomes:
            raise ConfigError(f"rating must be 'good' or 'bad', got {rating!r}")
        return self.services.episodes.set_feedback(run_id, outcomes[rating], note)

    def history(self, thread_id: str) -> list[dict[str, str]]:
        values = self._graph.get_state(self._config(thread_id)).values
        return list(values.get("history", []))

    def close(self) -> None:
        self.services.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _config(self, thread_id: str) -> RunnableConfig:
        # Each act step takes up to 4 graph steps (act, check_tool_calls, call_tools, check_tool_results).
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 25 + 8 * self.settings.agent.max_steps}

    def _drive(self, graph_input: Any, thread_id: str) -> Iterator[Event]:
        config = self._config(thread_id)
        with self._lock:
            parts = self._graph.stream(graph_input, config, context=self._deps, stream_mode=["custom"],
                                       durability="sync")
            for mode, chunk in parts:
                if mode == "custom" and isinstance(chunk, dict):
                    event = from_graph(chunk)
                    if event is not None:
                        yield event
            state = self._graph.get_state(config)
        pending = _approvals(state)
        if pending:
            yield InterruptEvent(thread_id, tuple(pending))
        yield Final(Result.from_state(dict(state.values), thread_id, pending))


def _deps(settings: Settings, s: Services) -> Any:
    from graphs import Deps

    return Deps(settings=settings, llm=s.llm, classifier=s.classifier, broker=s.broker, guards=s.guards,
                adapters=s.adapters, retriever=s.documents, episodes=s.episodes, journal=s.journal)


def _final(events: Iterator[Event]) -> Result:
    final: Result | None = None
    for event in events:
        if isinstance(event, Final):
            final = event.result
    if final is None:  # a run always ends with Final; this guards against a broken graph
        raise AgentError("the run ended without a result")
    return final


def _resume_input(thread_id: str, state: Any, decisions: bool | Mapping[str, bool] | None) -> Any:
    """The graph input that resumes `state`: every pending interrupt answered by its own id (LangGraph
    then never guesses which interrupt a value belongs to), or None to continue a cut-off run."""
    from langgraph.types import Command

    if state.interrupts:
        pending = [call["id"] for intr in state.interrupts for call in intr.value.get("calls", [])]
        answers = _decisions(thread_id, pending, decisions)
        return Command(resume={intr.id: {call["id"]: answers[call["id"]] for call in intr.value.get("calls", [])}
                               for intr in state.interrupts})
    if state.next:
        if decisions is not None and decisions is not True:
            raise ConfigError(f"thread {thread_id!r} has no pending approval: its last run was cut off before "
                              "it finished. Resume it with True (yes) to continue, or send a new request.")
        return None
    raise ConfigError(f"thread {thread_id!r} has no pending approval to resume")


def _decisions(thread_id: str, pending: list[str], decisions: Any) -> dict[str, bool]:
    """{call id: approved} for every pending call, from True/False or a mapping of some call ids to bools."""
    if isinstance(decisions, bool):
        return {call_id: decisions for call_id in pending}
    if not isinstance(decisions, Mapping):
        raise ConfigError(f"thread {thread_id!r} waits for approval of calls {pending}: answer with True/False "
                          f"or {{call_id: bool}}, got {decisions!r}")
    unknown = sorted(str(k) for k in decisions if k not in pending)
    if unknown:
        raise ConfigError(f"thread {thread_id!r}: {unknown} are not pending calls; the pending calls are "
                          f"{pending}. Nothing ran.")
    odd = {k: v for k, v in decisions.items() if not isinstance(v, bool)}
    if odd:
        raise ConfigError(f"thread {thread_id!r}: approvals must be True or False, got {odd}. Nothing ran.")
    return {call_id: decisions.get(call_id, False) for call_id in pending}


def _approvals(state: Any) -> list[Approval]:
    """The calls a graph state snapshot's interrupts wait on."""
    return [Approval(call["id"], call["name"], call.get("arguments", {}), call["reason"])
            for intr in state.interrupts for call in intr.value.get("calls", [])]


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ConfigError(f"{name} must be a non-empty string of at most 200 characters, got {value!r}")
