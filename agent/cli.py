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

    _add_adapter_commands(sub.add_parser("adapters", help="LoRA adapters: list, show, remove, train"))

    memory = sub.add_parser("memory", help="episodic memory")
    msub = memory.add_subparsers(dest="action", required=True)
    mlist = msub.add_parser("list", help="list episodes")
    mlist.add_argument("--user", help="only this user's episodes")
    mlist.add_argument("--json", action="store_true")
    forget = msub.add_parser("forget", help="delete episodes")
    forget.add_argument("--user", help="whose episodes (default: 'default')")
    forget.add_argument("--all", action="store_true", help="every user's episodes")
    export = msub.add_parser("export", help="preference pairs from runs rated good and bad, for DPO training")
    export.add_argument("--format", choices=["dpo"], default="dpo",
                        help='dpo: one {"prompt", "chosen", "rejected", "kind"} object per line')
    export.add_argument("--user", help="only this user's runs (default: every user; pairs never mix users)")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument("--min-similarity", type=float, default=0.9,
                        help="how alike two requests must be (cosine) to pair their runs (default 0.9)")


def _add_adapter_commands(adapters: argparse.ArgumentParser) -> None:
    asub = adapters.add_subparsers(dest="action", required=True)
    alist = asub.add_parser("list", help="list adapters, their kinds and status")
    alist.add_argument("--json", action="store_true")
    show = asub.add_parser("show", help="print an adapter's metadata (base model, data, metrics)")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    remove = asub.add_parser("remove", help="delete an adapter")
    remove.add_argument("name")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    train = asub.add_parser("train", help="train a LoRA adapter on the base model from a JSONL file")
    train.add_argument("name")
    data = train.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help='chat examples, one {"messages": [...], "tools": [...]} per line')
    data.add_argument("--dpo", type=Path, help='preference pairs, one {"prompt", "chosen", "rejected"} per line')
    train.add_argument("--kind", action="append", default=[], help="a task kind that uses it (repeatable)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, help="learning rate (default 1e-3; 2e-3 with --dpo)")
    train.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha is twice the rank)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--holdout", type=float, default=0.2, help="share of the rows held out to measure")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--beta", type=float, default=0.1, help="DPO: strength of the pull from the reference")
    train.add_argument("--nll-weight", type=float, default=1.0, help="DPO: weight of the chosen reply's own loss")
    train.add_argument("--general-threshold", type=float, default=25.0, metavar="PCT",
                       help="warn when the adapter raises the general-set loss by more than PCT percent")
    train.add_argument("--from", dest="from_adapter", metavar="NAME", help="start from this adapter's weights")
    train.add_argument("--force", action="store_true", help="replace an existing adapter of that name")


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
