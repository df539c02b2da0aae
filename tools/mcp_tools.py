"""MCP servers (stdio) as a tool source, configured in the settings file:

    [mcp.servers.files]
    command = ["python", "-m", "some_server"]
    env = {KEY = "value"}       # added to an allowlist of the host's variables (ENV_ALLOWLIST); nothing else
    timeout_s = 30              # per call; start_timeout_s bounds start-up and the tool listing
    approval = "side_effects"   # ask first for tools the server does not mark readOnlyHint (or never/always)
    tools = ["read", "list"]    # optional allowlist of the server's tools
    prefix = "files_"           # optional, prepended to the tool names

`register_servers` starts each server when the registry is built, lists its tools and registers one McpTool
per tool; the broker calls them like any other tool (same validation, policy, timeout and output cap).
The registry's `close()` stops the servers; a server left open is stopped when it is garbage-collected or
when the interpreter exits.

Threads: the mcp client is async (anyio) while the broker is synchronous and calls tools from worker threads.
Each McpServer owns a daemon thread running an asyncio loop, in which one task holds the stdio transport and
the ClientSession for the server's lifetime; calls are submitted to that loop and waited for with a timeout.

What this protects: the server gets an allowlisted environment, not the agent's; its tool names,
descriptions and schemas are cleaned and capped before they reach the prompt, and so are its outputs and
error messages (tools/foreign.py); at most MAX_TOOLS tools per server; only the tail of its stderr is kept;
on close the mcp client closes its stdin, then kills its process group (SIGTERM, then SIGKILL).

What it does NOT protect against: the server runs unsandboxed with the user's rights (files, network,
processes of its own that leave its process group); its annotations are its own claims (a hostile server can
say readOnlyHint, so use approval = "always" for servers you do not trust); the transport reads each
message whole before anything is capped, so a server sending a gigabyte line costs that memory; if the agent
itself is killed with SIGKILL the server only learns it from the end of its stdin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import sys
import threading
import weakref
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.config import McpServerSettings
from agent.errors import ConfigError
from agent.types import ToolSpec
from tools.base import ToolContext, ToolError, ToolPolicy
from tools.base import clean_schema as drop_titles
from tools.foreign import (
    clean_description,
    clean_name,
    clean_output,
    clean_schema,
    json_args_model,
    strip_invisible,
)
from tools.registry import ToolRegistry

ENV_ALLOWLIST = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
                 "TZ", "TMPDIR")
MAX_TOOLS = 64  # per server: each tool's spec goes into every prompt
STDERR_TAIL_BYTES = 4096
# mcp's own shutdown waits 2 s for the server to exit after stdin closes, 2 s after SIGTERM, then kills.
CLOSE_TIMEOUT_S = 10.0
CALL_MARGIN_S = 0.5  # the request carries the timeout; this only covers the hop between threads
PID_MARKER = b"metagent-mcp-pid "
# Started first in the server's new session: reports its pid (the process group id) on stderr, then becomes
# the server with exec. mcp kills the group only when the server outlives its grace period; knowing the group
# lets close() kill helpers a server that exited by itself left behind.
LAUNCHER = """import os, sys
os.write(2, b"metagent-mcp-pid %d\\n" % os.getpid())
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    os.write(2, ("cannot run %r: %s\\n" % (sys.argv[1], e.strerror)).encode())
    os._exit(127)
"""


def register_servers(registry: ToolRegistry, servers: Mapping[str, McpServerSettings]) -> list[McpServer]:
    """Start each server, register its tools, and have `registry.close()` stop it. On a ConfigError the
    servers started so far stay registered for closing: the caller closes the registry."""
    started = []
    for name, settings in servers.items():
        server = McpServer(name, settings)
        registry.on_close(server.close)
        server.start()
        started.append(server)
        for found in server.tools():
            registry.register(found)
    return started


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: the allowlisted variables the agent has, plus the configured ones."""
    return {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ} | dict(extra)


