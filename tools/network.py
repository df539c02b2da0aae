"""Network access for in-process tools: an httpx transport that only reaches the hosts a tool's policy lists.

A tool that needs the network declares its hosts (`@tool(network=["api.example.com", "*.example.org"])`, or
`[tools.policy.NAME] network = [...]` in the settings, which wins) and makes its requests through
`ctx.http_client()`. Every request, redirects included, is checked against that list before a connection is
opened; a request to any other host raises `NetworkBlocked`, a ToolError the model reads as an observation.

Host patterns: "example.com" matches that host only; "*.example.com" matches its subdomains (not
example.com itself); "example.com:8443" also pins the port; "*" matches every host (an explicit opt-in).
Names are compared case-insensitively, after IDNA encoding, without a trailing dot.

What this does NOT protect against: a tool that opens sockets itself (urllib, requests, raw sockets) instead of
using `ctx.http_client()`; DNS answers (an allowed name that resolves to an internal address is reached). For
code you do not trust, use a sandboxed tool: the sandbox has no network at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from tools.base import ToolError

if TYPE_CHECKING:
    import httpx

__all__ = ["NetworkBlocked", "allowlist_client", "check_hosts", "host_allowed"]

DEFAULT_TIMEOUT_S = 30.0


class NetworkBlocked(ToolError):
    """A request to a host outside the tool's network allowlist."""


def check_hosts(owner: str, hosts: Sequence[str]) -> tuple[str, ...]:
    """The allowlist as a tuple of normalised patterns; ConfigError naming a malformed one."""
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"{owner}: network must be a list of host names, e.g. ['api.example.com'], got {hosts!r}")
    out = []
    for pattern in hosts:
        host, _, port = pattern.strip().lower().rstrip(".").partition(":")
        bare = host[2:] if host.startswith("*.") else host
        valid_host = host == "*" or (bare and all(part and _label_ok(part) for part in bare.split(".")))
        if not valid_host or (port and not port.isdigit()) or "/" in pattern:
            raise ConfigError(
                f"{owner}: network host {pattern!r} is not a host name pattern; use 'host', 'host:port', "
                "'*.domain' or '*'"
            )
        out.append(f"{host}:{port}" if port else host)
    return tuple(out)


def _label_ok(label: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in label)


def host_allowed(allowed: Sequence[str], host: str, port: int | None) -> bool:
    """Whether host[:port] matches one of the (normalised) patterns."""
    name = host.lower().rstrip(".")
    for pattern in allowed:
        want, _, want_port = pattern.partition(":")
        if want_port and (port is None or int(want_port) != port):
            continue
        if want == "*" or want == name or (want.startswith("*.") and name.endswith(want[1:])):
            return True
    return False


def allowlist_client(tool_name: str, allowed: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.Client:
    """An httpx.Client whose every request (and redirect) must go to an allowed host."""
    import httpx

    class AllowlistTransport(httpx.BaseTransport):
        def __init__(self) -> None:
            self._inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            url = request.url
            if not host_allowed(allowed, url.host, url.port or _default_port(url.scheme)):
                shown = ", ".join(allowed) if allowed else "none: this tool has no network access"
                raise NetworkBlocked(
                    f"network access to {url.host} is not allowed for tool {tool_name} (allowed hosts: {shown})"
                )
            return self._inner.handle_request(request)

        def close(self) -> None:
            self._inner.close()

    return httpx.Client(transport=AllowlistTransport(), timeout=timeout_s, follow_redirects=True, trust_env=False)


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)
