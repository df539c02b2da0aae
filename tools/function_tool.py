"""`@tool`: a typed, documented function becomes a Tool.

    @tool
    def add(a: int, b: int = 1) -> int:
        '''Add two integers.

        Args:
            a: the first number
            b: the second number
        '''
        return a + b

The arguments model comes from the type hints (defaults kept, `Annotated[int, Field(description=...)]`
honoured), the description from the docstring's first paragraph, per-argument descriptions from a
Google-style `Args:` section. A parameter annotated `ToolContext` receives the broker's context and is not
shown to the model. The decorated object still calls like the function.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from agent.errors import ConfigError
from agent.types import ToolSpec
from tools.base import ToolContext, ToolPolicy, qualified_name, spec_for, to_text

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?|See Also):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class FunctionTool:
    """A Tool made from a function by `@tool`. Calling it calls the function."""

    __name__: str  # copied from the function, like the rest of its metadata
    __qualname__: str

    def __init__(self, fn: Callable[..., Any], name: str, description: str, policy: ToolPolicy) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name
        self.description = description
        self.policy = policy
        self.args_model, self._context_param = _args_model(fn, name)
        # Where the sandbox runner finds this tool again: "module:qualname".
        self.target = f"{fn.__module__}:{fn.__qualname__}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tool {self.name} ({qualified_name(self.fn)})>"

    def spec(self) -> ToolSpec:
        return spec_for(self.name, self.description, self.args_model)

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        # The broker hands a sandbox only to calls whose effective policy (settings included) is sandboxed.
        if ctx.sandbox is not None:
            from tools.runner import run_sandboxed

            return run_sandboxed(self, args, ctx)
        return self.run_here(args, ctx)

    def run_here(self, args: BaseModel, ctx: ToolContext) -> str:
        """Call the function in this process (the sandbox runner calls this inside the sandbox)."""
        kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if self._context_param is not None:
            kwargs[self._context_param] = ctx
        return to_text(self.fn(**kwargs))


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, **policy: Any
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    **policy: Any,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a Tool of a typed, documented function: `@tool` or `@tool(name=..., sandboxed=True, ...)`.

    Keyword options other than `name` and `description` are ToolPolicy fields (sandboxed, network,
    timeout_s, memory_mb, output_cap_bytes, approval, side_effects, filesystem). Raises ConfigError at
    decoration time for a missing docstring or type hint, or a sandboxed function the sandbox cannot import.
    """

    def build(f: Callable[..., Any]) -> FunctionTool:
        if isinstance(f, FunctionTool):
            f = f.fn
        if not callable(f) or inspect.isclass(f):
            raise ConfigError(f"@tool needs a function, got {f!r}. Decorate a `def` with type hints.")
        owner = f"tool function {qualified_name(f)}"
        tool_policy = ToolPolicy.from_options(owner, policy)
        summary, _ = parse_docstring(f)
        text = description if description is not None else summary
        if not text:
            raise ConfigError(
                f"{owner} has no docstring. Add one: its first paragraph tells the model what the tool "
                'does, e.g. """Add two integers."""'
            )
        if tool_policy.sandboxed:
            _check_importable(f, owner)
        return FunctionTool(f, name or f.__name__, text, tool_policy)

    return build(fn) if fn is not None else build


def parse_docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """(first paragraph as one line, {argument: description} from a Google-style Args: section)."""
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    return " ".join(summary), _arg_descriptions(lines)


def _arg_descriptions(lines: list[str]) -> dict[str, str]:
    described: dict[str, str] = {}
    in_args, current, indent = False, "", -1
    for line in lines:
        stripped = line.strip()
        heading = _SECTION.match(stripped)
        if heading and len(line) - len(line.lstrip()) == 0:
            in_args = heading.group(1) in ("Args", "Arguments", "Parameters")
            current, indent = "", -1
            continue
        if not in_args or not stripped:
            continue
        level = len(line) - len(line.lstrip())
        entry = _ARG_LINE.match(stripped)
        if entry and (indent < 0 or level <= indent):
            indent, current = level, entry.group(1).lstrip("*")
            described[current] = entry.group(2).strip()
        elif current and level > indent:  # a continuation line of the current argument
            described[current] = f"{described[current]} {stripped}".strip()
    return described


def _args_model(fn: Callable[..., Any], tool_name: str) -> tuple[type[BaseModel], str | None]:
    owner = f"tool function {qualified_name(fn)}"
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # NameError for an unresolvable forward reference, among others
        raise ConfigError(f"{owner}: cannot resolve its type hints ({e}); import the names they use.") from e
    _, arg_docs = parse_docstring(fn)
    definitions: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"{owner}: *{param.name} is not supported; list the arguments one by one.")
        if param.name not in hints:
            raise ConfigError(
                f"{owner}: parameter {param.name!r} has no type hint. Annotate it, e.g. `{param.name}: str`, "
                "so the model knows what to pass."
            )
        annotation = hints[param.name]
        if annotation is ToolContext:
            context_param = param.name
            continue
        definitions[param.name] = (annotation, _field(param, annotation, arg_docs.get(param.name)))
    model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **definitions)
    return model, context_param


def _field(param: inspect.Parameter, annotation: Any, doc: str | None) -> Any:
    default = ... if param.default is inspect.Parameter.empty else param.default
    described = any(
        isinstance(meta, FieldInfo) and meta.description for meta in getattr(annotation, "__metadata__", ())
    )
    if doc and not described:
        return Field(default, description=doc)
    return Field(default)


def _check_importable(fn: Callable[..., Any], owner: str) -> None:
    """The sandbox runner imports a sandboxed function by module and qualified name: it must be at the
    top level of an importable module."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        raise ConfigError(
            f"{owner}: a sandboxed tool runs in a separate process that imports it by module path, and "
            f"{module}:{qualname} cannot be imported there (defined in __main__, a function body or a "
            "lambda). Define it at the top level of an importable module."
        )