@dataclass
class _Runtime:
    """One server's loop thread, session and process. Kept apart from McpServer so that the serving task and
    the finalizer can hold it without keeping the McpServer alive (an unreferenced server is stopped)."""

    stderr: _StderrTail
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    session: Any = None  # the ClientSession while the server is up
    scope: Any = None  # the anyio CancelScope around the transport, set in the loop thread
    closing: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    async def serve(self, params: Any, ready: concurrent.futures.Future[list[Any]]) -> None:
        """The server's lifetime: spawn, handshake, list the tools, then hold the session until cancelled."""
        import anyio
        from mcp import ClientSession, stdio_client

        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self.closing:
                    scope.cancel()
                async with stdio_client(params, errlog=self.stderr.writer) as (read, write):
                    self.stderr.close_writer()  # the child holds its own copy; EOF now means it exited
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        listed = await _list_tools(session)
                        self.session = session
                        ready.set_result(listed)
                        await anyio.sleep_forever()
        except Exception as e:
            if not ready.done():
                ready.set_exception(e)
        finally:
            self.session = None
            if not ready.done():
                ready.set_exception(ConnectionError("the server stopped before listing its tools"))
            self.done.set()

    def shut_down(self) -> None:
        """Cancel the serving task (mcp then stops the process), wait for it, stop the loop, and kill what is
        left of the server's process group."""
        self.closing = True
        self.session = None
        if self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._cancel)
            self.done.wait(CLOSE_TIMEOUT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(2.0)
            if not self.thread.is_alive():
                self.loop.close()
        # Linux does not reuse a pid while a process group of that id has members, so this reaches the server's
        # leftovers or nothing (unless the group emptied and its id was recycled in the meantime).
        if self.stderr.pid is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.stderr.pid, signal.SIGKILL)
        self.stderr.close_writer()

    def _cancel(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class McpServer:
    """One MCP server process and its client session."""

    def __init__(self, name: str, settings: McpServerSettings) -> None:
        self.name = name
        self.settings = settings
        self._stderr = _StderrTail()
        self._rt = _Runtime(self._stderr)
        self._listed: list[Any] = []
        self._finalizer = weakref.finalize(self, self._rt.shut_down)  # also runs at interpreter exit

    def __repr__(self) -> str:
        return f"<MCP server {self.name} ({' '.join(self.settings.command)})>"

    @property
    def pid(self) -> int | None:
        """The server's process id, which is also its process group id (None before it started)."""
        return self._stderr.pid

    def start(self) -> None:
        """Start the process, initialize the session and list the tools (ConfigError naming the server and
        quoting its stderr when any of that fails or takes longer than start_timeout_s)."""
        from mcp import StdioServerParameters

        self._rt.thread = threading.Thread(target=self._rt.loop.run_forever, name=f"metagent-mcp-{self.name}",
                                           daemon=True)
        self._rt.thread.start()
        ready: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        launch = ["-I", "-S", "-c", LAUNCHER, *self.settings.command]
        params = StdioServerParameters(command=sys.executable, args=launch, env=server_env(self.settings.env))
        asyncio.run_coroutine_threadsafe(self._rt.serve(params, ready), self._rt.loop)
        try:
            self._listed = ready.result(timeout=self.settings.start_timeout_s)
        except TimeoutError:
            self.close()
            raise ConfigError(self._failure(f"no answer within start_timeout_s = {self.settings.start_timeout_s:g} s")
                              ) from None
        except Exception as e:
            self.close()
            raise ConfigError(self._failure(_describe(e))) from e

    def tools(self) -> list[McpTool]:
        """One McpTool per listed tool (only the allowlisted ones when `tools` is set)."""
        listed = self._listed
        wanted = self.settings.tools
        if wanted is not None:
            offered = {t.name for t in listed}
            missing = [n for n in wanted if n not in offered]
            if missing:
                raise ConfigError(f"MCP server {self.name!r} has no tool(s) {missing} ([mcp.servers.{self.name}] "
                                  f"tools); it offers {sorted(offered)[:MAX_TOOLS]}")
            listed = [t for t in listed if t.name in wanted]
        if len(listed) > MAX_TOOLS:
            raise ConfigError(f"MCP server {self.name!r} offers {len(listed)} tools, over {MAX_TOOLS}; list the ones "
                              f"to use in [mcp.servers.{self.name}] tools = [...]")
        return [McpTool(self, t) for t in listed]

    def call(self, tool_name: str, arguments: dict[str, Any], timeout_s: float) -> Any:
        """The CallToolResult of one call (ToolError when the server is gone, fails or is too slow)."""
        session = self._rt.session
        if session is None or self._rt.closing:
            raise ToolError(f"the MCP server {self.name} is not running{self._stderr.hint()}")
        try:
            future = asyncio.run_coroutine_threadsafe(
                session.call_tool(tool_name, arguments, read_timeout_seconds=timeout_s), self._rt.loop)
        except RuntimeError as e:  # the loop closed under us
            raise ToolError(f"the MCP server {self.name} is not running") from e
        try:
            return future.result(timeout_s + CALL_MARGIN_S)
        except TimeoutError:
            future.cancel()
            raise ToolError(f"timed out after {timeout_s:g} s") from None
        except Exception as e:
            if _is_request_timeout(e):  # the request's own timeout (timeout_s) fired before the wait above
                raise ToolError(f"timed out after {timeout_s:g} s") from None
            raise ToolError(f"the MCP server {self.name} failed: {_describe(e)}{self._stderr.hint()}") from e

    def close(self) -> None:
        """Stop the server (idempotent); its tools fail with a ToolError afterwards."""
        self._finalizer()

    def _failure(self, reason: str) -> str:
        return (f"MCP server {self.name!r} ({' '.join(self.settings.command)}) failed to start: {reason}."
                f"{self._stderr.hint(wait_s=1.0)}")


class McpTool:
    """A Tool that calls one tool of an MCP server. Arguments are checked against the server's JSON schema
    here; what the schema cannot say, the server checks."""

    def __init__(self, server: McpServer, listed: Any) -> None:
        settings = server.settings
        self.source = f"mcp:{server.name}"
        self.remote_name: str = listed.name
        self.name = clean_name(listed.name, settings.prefix)
        owner = f"MCP server {server.name!r}, tool {self.name!r}"
        self.description = clean_description(listed.description,
                                             f"The tool {self.name} of the MCP server {server.name}.")
        schema = clean_schema(listed.input_schema, owner)
        self.args_model: type[BaseModel] = json_args_model(f"{self.name}_args", schema, owner)
        self._parameters = drop_titles(schema)
        annotations = listed.annotations
        read_only = bool(annotations is not None and annotations.read_only_hint)
        self.policy = ToolPolicy(timeout_s=settings.timeout_s, approval=settings.approval, side_effects=not read_only)
        self.server = server

    def __repr__(self) -> str:
        return f"<MCP tool {self.name} ({self.source})>"

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self._parameters)

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        result = self.server.call(self.remote_name, args.model_dump(), ctx.timeout_s)
        text = result_text(result)
        if result.is_error:
            raise ToolError(clean_output(text or "the tool failed without saying why", ctx.output_cap_bytes))
        return clean_output(text, ctx.output_cap_bytes)


