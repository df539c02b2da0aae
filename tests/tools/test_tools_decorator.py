"""@tool and the registry: schemas from type hints and docstrings, and registration mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from agent.errors import ConfigError
from agent.types import ToolSpec
from tools import Tool, ToolContext, ToolPolicy, ToolRegistry, tool
from tools.base import spec_for


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    More text that is not part of the description.

    Args:
        a: the first number,
            continued on a second line
        b (int): the second number
    """
    return a + b


def _props(t: Tool) -> dict[str, Any]:
    return t.spec().parameters["properties"]  # type: ignore[no-any-return]


def test_schema_from_hints_defaults_and_docstring() -> None:
    spec = add.spec()
    assert spec.name == "add"
    assert spec.description == "Add two integers."
    assert spec.parameters["required"] == ["a"]
    assert spec.parameters["additionalProperties"] is False
    assert _props(add)["a"] == {"type": "integer", "description": "the first number, continued on a second line"}
    assert _props(add)["b"]["default"] == 2
    assert _props(add)["b"]["description"] == "the second number"


def test_decorated_function_still_calls_like_the_function() -> None:
    assert add(1) == 3
    assert add(1, b=5) == 6
    assert add.__name__ == "add" and "Add two integers" in (add.__doc__ or "")


def test_annotated_field_description_wins_and_constraints_apply() -> None:
    @tool(name="pick", approval="always")
    def choose(
        mode: Literal["fast", "slow"],
        count: Annotated[int, Field(ge=1, le=5, description="how many")] = 1,
        tags: list[str] | None = None,
    ) -> str:
        """Choose something.

        Args:
            count: ignored because Annotated says it
        """
        return mode

    props = _props(choose)
    assert choose.name == "pick" and choose.policy.approval == "always"
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["count"]["description"] == "how many" and props["count"]["maximum"] == 5
    assert "tags" not in choose.spec().parameters["required"]
    with pytest.raises(ValueError):
        choose.args_model.model_validate({"mode": "fast", "count": 9})


def test_titles_are_dropped_but_a_property_named_title_is_kept() -> None:
    @tool
    def note(title: str, body: str = "") -> str:
        """Make a note."""
        return title

    params = note.spec().parameters
    assert "title" in params["properties"]
    assert "title" not in params and "title" not in params["properties"]["title"]


def test_context_parameter_is_injected_and_hidden(tmp_path: Path) -> None:
    @tool
    def where(name: str, ctx: ToolContext) -> dict[str, str]:
        """Say where the workspace is."""
        return {"name": name, "workspace": str(ctx.workspace), "user": ctx.user_id}

    assert list(_props(where)) == ["name"]
    out = where.run(where.args_model(name="x"), ToolContext(workspace=tmp_path, user_id="ann"))
    assert out == f'{{"name": "x", "workspace": "{tmp_path}", "user": "ann"}}'  # dicts come back as JSON


def test_missing_docstring_is_a_config_error_naming_the_function() -> None:
    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match=r"undocumented.*docstring"):
        tool(undocumented)


def test_missing_type_hint_is_a_config_error_naming_the_parameter() -> None:
    def untyped(x, y: int) -> int:  # type: ignore[no-untyped-def]
        """Do it."""
        return y

    with pytest.raises(ConfigError, match=r"untyped.*parameter 'x' has no type hint"):
        tool(untyped)


def test_var_args_and_unknown_options_are_config_errors() -> None:
    def many(*items: int) -> int:
        """Sum."""
        return sum(items)

    with pytest.raises(ConfigError, match=r"\*items"):
        tool(many)
    with pytest.raises(ConfigError, match="unknown tool option.*sandbox_mode"):
        tool(sandbox_mode=True)(add.fn)
    with pytest.raises(ConfigError, match="approval 'sometimes' is not one of"):
        tool(approval="sometimes")(add.fn)
    with pytest.raises(ConfigError, match="timeout_s must be positive"):
        tool(timeout_s=0)(add.fn)
    with pytest.raises(ConfigError, match="no network"):
        tool(sandboxed=True, network=["example.com"])(add.fn)
    with pytest.raises(ConfigError, match="network must be a list of host names"):
        tool(network=True)(add.fn)
    with pytest.raises(ConfigError, match="not a host name pattern"):
        tool(network=["http://example.com/x"])(add.fn)


def test_sandboxed_tool_must_be_importable() -> None:
    def local_tool(x: int) -> int:
        """Local."""
        return x

    with pytest.raises(ConfigError, match="importable module"):
        tool(sandboxed=True)(local_tool)
    module_level = tool(sandboxed=True)(add.fn)  # defined at module level: fine
    assert module_level.target.endswith(":add")


class Echo:
    """A class-based tool."""

    name = "echo"
    description = "Repeat the text."
    policy = ToolPolicy()

    class Args(BaseModel):
        text: str

    args_model: type[BaseModel] = Args

    def spec(self) -> ToolSpec:
        return spec_for(self.name, self.description, self.args_model)

    def run(self, args: BaseModel, ctx: ToolContext) -> str:
        return str(args.model_dump()["text"])


def test_registry_takes_functions_tools_and_classes() -> None:
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    registry = ToolRegistry([add, Echo()])
    wrapped = registry.register(shout)
    assert wrapped.name == "shout" and isinstance(wrapped, Tool)
    assert registry.names() == ["add", "echo", "shout"]
    assert len(registry) == 3 and [t.name for t in registry] == registry.names()
    assert registry.get("echo") is not None and registry.get("nope") is None
    assert [s.name for s in registry.specs()] == ["add", "echo", "shout"]


def test_registry_refuses_duplicates_and_bad_names() -> None:
    def other(a: int) -> int:
        """Another tool."""
        return a

    registry = ToolRegistry([add])
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(tool(name="add")(other))
    with pytest.raises(ConfigError, match="not usable"):
        registry.register(tool(name="bad name!")(add.fn))
