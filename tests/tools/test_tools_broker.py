"""The broker: model mistakes become observations, limits hold, calls run concurrently in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.types import ToolCall
from tools import Broker, ToolContext, ToolRegistry, builtin_tools, tool
from tools.broker import truncate
from tools.process import SandboxResult

RELEASE = threading.Event()  # lets the hanging tool's abandoned thread finish at the end of the session


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@tool(timeout_s=0.3)
def hang() -> str:
    """Never return in time."""
    RELEASE.wait(30)
    return "late"


@tool
def nap(seconds: float, label: str) -> str:
    """Sleep, then say the label."""
    time.sleep(seconds)
    return label


@tool
def shout(text: str) -> str:
    """Print a lot."""
    return text * 10_000


@tool(side_effects=True, approval="side_effects")
def delete_everything() -> str:
    """Pretend to delete."""
    return "gone"


@tool(approval="always")
def launch() -> str:
    """Pretend to launch."""
    return "launched"


@tool(network=["example.com"])
def fetch(url: str) -> str:
    """Pretend to fetch a URL."""
    return url


@pytest.fixture(scope="module", autouse=True)
def _release_hung_threads() -> object:
    yield None
    RELEASE.set()


def make_broker(tmp_path: Path, **settings: object) -> Broker:
    registry = ToolRegistry([divide, hang, nap, shout, delete_everything, launch, fetch, *builtin_tools()])
    return Broker(registry, ToolSettings(**settings), tmp_path / "ws", sandbox=NoSandbox())  # type: ignore[arg-type]


class NoSandbox:
    """A Sandbox that is not one (isolated=False) and records what it was asked to run."""

    name = "none"
    isolated = False

    def __init__(self) -> None:
        self.calls: list[Sequence[str]] = []

    def run(self, argv: Sequence[str], **kwargs: object) -> SandboxResult:
        self.calls.append(argv)
        return SandboxResult(exit_code=0, stdout="ran\n", stderr="")


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(id=f"id-{name}", name=name, arguments=dict(arguments))


def test_good_call(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    assert broker.validate(call("divide", a=1, b=4)) is None
    result = broker.call(call("divide", a=1, b=4))
    assert result.ok and result.output == "0.25" and result.call_id == "id-divide" and result.error is None


def test_unknown_tool_lists_the_available_ones(tmp_path: Path) -> None:
    result = make_broker(tmp_path).call(call("divde", a=1, b=2))
    assert not result.ok and result.error is not None
    assert "unknown tool 'divde'" in result.error and "Did you mean 'divide'?" in result.error
    assert "calculator" in result.error and "python" in result.error


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"a": "ten", "b": 2}, "'a': Input should be a valid number"),
        ({"a": 1}, "'b' is required but missing"),
        ({"a": 1, "b": 2, "c": 3}, "'c' is not an argument of this tool"),
    ],
)
def test_invalid_arguments_say_what_and_where(tmp_path: Path, arguments: dict[str, object], expected: str) -> None:
    broker = make_broker(tmp_path)
    invalid = broker.validate(ToolCall("x", "divide", arguments))
    assert invalid is not None and not invalid.ok and invalid.error is not None
    assert expected in invalid.error
    assert "Expected arguments: a (number, required), b (number, required)" in invalid.error
    assert broker.call(ToolCall("x", "divide", arguments)).error == invalid.error


def test_wrong_type_shows_what_was_given(tmp_path: Path) -> None:
    result = make_broker(tmp_path).call(call("divide", a="ten", b=2))
    assert result.error is not None and "(got 'ten')" in result.error


def test_a_tool_that_raises_becomes_an_error_without_traceback(tmp_path: Path) -> None:
    result = make_broker(tmp_path).call(call("divide", a=1, b=0))
    assert not result.ok
    assert result.error == "ZeroDivisionError: float division by zero"


def test_a_tool_that_hangs_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    result = make_broker(tmp_path).call(call("hang"))
    assert time.monotonic() - started < 1.5
    assert not result.ok and result.error == "timed out after 0.3 s"


def test_output_is_truncated_to_the_cap(tmp_path: Path) -> None:
    result = make_broker(tmp_path, output_cap_bytes=1000).call(call("shout", text="ab"))
    assert result.ok and len(result.output.encode()) < 1100
    assert result.output.startswith("abab") and result.output.endswith("abab")
    assert "bytes cut: output exceeds 1000 bytes" in result.output


def test_truncate_keeps_utf8_whole() -> None:
    text = "é" * 1000
    out = truncate(text, 301)
    assert "\ufffd" not in out and out.startswith("é") and out.endswith("é")
    assert truncate("short", 300) == "short"


def test_call_many_runs_concurrently_and_keeps_order(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    calls = [
        ToolCall("1", "nap", {"seconds": 0.5, "label": "slow"}),
        ToolCall("2", "nap", {"seconds": 0.4, "label": "fast"}),
    ]
    calls.append(ToolCall("3", "nope", {}))
    started = time.monotonic()
    results = broker.call_many(calls)
    assert time.monotonic() - started < 0.9
    assert [r.call_id for r in results] == ["1", "2", "3"]
    assert [r.output for r in results[:2]] == ["slow", "fast"] and not results[2].ok


def test_call_many_respects_max_parallel(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, max_parallel=1)
    started = time.monotonic()
    broker.call_many([ToolCall(str(i), "nap", {"seconds": 0.2, "label": "x"}) for i in range(3)])
    assert time.monotonic() - started >= 0.6


def test_approval_rules(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, approval=["divide"])
    assert broker.needs_approval(call("divide", a=1, b=2))  # listed in settings
    assert broker.needs_approval(call("delete_everything"))  # side effects
    assert broker.needs_approval(call("launch"))  # always
    assert broker.needs_approval(call("write_file", path="a", content="b"))  # built-in policy
    assert not broker.needs_approval(call("calculator", expression="1"))
    assert not broker.needs_approval(call("nope"))


def test_python_is_refused_without_a_real_sandbox_unless_configured(tmp_path: Path) -> None:
    refused = make_broker(tmp_path).call(call("python", code="print(1)"))
    assert not refused.ok and "no sandbox works on this machine" in (refused.error or "")
    broker = make_broker(tmp_path, sandbox="none")
    result = broker.call(call("python", code="print(1)"))
    assert result.ok and result.output == "ran"
    sandbox = broker.sandbox()
    assert isinstance(sandbox, NoSandbox) and sandbox.calls[0][1:] == ["-I", "-"]


def test_context_carries_user_and_workspace(tmp_path: Path) -> None:
    @tool
    def who(ctx: ToolContext) -> str:
        """Say who calls."""
        return f"{ctx.user_id}@{ctx.workspace.name}:{ctx.timeout_s:g}"

    broker = Broker(ToolRegistry([who]), ToolSettings.model_validate({"timeout_s": 7}), tmp_path / "ws")
    assert broker.call(call("who"), user_id="ann").output == "ann@ws:7"
    assert (tmp_path / "ws").is_dir()