def result_text(result: Any) -> str:
    """A CallToolResult as text: text blocks verbatim, other content summarised, else the structured content."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "unknown")
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind} {block.mime_type}, about {len(block.data) * 3 // 4} bytes, not shown]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if text is not None:
            return f"[resource {resource.uri}]\n{text}"
        return f"[resource {resource.uri}: {resource.mime_type or 'binary'} data, not shown]"
    if kind == "resource_link":
        return f"[resource link {block.uri}: {block.name}]"
    return f"[{kind} content, not shown]"


async def _list_tools(session: Any) -> list[Any]:
    from mcp_types import PaginatedRequestParams

    found: list[Any] = []
    cursor = None
    for _ in range(MAX_TOOLS):  # a server that pages one tool at a time still ends
        result = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        found.extend(result.tools)
        cursor = result.next_cursor
        if not cursor:
            return found
    raise ConfigError(f"the tool listing did not end after {MAX_TOOLS} pages")


class _StderrTail:
    """A pipe for the server's stderr, drained by a daemon thread that keeps only the last bytes (a chatty
    server can neither block on a full pipe nor fill the agent's memory)."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w")
        self.pid: int | None = None  # the launcher's report, which comes first
        self._pid_read = False
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._drainer = threading.Thread(target=self._drain, args=(read_fd,), name="metagent-mcp-stderr",
                                         daemon=True)
        self._drainer.start()

    def _drain(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self._tail += chunk
                    self._take_pid()
                    del self._tail[:-STDERR_TAIL_BYTES]
        finally:
            os.close(fd)

    def _take_pid(self) -> None:
        """Read the launcher's line (one write under PIPE_BUF, so it arrives whole in the first chunk)."""
        if self._pid_read:
            return
        self._pid_read = True
        line, _, rest = bytes(self._tail).partition(b"\n")
        if line.startswith(PID_MARKER) and line[len(PID_MARKER):].isdigit():
            self.pid = int(line[len(PID_MARKER):])
            self._tail[:] = rest

    def close_writer(self) -> None:
        self.writer.close()

    def hint(self, wait_s: float = 0.0) -> str:
        """" Its stderr ended with: ..." (waiting up to wait_s for the server to finish writing)."""
        if wait_s:
            self._drainer.join(wait_s)
        with self._lock:
            text = strip_invisible(self._tail.decode("utf-8", "replace")).strip()
        return f" Its stderr ended with:\n{text}" if text else " It wrote nothing to stderr."


def _is_request_timeout(error: BaseException) -> bool:
    """Whether the MCP client gave up on the request after its read timeout (JSON-RPC code REQUEST_TIMEOUT)."""
    from mcp_types import REQUEST_TIMEOUT

    return getattr(_first_leaf(error), "code", None) == REQUEST_TIMEOUT


def _describe(error: BaseException) -> str:
    """The first leaf of an exception group, as "Type: message"."""
    error = _first_leaf(error)
    return f"{type(error).__name__}: {error}"


def _first_leaf(error: BaseException) -> BaseException:
    """The error itself, or the first leaf of an exception group (anyio wraps task failures)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
