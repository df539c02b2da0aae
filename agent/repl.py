"""`metagent chat`: a streaming chat with slash commands, rendered with rich."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table

from agent.errors import AgentError
from agent.events import (
    Event,
    Final,
    InterruptEvent,
    NodeEnd,
    NodeStart,
    Plan,
    TaskKind,
    Token,
    ToolCallEvent,
    ToolResultEvent,
    VerdictEvent,
)
from agent.result import Result

HELP = """\
/help              this help
/tools             the tools the agent can call
/docs              ingested documents (add more with `metagent ingest PATH`)
/memory            your recorded episodes
/thread [NAME]     show the thread, or switch to (or start) thread NAME
/trace             the last run: kind, adapter, timings, tool calls, verdicts, tokens
/good, /bad [note] rate the last answer (good answers are recalled as examples)
/quit              leave (also Ctrl-D)
"""


class Repl:
    def __init__(self, agent: Any, thread_id: str | None = None, user_id: str = "default",
                 console: Console | None = None, read: Callable[[str], str] = input) -> None:
        self.agent = agent
        self.thread = thread_id or f"chat-{uuid.uuid4().hex[:8]}"
        self.user = user_id
        self.console = console or Console()
        self.read = read
        self.last: Result | None = None
        self._history_file = agent.settings.home / "repl_history"

    def loop(self) -> None:
        self._load_history()
        resumed = len(self.agent.history(self.thread)) // 2
        note = f", resumed with {resumed} earlier turn(s)" if resumed else ""
        self.console.print(f"[bold]metagent[/] chat — thread [cyan]{self.thread}[/]{note}. /help for commands.")
        if self.agent.pending(self.thread):
            self._render(self._approve_stream(self.agent.pending(self.thread)))
        while True:
            try:
                line = self.read("you> ").strip()
            except EOFError:
                self.console.print()
                break
            except KeyboardInterrupt:
                self.console.print("\n(Ctrl-D or /quit to leave)")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    break
                continue
            self.ask(line)
        self._save_history()

    def ask(self, text: str) -> None:
        try:
            self._render(self.agent.stream(text, thread_id=self.thread, user_id=self.user))
        except AgentError as e:
            self.console.print(f"[red]error:[/] {e}")
        except KeyboardInterrupt:
            self.console.print("\n[yellow]stopped[/]")

    def _render(self, events: Iterator[Event]) -> None:
        answer = ""
        live: Live | None = None
        for event in events:
            if isinstance(event, Token):
                answer += event.text
                if live is None:
                    live = Live(Markdown(answer), console=self.console, refresh_per_second=12)
                    live.start()
                live.update(Markdown(answer))
                continue
            if isinstance(event, (NodeStart, NodeEnd)):
                continue  # nothing to show; keep the streamed answer live until the Final replaces it
            if live is not None and not isinstance(event, Final):
                live.stop()
                live, answer = None, ""
            if isinstance(event, Final):
                self._finish(event.result, live)
                live = None
            elif isinstance(event, InterruptEvent):
                continue  # the Final that follows carries the pending calls
            else:
                self._show(event)
        if live is not None:
            live.stop()

    def _finish(self, result: Result, live: Live | None) -> None:
        self.last = result
        if result.interrupted:
            if live is not None:
                live.stop()
            self._render(self._approve_stream(result.pending))
            return
        if live is not None:
            live.update(Markdown(result.answer))
            live.stop()
        else:
            self.console.print(Markdown(result.answer))
        if result.status != "done":
            self.console.print(f"[yellow]({result.status})[/]")

    def _approve_stream(self, pending: list[Any]) -> Iterator[Event]:
        for a in pending:
            self.console.print(Panel(f"{a.name}({json.dumps(a.arguments, ensure_ascii=False)})\n{a.reason}",
                                     title="approval needed", border_style="yellow"))
        try:
            yes = self.read("allow? [y/N] ").strip().lower() in ("y", "yes")
        except (EOFError, KeyboardInterrupt):
            yes = False
        return self.agent.resume_stream(self.thread, yes)  # type: ignore[no-any-return]

    def _show(self, event: Event) -> None:
        c = self.console
        if isinstance(event, TaskKind):
            c.print(f"[dim]kind: {event.kind} ({event.method}, {event.confidence:.2f})[/]")
        elif isinstance(event, Plan):
            c.print(Panel(event.plan, title="plan", border_style="dim"))
        elif isinstance(event, ToolCallEvent):
            c.print(f"[cyan]→ {event.name}[/]({json.dumps(event.arguments, ensure_ascii=False)})")
        elif isinstance(event, ToolResultEvent):
            body = event.output if event.ok else f"error: {event.error}"
            c.print(f"[{'green' if event.ok else 'red'}]← {event.name}[/]: {body[:400]}")
        elif isinstance(event, VerdictEvent):
            c.print(f"[yellow]guard {event.checkpoint}: {event.action} — {event.reason}[/]")

    # -- slash commands ----------------------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        name, _, arg = line[1:].partition(" ")
        handlers: dict[str, Callable[[str], str | None]] = {
            "help": lambda _a: self.console.print(HELP), "quit": lambda _a: "quit", "exit": lambda _a: "quit",
            "tools": self._tools, "docs": self._docs, "memory": self._memory, "thread": self._thread,
            "trace": self._trace, "good": lambda a: self._rate("good", a), "bad": lambda a: self._rate("bad", a),
        }
        handler = handlers.get(name)
        if handler is None:
            self.console.print(f"unknown command /{name}; /help lists them")
            return None
        try:
            return handler(arg.strip())
        except AgentError as e:
            self.console.print(f"[red]error:[/] {e}")
            return None

    def _tools(self, _arg: str) -> None:
        table = Table("tool", "description")
        for spec in self.agent.services.broker.specs():
            table.add_row(spec.name, spec.description)
        self.console.print(table)

    def _docs(self, _arg: str) -> None:
        sources = self.agent.services.documents.sources()
        if not sources:
            self.console.print("no documents yet: `metagent ingest PATH` in another shell after /quit")
        for s in sources:
            self.console.print(f"- {s}")

    def _memory(self, _arg: str) -> None:
        episodes = self.agent.services.episodes.list(self.user)
        if not episodes:
            self.console.print("no episodes yet")
        for e in episodes[:20]:
            self.console.print(f"- [{e.outcome}] ({e.task_kind}) {e.request[:70]} → {e.answer[:70]}")

    def _thread(self, arg: str) -> None:
        if arg:
            self.thread = arg
            turns = len(self.agent.history(arg)) // 2
            self.console.print(f"thread [cyan]{arg}[/] ({turns} earlier turn(s))")
        else:
            self.console.print(f"thread [cyan]{self.thread}[/] (start again with `metagent chat --thread "
                               f"{self.thread}`)")

    def _trace(self, _arg: str) -> None:
        if self.last is None:
            self.console.print("nothing run yet")
            return
        r = self.last
        self.console.print(f"run {r.run_id}: kind={r.task_kind} adapter={r.adapter} status={r.status} "
                           f"tokens={r.usage}")
        self.console.print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items()))
        for call in r.tool_calls:
            self.console.print(f"  {call['name']}({json.dumps(call['arguments'])}) ok={call['ok']} "
                               f"{(call['output'] or call['error'] or '')[:200]}")
        for v in r.verdicts:
            if v["action"] != "allow":
                self.console.print(f"  guard {v['checkpoint']}: {v['action']} — {v['reason']}")

    def _rate(self, rating: str, note: str) -> None:
        if self.last is None:
            self.console.print("nothing to rate yet")
            return
        found = self.agent.feedback(self.last.run_id, rating, note or None)
        self.console.print("thanks, noted" if found else "that run was not recorded as an episode")

    def _load_history(self) -> None:
        try:
            import readline

            readline.read_history_file(self._history_file)
        except (ImportError, OSError):
            pass

    def _save_history(self) -> None:
        try:
            import readline

            self._history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.set_history_length(1000)
            readline.write_history_file(self._history_file)
        except (ImportError, OSError):
            pass
