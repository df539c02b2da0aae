"""The subcommands behind `metagent` (parsing lives in agent/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agent.config import Settings
from agent.errors import ConfigError, StoreLockedError
from agent.result import Result
from agent.services import make_documents, make_embedder, make_episodes, make_registry, open_store

EXIT_OK, EXIT_RUN_FAILED, EXIT_PENDING = 0, 1, 3
err = Console(stderr=True)
out = Console()


def _agent(settings: Settings) -> Any:
    from agent.api import Agent

    with err.status("loading the model...") as status:
        return Agent(settings, progress=lambda msg: status.update(f"{msg}..."))


def chat(args: argparse.Namespace, settings: Settings) -> int:
    from agent.repl import Repl

    agent = _agent(settings)
    try:
        Repl(agent, thread_id=args.thread, user_id=args.user).loop()
    finally:
        agent.close()
    return EXIT_OK


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind is not None:  # checked before the model loads, not after
        from agent.classifier import load_kinds

        known = [k.name for k in load_kinds(settings.kinds_file)]
        if args.kind not in known:
            raise ConfigError(f"unknown task kind {args.kind!r}; known kinds: {', '.join(known)}")
    agent = _agent(settings)
    try:
        result = agent.invoke(args.text, thread_id=args.thread, user_id=args.user, kind=args.kind)
        while result.interrupted and (decision := _decide(args.approve, result)) is not None:
            result = agent.resume(result.thread_id, decision)
    finally:
        agent.close()
    return _report(result, args.json)


def resume(args: argparse.Namespace, settings: Settings) -> int:
    _check_pending(settings, args.thread)  # before the model loads
    agent = _agent(settings)
    try:
        result = agent.resume(args.thread, args.decision == "yes")
    finally:
        agent.close()
    return _report(result, args.json)


def _check_pending(settings: Settings, thread: str) -> None:
    from agent.services import open_checkpointer
    from graphs import build_graph

    saver = open_checkpointer(settings)
    try:
        state = build_graph(saver).get_state({"configurable": {"thread_id": thread}})
    finally:
        saver.conn.close()
    if not state.interrupts and not state.next:  # state.next alone: a run cut off mid-way, resumed with yes
        raise ConfigError(f"thread {thread!r} has no pending approval to resume")


def _decide(mode: str, result: Result) -> bool | None:
    if mode != "ask":
        return mode == "yes"
    if not sys.stdin.isatty():
        return None
    for a in result.pending:
        err.print(f"[yellow]approval needed[/]: {a.name}({json.dumps(a.arguments)}) — {a.reason}")
    return input("allow? [y/N] ").strip().lower() in ("y", "yes")


def _report(result: Result, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
    else:
        out.print(result.answer or "")
        err.print(f"[dim]kind={result.task_kind} adapter={result.adapter} status={result.status} "
                  f"tokens={result.usage} run={result.run_id} thread={result.thread_id}[/]")
        for call in result.tool_calls:
            state = "ok" if call["ok"] else f"error: {call['error']}"
            err.print(f"[dim]tool {call['name']}({json.dumps(call['arguments'])}) -> {state}[/]")
    if result.interrupted:
        err.print(f"waiting for approval: metagent resume {result.thread_id} yes|no")
        return EXIT_PENDING
    return EXIT_OK if result.status == "done" else EXIT_RUN_FAILED


def ingest(args: argparse.Namespace, settings: Settings) -> int:

    if any(not p.strip() for p in args.paths):
        raise ConfigError("an empty path was given; name the files or folders to ingest (use . for this folder)")
    paths = [Path(p).expanduser() for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(missing)}")
    store = open_store(settings)
    try:
        docs = make_documents(settings, store, make_embedder())
        with err.status("ingesting...") as status:
            report = docs.ingest(paths, progress=lambda msg: status.update(msg))
        out.print(report.summary())
        for skipped in report.skipped:
            err.print(f"[dim]skipped {skipped.path}: {skipped.reason}[/]")
    finally:
        store.close()
    return EXIT_OK


def teach(args: argparse.Namespace, settings: Settings) -> int:
    from agent.services import make_classifier

    classifier = make_classifier(settings, make_embedder(), None)
    kind = classifier.teach(args.kind, args.examples, description=args.description)
    out.print(f"kind {kind.name!r} now has {len(kind.examples)} examples (saved to {settings.kinds_file})")
    return EXIT_OK


def kinds(args: argparse.Namespace, settings: Settings) -> int:
    from agent.classifier import load_kinds

    table = Table("kind", "examples", "retrieve", "plan", "tools", "description")
    for k in load_kinds(settings.kinds_file):
        tools = k.tools if isinstance(k.tools, bool) else ",".join(k.tools)
        table.add_row(k.name, str(len(k.examples)), str(k.retrieve), str(k.plan), str(tools), k.description)
    out.print(table)
    return EXIT_OK


def adapters(args: argparse.Namespace, settings: Settings) -> int:
    from agent.adapter_commands import adapters as run_adapters

    return run_adapters(args, settings)


def memory(args: argparse.Namespace, settings: Settings) -> int:

    store = open_store(settings)
    try:
        embedder = make_embedder()
        episodes = make_episodes(settings, store, embedder)
        if args.action == "list":
            return _list_episodes(episodes.list(args.user), args.json)
        if args.action == "export":
            return _export_preferences(episodes.rated(args.user), embedder, settings, args)
        if args.all and args.user:
            raise ConfigError("use either --user U or --all, not both")
        user = "default" if args.user is None else args.user
        count = episodes.forget(None if args.all else user)
        out.print(f"forgot {count} episode(s)" + ("" if args.all else f" of user {user!r}"))
    finally:
        store.close()
    return EXIT_OK


def _export_preferences(rated: list[Any], embedder: Any, settings: Settings, args: argparse.Namespace) -> int:
    """`memory export --format dpo`: (prompt, chosen, rejected) pairs from rated runs (memory/export.py)."""
    from memory.export import preference_pairs, write_jsonl

    pairs = preference_pairs(rated, embedder, settings.agent.system_prompt, args.min_similarity)
    if not pairs:
        good = sum(r.rating == "good" for r in rated)
        who = f"user {args.user!r} has" if args.user else "all users have"
        err.print(f"no preference pairs to export: {who} {good} run(s) rated good and {len(rated) - good} rated "
                  "bad, and a pair needs a good and a bad run of the same kind for the same request. Rate answers "
                  "with /good and /bad in `metagent chat`, or Agent.feedback(run_id, 'good' or 'bad').")
        return EXIT_OK
    if args.out is None:
        write_jsonl(pairs, sys.stdout)
        return EXIT_OK
    path = Path(args.out).expanduser()
    try:
        with path.open("w", encoding="utf-8") as file:
            write_jsonl(pairs, file)
    except OSError as e:
        raise ConfigError(f"cannot write the preference pairs to {path}: {e}") from e
    err.print(f"wrote {len(pairs)} preference pair(s) from {len(rated)} rated run(s) to {path}; train on them "
              f"with `metagent adapters train NAME --dpo {path}`")
    return EXIT_OK


def _list_episodes(episodes: list[Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps([e.to_dict() for e in episodes], ensure_ascii=False, default=str))
        return EXIT_OK
    table = Table("id", "user", "kind", "outcome", "request", "answer")
    for e in episodes:
        table.add_row(e.id, e.user_id, e.task_kind, e.outcome, e.request[:60], e.answer[:60])
    out.print(table if episodes else "no episodes")
    return EXIT_OK


def tools(args: argparse.Namespace, settings: Settings) -> int:

    store = None
    try:
        store = open_store(settings, wait_s=2.0)
    except StoreLockedError as e:
        err.print(f"[yellow]note[/]: search_docs and recall are unavailable: {e}")
    try:
        embedder = make_embedder()
        retriever = make_documents(settings, store, embedder) if store else None
        episodes = make_episodes(settings, store, embedder) if store else None
        registry = make_registry((), settings.tools.modules, retriever=retriever, episodes=episodes,
                                 mcp_servers=settings.mcp.servers)
        try:
            if args.action == "list":
                return _list_tools(registry, args.json)
            return _call_tool(registry, settings, args)
        finally:
            registry.close()  # stops the MCP servers
    finally:
        if store is not None:
            store.close()


def _list_tools(registry: Any, as_json: bool) -> int:
    from tools.registry import tool_source

    rows = [(t.spec(), tool_source(t)) for t in registry]
    if as_json:
        print(json.dumps([{"name": s.name, "source": source, "description": s.description,
                           "parameters": s.parameters} for s, source in rows], ensure_ascii=False))
        return EXIT_OK
    table = Table("tool", "source", "description", "arguments")
    for s, source in rows:
        table.add_row(s.name, source, s.description, ", ".join(s.parameters.get("properties", {})))
    out.print(table)
    return EXIT_OK


def _call_tool(registry: Any, settings: Settings, args: argparse.Namespace) -> int:
    from agent.services import make_broker
    from agent.types import ToolCall

    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as e:
        raise ConfigError(f"arguments must be a JSON object, e.g. '{{\"expression\": \"2+2\"}}': {e}") from e
    if not isinstance(arguments, dict):
        raise ConfigError(f"arguments must be a JSON object, got {args.args!r}")
    result = make_broker(settings, registry).call(ToolCall("cli", args.name, arguments), user_id=args.user)
    print(json.dumps({"ok": result.ok, "output": result.output, "error": result.error}, ensure_ascii=False))
    return EXIT_OK if result.ok else EXIT_RUN_FAILED


def doctor(args: argparse.Namespace, settings: Settings) -> int:
    from agent.doctor import report

    rows = report(settings)
    width = max(len(k) for k in rows)
    for key, value in rows.items():  # plain lines: greppable, never wrapped
        if isinstance(value, list):
            value = "; ".join(map(str, value))
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    return EXIT_OK
