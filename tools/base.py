"""What a tool is: a name, a description, a pydantic model of its arguments, a policy, and `run`.

`@tool` turns a typed, documented function into one; any object with the same attributes (a class-based
tool) is one too. Adapters for LangChain `BaseTool`s or MCP servers' tools belong in their own module
(e.g. `tools/langchain.py`) and only need to produce an object satisfying `Tool`; nothing else changes.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from agent.errors import AgentError, ConfigError
from agent.types import ToolSpec

if TYPE_CHECKING:
    import httpx

    from tools.sandbox import Sandbox

Approval = Literal["never", "always", "side_effects"]
FilesystemScope = Literal["none", "workspace"]


class ToolError(AgentError):
    """Raised by a tool to report a failure in words meant for the model (shown without the type name)."""


@dataclass(frozen=True)
class ToolPolicy:
    """How the broker must run a tool. `None` limits mean the settings' defaults ([tools] section).

    sandboxed   run in a child process under the sandbox (no network, only the workspace writable);
                a sandboxed tool with filesystem="none" gets an empty scratch directory, not the workspace
    network     the hosts the tool may reach through `ctx.http_client()` (tools/network.py): () = none,
                ("api.example.com", "*.example.org", "host:8443"), or ("*",) for any; other hosts are refused
    approval    "always", "side_effects" (when side_effects is true) or "never" ask a human first
    filesystem  "workspace": the tool reads or writes files in the workspace; "none": it touches no files
    """

    sandboxed: bool = False
    network: tuple[str, ...] = ()
    timeout_s: float | None = None
    memory_mb: int | None = None
    output_cap_bytes: int | None = None
    approval: Approval = "never"
    side_effects: bool = False
    filesystem: FilesystemScope = "none"

    def __post_init__(self) -> None:
        from tools.network import check_hosts

        object.__setattr__(self, "network", check_hosts("tool policy", self.network))
        if self.approval not in ("never", "always", "side_effects"):
            raise ConfigError(f"tool approval {self.approval!r} is not one of 'never', 'always', 'side_effects'")
        if self.filesystem not in ("none", "workspace"):
            raise ConfigError(f"tool filesystem {self.filesystem!r} is not one of 'none', 'workspace'")
        for name in ("timeout_s", "memory_mb", "output_cap_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"tool {name} must be positive (or None for the settings' default), got {value}")

    @classmethod
    def from_options(cls, owner: str, options: dict[str, Any]) -> ToolPolicy:
        """A policy from keyword options, with a ConfigError naming any option that is not a policy field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"{owner}: unknown tool option(s) {unknown}; the options are name, description and {sorted(known)}."
            )
        try:
            policy = cls(**options)
        except TypeError as e:
            raise ConfigError(f"{owner}: invalid tool options {options}: {e}") from e
        except ConfigError as e:
            raise ConfigError(f"{owner}: {e}".replace("tool policy: ", "")) from e
        if policy.sandboxed and policy.network:
            raise ConfigError(
                f"{owner}: a sandboxed tool has no network (the sandbox cuts it off); drop network=... "
                "or sandboxed=True."
            )
        return policy

    def overridden(self, owner: str, overrides: dict[str, Any]) -> ToolPolicy:
        """This policy with the settings' [tools.policy.NAME] values on top. A sandboxed tool stays sandboxed:
        settings may tighten that, never loosen it (use [tools] sandbox = "none" to run without a sandbox)."""
        if self.sandboxed and overrides.get("sandboxed") is False:
            raise ConfigError(
                f"{owner}: sandboxed = false cannot unsandbox a tool that runs untrusted code; remove it "
                '(or set [tools] sandbox = "none" to run every sandboxed tool unsandboxed, at your own risk)'
            )
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        merged.update(overrides)
        if isinstance(merged["network"], list):
            merged["network"] = tuple(merged["network"])
        return ToolPolicy.from_options(owner, merged)


@dataclass(frozen=True)
class ToolContext:
    """What a tool gets from the broker besides its arguments.

    `workspace` is the only directory file tools may use. Sandboxed tools run their work through `sandbox`
    with the limits given here (the policy's, or the settings' defaults).
    """

    workspace: Path
    user_id: str = "default"
    sandbox: Sandbox | None = None
    timeout_s: float = 10.0
    memory_mb: int = 512
    output_cap_bytes: int = 1 << 20
    workspace_cap_bytes: int = 256 << 20
    tool_name: str = ""
    network: tuple[str, ...] = ()  # the hosts http_client() may reach

    def http_client(self) -> httpx.Client:
        """An httpx.Client that reaches only the hosts in the tool's network policy (tools/network.py); a
        request to any other host raises NetworkBlocked, which the model sees as the call's error."""
        from tools.network import allowlist_client

        return allowlist_client(self.tool_name or "?", self.network, timeout_s=self.timeout_s)


@runtime_checkable
class Tool(Protocol):
    """A tool the model can call. `run` gets validated arguments (an instance of `args_model`)."""

    name: str
    description: str
    args_model: type[BaseModel]
    policy: ToolPolicy

    def spec(self) -> ToolSpec:
        """What the model is told: name, description, JSON schema of the arguments."""
        ...

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        """Do the work; raise (ToolError for a message meant for the model) on failure."""
        ...


def spec_for(name: str, description: str, args_model: type[BaseModel]) -> ToolSpec:
    """A ToolSpec whose parameters are the args model's JSON schema without pydantic's titles."""
    return ToolSpec(name, description, clean_schema(args_model.model_json_schema()))


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated "title" annotations (noise in a small model's prompt); the result is the
    same JSON schema otherwise. Property *names* called "title" are kept."""
    return _drop_titles(schema, in_properties=False)  # type: ignore[no-any-return]


def _drop_titles(node: Any, in_properties: bool) -> Any:
    if isinstance(node, list):
        return [_drop_titles(item, False) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and not in_properties and isinstance(value, str):
            continue
        # The values of "properties" and "$defs" are maps from names to schemas: keep every name.
        out[key] = _drop_titles(value, in_properties=key in ("properties", "$defs") and not in_properties)
    return out


def to_text(value: Any) -> str:
    """A tool's return value as the text the model reads: JSON for dicts, lists and pydantic models."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(no output)"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, dict | list | tuple | int | float | bool):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def describe_args(args_model: type[BaseModel]) -> str:
    """A one-line summary of a tool's arguments for error messages: `expression (string, required)`."""
    schema = clean_schema(args_model.model_json_schema())
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or " or ".join(
            str(alt.get("type", "value")) for alt in prop.get("anyOf", []) if isinstance(alt, dict)
        )
        extra = "required" if name in required else f"default {json.dumps(prop.get('default'))}"
        parts.append(f"{name} ({kind or 'value'}, {extra})")
    return ", ".join(parts) if parts else "no arguments"


def qualified_name(obj: Any) -> str:
    """`module.qualname` of a function or class, for messages."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def is_tool(obj: Any) -> bool:
    """Whether `obj` satisfies the Tool protocol (attributes present, `run` and `spec` callable)."""
    return (
        isinstance(obj, Tool)
        and isinstance(getattr(obj, "policy", None), ToolPolicy)
        and inspect.isclass(getattr(obj, "args_model", None))
        and issubclass(obj.args_model, BaseModel)
    )
