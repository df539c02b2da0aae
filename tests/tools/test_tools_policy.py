"""Tool policy as data: the settings' [tools.policy.NAME] over a tool's own policy, and the network allowlist
enforced by the httpx transport. Network evidence is what loopback servers started here actually received."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.errors import ConfigError
from agent.types import ToolCall
from tools import Broker, ToolContext, ToolRegistry, builtin_tools, tool
from tools.network import check_hosts, host_allowed
from tools.sandbox import probe


class Server:
    """A loopback HTTP server that records every path it is asked for; stops when the test ends."""

    def __init__(self, redirect_to: str | None = None) -> None:
        hits: list[str] = []
        self.hits = hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                if redirect_to and self.path == "/go":
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                    return
                body = b"hello from " + self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def target() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@tool(network=["127.0.0.1"])
def fetch(url: str, ctx: ToolContext) -> str:
    """Fetch a URL and return its body."""
    with ctx.http_client() as client:
        return client.get(url).text


@tool
def offline_fetch(url: str, ctx: ToolContext) -> str:
    """Fetch a URL without any network policy."""
    with ctx.http_client() as client:
        return client.get(url).text


@tool
def slow() -> str:
    """Take a while."""
    time.sleep(2)
    return "done"


@tool
def where_am_i() -> str:
    """Say which process and directory the tool runs in."""
    return f"{os.getpid()} {os.getcwd()}"


def broker_for(tmp_path: Path, *tools: object, **settings: object) -> Broker:
    return Broker(ToolRegistry([*builtin_tools(), *tools]), ToolSettings.model_validate(settings), tmp_path / "ws")


def test_allowed_host_is_reached(tmp_path: Path, target: Server) -> None:
    result = broker_for(tmp_path, fetch).call(ToolCall("1", "fetch", {"url": target.url("/ok")}))
    assert result.ok and result.output == "hello from /ok"
    assert target.hits == ["/ok"]


def test_other_hosts_are_refused_before_any_connection(tmp_path: Path, target: Server) -> None:
    broker = broker_for(tmp_path, fetch, offline_fetch)
    by_name = broker.call(ToolCall("1", "fetch", {"url": target.url("/x", host="localhost")}))
    assert not by_name.ok and "network access to localhost is not allowed for tool fetch" in (by_name.error or "")
    no_policy = broker.call(ToolCall("2", "offline_fetch", {"url": target.url("/y")}))
    assert not no_policy.ok and "this tool has no network access" in (no_policy.error or "")
    assert target.hits == []  # the loopback server never saw a request


def test_a_redirect_to_a_host_off_the_list_is_refused(tmp_path: Path, target: Server) -> None:
    bouncer = Server(redirect_to=target.url("/stolen"))
    try:
        settings = {"policy": {"fetch": {"network": [f"127.0.0.1:{bouncer.port}"]}}}
        result = broker_for(tmp_path, fetch, **settings).call(ToolCall("1", "fetch", {"url": bouncer.url("/go")}))
    finally:
        bouncer.close()
    assert not result.ok and "not allowed" in (result.error or "")
    assert bouncer.hits == ["/go"] and target.hits == []


def test_settings_override_a_tools_policy(tmp_path: Path, target: Server) -> None:
    settings = {"policy": {"fetch": {"network": []}, "slow": {"timeout_s": 0.3}, "calculator": {"approval": "always"}}}
    broker = broker_for(tmp_path, fetch, slow, **settings)
    cut_off = broker.call(ToolCall("1", "fetch", {"url": target.url("/z")}))
    assert not cut_off.ok and target.hits == []
    started = time.monotonic()
    timed_out = broker.call(ToolCall("2", "slow", {}))
    assert timed_out.error == "timed out after 0.3 s" and time.monotonic() - started < 1.5
    assert broker.needs_approval(ToolCall("3", "calculator", {"expression": "1+1"}))
    assert broker.policy(fetch).network == () and fetch.policy.network == ("127.0.0.1",)  # the tool is unchanged


@pytest.mark.skipif(probe("bwrap") is not None, reason="needs the bwrap sandbox")
def test_settings_can_sandbox_a_tool(tmp_path: Path) -> None:
    broker = broker_for(tmp_path, where_am_i, policy={"where_am_i": {"sandboxed": True}})
    result = broker.call(ToolCall("1", "where_am_i", {}))
    assert result.ok, result.error
    pid, cwd = result.output.split()
    assert int(pid) != os.getpid() and cwd != os.getcwd()  # another process, in a scratch directory


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"nope": {"timeout_s": 1}}, "not registered: \\['nope'\\]"),
        ({"python": {"sandboxed": False}}, "cannot unsandbox"),
        ({"fetch": {"network": ["bad host!"]}}, "not a host name pattern"),
        ({"python": {"network": ["example.com"]}}, "a sandboxed tool has no network"),
    ],
)
def test_bad_policy_settings_fail_at_build_with_the_reason(tmp_path: Path, policy: dict[str, object],
                                                           message: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        broker_for(tmp_path, fetch, policy=policy)


def test_unknown_policy_keys_are_rejected_by_the_settings() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ToolSettings.model_validate({"policy": {"fetch": {"timeout": 3}}})


@pytest.mark.parametrize(
    ("patterns", "host", "port", "allowed"),
    [
        (["example.com"], "example.com", 443, True),
        (["example.com"], "EXAMPLE.com.", 443, True),
        (["example.com"], "evil-example.com", 443, False),
        (["example.com"], "example.com.evil.org", 443, False),
        (["*.example.com"], "api.example.com", 443, True),
        (["*.example.com"], "example.com", 443, False),
        (["example.com:8443"], "example.com", 443, False),
        (["example.com:8443"], "example.com", 8443, True),
        (["*"], "anything.org", 80, True),
        ([], "example.com", 443, False),
    ],
)
def test_host_patterns(patterns: list[str], host: str, port: int, allowed: bool) -> None:
    assert host_allowed(check_hosts("test", patterns), host, port) is allowed
