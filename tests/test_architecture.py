"""House rules that keep the codebase in shape: dependency direction and lazy heavy imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACES = {"agent/api.py", "agent/cli.py", "agent/commands.py", "agent/repl.py", "agent/services.py",
         "agent/doctor.py", "agent/__init__.py"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("tools", {"memory", "graphs"}),
    ("memory", {"tools", "graphs"}),
    ("graphs", set()),
])
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    for path in (REPO / package).rglob("*.py"):
        bad = imported_packages(path) & forbidden
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_agent_services_do_not_import_the_faces_or_the_graph() -> None:
    for path in (REPO / "agent").rglob("*.py"):
        rel = str(path.relative_to(REPO))
        if rel in FACES:
            continue
        bad = imported_packages(path) & {"graphs", "tools", "memory"}
        assert not bad, f"{rel} (a service) imports {bad}; only the faces may"


def test_import_agent_is_fast_and_light() -> None:
    code = ("import sys, agent, agent.config, agent.types, agent.llm; "
            "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'langgraph') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"`import agent` pulled in {out.stdout.strip()}"
