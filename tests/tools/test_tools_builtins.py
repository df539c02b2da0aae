"""search_docs and recall over their services, and the list of built-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ToolSettings
from agent.types import Episode, Passage, ToolCall
from tools import Broker, ToolRegistry, builtin_tools


class TwoPassages:
    """A Retriever with fixed content."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, int]] = []

    def search(self, query: str, k: int) -> list[Passage]:
        self.queries.append((query, k))
        found = [Passage("Paris is the capital.", "docs/france.md", 0, 0.9), Passage("Lyon  is\nbig.", "lyon.txt", 3)]
        return found[:k]

    def count(self) -> int:
        return 2


class PerUserEpisodes:
    """An EpisodicMemory holding one episode for user 'ann'."""

    def __init__(self) -> None:
        self.episode = Episode("e1", "ann", "what is 2+2", "math", None, "", (), "4 " * 300, "success", 0.0)

    def record(self, episode: Episode) -> None: ...

    def recall(self, user_id: str, query: str, k: int, task_kind: str | None = None) -> list[Episode]:
        return [self.episode] if user_id == "ann" else []

    def list(self, user_id: str | None = None) -> list[Episode]:
        return [self.episode]

    def forget(self, user_id: str | None = None) -> int:
        return 0

    def set_feedback(self, episode_id: str, outcome: str | None, note: str | None) -> bool:
        return False


def test_builtins_only_include_services_that_are_given() -> None:
    assert [t.name for t in builtin_tools()] == ["calculator", "python", "read_file", "write_file", "list_dir"]
    names = [t.name for t in builtin_tools(TwoPassages(), PerUserEpisodes())]
    assert names[-2:] == ["search_docs", "recall"]


def test_search_docs_numbers_passages_with_sources(tmp_path: Path) -> None:
    retriever = TwoPassages()
    broker = Broker(ToolRegistry(builtin_tools(retriever)), ToolSettings.model_validate({}), tmp_path)
    result = broker.call(ToolCall("1", "search_docs", {"query": "capital"}))
    assert result.ok
    assert (
        result.output
        == "[S1] docs/france.md (part 0):\nParis is the capital.\n\n[S2] lyon.txt (part 3):\nLyon  is\nbig."
    )
    assert retriever.queries == [("capital", 4)]
    one = broker.call(ToolCall("2", "search_docs", {"query": "x", "k": 1}))
    assert one.output.startswith("[S1]") and "[S2]" not in one.output
    assert not broker.call(ToolCall("3", "search_docs", {"query": "x", "k": 0})).ok


def test_recall_is_scoped_to_the_calling_user(tmp_path: Path) -> None:
    broker = Broker(ToolRegistry(builtin_tools(episodes=PerUserEpisodes())), ToolSettings.model_validate({}), tmp_path)
    mine = broker.call(ToolCall("1", "recall", {"query": "2+2"}), user_id="ann")
    assert mine.ok and mine.output.startswith("[1] request: what is 2+2\n    answer: 4 4 4")
    assert "(outcome: success, task: math)" in mine.output and len(mine.output) < 500
    other = broker.call(ToolCall("2", "recall", {"query": "2+2"}), user_id="bob")
    assert other.output == "no similar earlier requests from this user"
    assert "ctx" not in broker.specs()[-1].parameters["properties"]


@pytest.mark.parametrize(("code", "echoed"), [
    ("17*23", True),
    ("x = 2\nx * 3", True),
    ("import os; os.getcwd()", True),
    ("print(1)", False),
    ("x = 1", False),
    ("for i in range(2):\n    i", False),
    ("def f(:\n", False),  # a syntax error goes to the interpreter unchanged, which reports it
])
def test_python_echoes_a_final_expression(code: str, echoed: bool) -> None:
    from tools.builtins import echo_last_expression

    out = echo_last_expression(code)
    assert ("print(repr(__value))" in out) is echoed
    if echoed:
        namespace: dict[str, object] = {}
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(out, namespace)  # noqa: S102 - trusted test input, checks the rewrite runs
        assert buffer.getvalue().strip() != ""
