"""The `metagent` command. Each subcommand builds only the services it needs (see agent/services.py).

Exit codes: 0 ok, 1 the run ended blocked or out of budget, 2 a usage or configuration error (the message
says what to fix), 3 the run waits for an approval, 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.errors import AgentError

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_PENDING, EXIT_CTRL_C = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metagent", description="A local-first agent runtime.")
    p.add_argument("--settings", type=Path, help="settings TOML file (default: <data dir>/settings.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    _add_knowledge_commands(sub)
    _add_tool_commands(sub)
    sub.add_parser("doctor", help="report versions, device, model, data directory and sandbox mode")
    return p


def _add_run_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chat = sub.add_parser("chat", help="interactive chat (streams tokens; /help for commands)")
    chat.add_argument("--thread", help="conversation to resume or start (default: a new one)")
    chat.add_argument("--user", default="default", help="user id for episodic memory")

    run = sub.add_parser("run", help="run one request and print the result")
    run.add_argument("text", help="the request")
    run.add_argument("--thread", help="conversation to continue")
    run.add_argument("--user", default="default")
    run.add_argument("--kind", help="skip the classifier and use this task kind")
    run.add_argument("--json", action="store_true", help="print the Result as one JSON object")
    run.add_argument("--approve", choices=["ask", "yes", "no"], default="ask",
                     help="answer to approvals: ask (when interactive), yes or no")

    resume = sub.add_parser("resume", help="answer a pending approval of a thread")
    resume.add_argument("thread")
    resume.add_argument("decision", choices=["yes", "no"])
    resume.add_argument("--json", action="store_true")


def _add_knowledge_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser("ingest", help="add .md/.txt/.rst/.py/.html files or folders to the document store")
    ingest.add_argument("paths", nargs="+")

    teach = sub.add_parser("teach", help="teach a task kind from examples")
    teach.add_argument("kind")
    teach.add_argument("examples", nargs="+")
    teach.add_argument("--description", help="one line saying what the kind is (new kinds)")
    sub.add_parser("kinds", help="list task kinds")

    adapters = sub.add_parser("adapters", help="LoRA adapters")
    adapters.add_argument("action", choices=["list"])

    memory = sub.add_parser("memory", help="episodic memory")
    msub = memory.add_subparsers(dest="action", required=True)
    mlist = msub.add_parser("list", help="list episodes")
    mlist.add_argument("--user", help="only this user's episodes")
    mlist.add_argument("--json", action="store_true")
    forget = msub.add_parser("forget", help="delete episodes")
    forget.add_argument("--user", help="whose episodes (default: 'default')")
    forget.add_argument("--all", action="store_true", help="every user's episodes")


def _add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tools = sub.add_parser("tools", help="list or try tools")
    tsub = tools.add_subparsers(dest="action", required=True)
    tlist = tsub.add_parser("list", help="list tools")
    tlist.add_argument("--json", action="store_true")
    tcall = tsub.add_parser("call", help="call a tool: metagent tools call NAME '{\"arg\": 1}'")
    tcall.add_argument("name")
    tcall.add_argument("args", nargs="?", default="{}", help="JSON object of arguments")
    tcall.add_argument("--user", default="default")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.settings)
        return dispatch(args, settings)
    except AgentError as e:
        print(f"metagent: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nmetagent: interrupted", file=sys.stderr)
        return EXIT_CTRL_C


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from agent import commands

    handlers: dict[str, Any] = {
        "chat": commands.chat, "run": commands.run, "resume": commands.resume, "ingest": commands.ingest,
        "teach": commands.teach, "kinds": commands.kinds, "adapters": commands.adapters,
        "memory": commands.memory, "tools": commands.tools, "doctor": commands.doctor,
    }
    result: int = handlers[args.command](args, settings)
    return result


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=None, default=str))


if __name__ == "__main__":
    sys.exit(main())
