"""The call journal: every approved tool call runs at most once per idempotency key, across restarts.

The graph gives each call a key (run id / step / position) and stores it in the checkpoint before anything
runs. `JournaledCalls.call_many` then, for each call:

    key never seen            -> record `started`, run it through the broker, record the result
    key with a result         -> return the recorded result; the tool does not run again
    key `started`, no result  -> the process died (or was stopped) during the call. A call that may have
                                 done something (policy side_effects, or it needed approval) is NOT run
                                 again: the model is told it was interrupted and not repeated. A pure call
                                 (side_effects False and no approval) is run again.

So side effects happen at most once, and pure calls at least once. The journal is SQLite in the data directory
(`<home>/tool_calls.sqlite`, beside the checkpoints), opened in WAL mode with a busy timeout and synchronous
writes, so calls running in the broker's threads and several Agents (or processes) sharing the file see one
another's claims; a claim is a single `INSERT OR IGNORE`, so exactly one claimant wins a key.

What this does not protect against: an effect that lands after `started` is written but before the result
is (the process dies in between) is reported as interrupted although it happened; the model is told that it
may have taken effect. A tool whose policy says side_effects=False but writes anyway may write twice after a
crash: policies are trusted. Effects outside the broker's view (a remote service that retries) are not covered.
Rows older than RETENTION_S are pruned when the journal opens: a run cut off longer ago than that and then
continued would run its unfinished pure calls and report the rest as interrupted, as above.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from agent.errors import AgentError, ConfigError
from agent.types import ToolCall, ToolResult
from tools.broker import Broker

RETENTION_S = 30 * 24 * 3600.0
BUSY_TIMEOUT_MS = 10_000
INTERRUPTED = ("this call was interrupted by a restart and was not repeated (it may or may not have taken "
               "effect): check its effect before calling it again")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_calls (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    owner TEXT NOT NULL,
    started_at REAL NOT NULL,
    result TEXT,
    ended_at REAL
)
"""


@dataclass(frozen=True)
class Claim:
    """What the journal knows of a key: `fresh` (this claimant just recorded `started`; run the call),
    else the recorded `result`, or neither (started earlier and never finished)."""

    fresh: bool
    result: ToolResult | None = None


class CallJournal:
    """The SQLite record of calls by idempotency key. Thread-safe; several instances may share a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                         timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # `started` must be on disk before the call runs
            self._conn.execute(_SCHEMA)
            self._conn.execute("DELETE FROM tool_calls WHERE started_at < ?", (time.time() - RETENTION_S,))
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the tool call journal {path}: {e}; check the data directory") from e

    def claim(self, key: str, call: ToolCall) -> Claim:
        """Record `started` for a new key, or report what an earlier claim left."""
        arguments = json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)
        owner = uuid.uuid4().hex
        with self._lock:
            inserted = self._conn.execute(
                "INSERT OR IGNORE INTO tool_calls (key, name, arguments, owner, started_at) VALUES (?, ?, ?, ?, ?)",
                (key, call.name, arguments, owner, time.time()),
            ).rowcount
            row = self._conn.execute("SELECT name, arguments, result FROM tool_calls WHERE key = ?",
                                     (key,)).fetchone()
        if inserted == 1:
            return Claim(fresh=True)
        if (row[0], row[1]) != (call.name, arguments):
            # Keys come from the checkpoint; a different call under one key is a bug in the key's making.
            raise AgentError(f"idempotency key {key!r} was recorded for {row[0]}({row[1]}), "
                             f"not for {call.name}({arguments})")
        return Claim(fresh=False, result=_result(row[2]) if row[2] is not None else None)

    def finish(self, key: str, result: ToolResult) -> None:
        """Record a call's result under its key (a later claim returns it instead of running the call)."""
        with self._lock:
            self._conn.execute("UPDATE tool_calls SET result = ?, ended_at = ? WHERE key = ?",
                               (json.dumps(result.to_dict(), ensure_ascii=False), time.time(), key))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class JournaledCalls:
    """Runs a step's calls through the broker, concurrently (at most [tools] max_parallel at once, each
    under its own policy's limits), at most once per key; results in call order."""

    def __init__(self, broker: Broker, journal: CallJournal) -> None:
        self.broker = broker
        self.journal = journal

    def call_many(self, calls: Sequence[ToolCall], keys: Sequence[str], user_id: str = "default"
                  ) -> list[ToolResult]:
        if len(calls) != len(keys) or len(set(keys)) != len(keys):
            raise AgentError(f"need one distinct idempotency key per call; got {len(keys)} keys "
                             f"({len(set(keys))} distinct) for {len(calls)} calls")
        if len(calls) <= 1:
            return [self.call_once(c, k, user_id) for c, k in zip(calls, keys, strict=True)]
        workers = min(self.broker.settings.max_parallel, len(calls))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metagent-call") as pool:
            return list(pool.map(self.call_once, calls, keys, repeat(user_id)))

    def call_once(self, call: ToolCall, key: str, user_id: str = "default") -> ToolResult:
        """One call under its key. An exception that is not the tool's (KeyboardInterrupt, SystemExit: the
        process is going down) leaves the key `started`, as a crash would."""
        claim = self.journal.claim(key, call)
        if claim.result is not None:
            return claim.result
        if not claim.fresh and not self.repeatable(call):
            return ToolResult(call.id, call.name, False, "", error=INTERRUPTED)
        result = self.broker.call(call, user_id)
        self.journal.finish(key, result)
        return result

    def repeatable(self, call: ToolCall) -> bool:
        """A pure call: running it twice does no harm (the broker's policy for it has side_effects False, and
        it needs no approval)."""
        found = self.broker.registry.get(call.name)
        if found is None:
            return False
        return not self.broker.policy(found).side_effects and not self.broker.needs_approval(call)

    def close(self) -> None:
        self.journal.close()


def _result(text: str) -> ToolResult:
    data = json.loads(text)
    return ToolResult(data["call_id"], data["name"], bool(data["ok"]), data["output"], data.get("error"),
                      float(data.get("elapsed_s", 0.0)))
