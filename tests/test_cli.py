"""The CLI contract that scripts rely on: JSON shapes, exit codes, clear errors, the store lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def metagent(*args: str, home: Path, timeout: float = 300, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "METAGENT_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO, stdin=subprocess.DEVNULL)


def test_tools_list_json_shape(_isolated_home):
    proc = metagent("tools", "list", "--json", home=_isolated_home)
    assert proc.returncode == 0, proc.stderr
    tools = json.loads(proc.stdout)
    names = {t["name"] for t in tools}
    assert {"calculator", "python", "read_file", "write_file", "list_dir", "search_docs", "recall"} <= names
    for t in tools:
        assert set(t) == {"name", "source", "description", "parameters"} and t["parameters"]["type"] == "object"
        assert t["source"] == "builtin"


def test_tools_call_good_and_bad(_isolated_home):
    ok = metagent("tools", "call", "calculator", '{"expression": "17*23"}', home=_isolated_home)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "output": "391", "error": None}
    unknown = metagent("tools", "call", "nope", "{}", home=_isolated_home)
    body = json.loads(unknown.stdout)
    assert unknown.returncode == 1 and body["ok"] is False and "calculator" in body["error"]
    invalid = metagent("tools", "call", "calculator", '{"expression": 5}', home=_isolated_home)
    assert invalid.returncode == 1 and json.loads(invalid.stdout)["ok"] is False
    bad_json = metagent("tools", "call", "calculator", "{oops", home=_isolated_home)
    assert bad_json.returncode == 2 and "JSON object" in bad_json.stderr and "Traceback" not in bad_json.stderr


def test_user_tools_from_a_module(_isolated_home, tmp_path):
    (tmp_path / "my_tools.py").write_text(
        "from agent import tool\n\n@tool\ndef shout(text: str) -> str:\n    \"\"\"Upper-case a text.\"\"\"\n"
        "    return text.upper()\n")
    env = {"METAGENT_TOOLS__MODULES": '["my_tools"]', "PYTHONPATH": str(tmp_path)}
    proc = metagent("tools", "call", "shout", '{"text": "hi"}', home=_isolated_home, env=env)
    assert json.loads(proc.stdout) == {"ok": True, "output": "HI", "error": None}, proc.stderr


def test_bad_settings_file_is_a_clear_error(_isolated_home):
    _isolated_home.mkdir(parents=True)
    (_isolated_home / "settings.toml").write_text("[model]\ndevice = 'tpu'\n")
    proc = metagent("tools", "list", home=_isolated_home)
    assert proc.returncode == 2 and "device" in proc.stderr and "Traceback" not in proc.stderr


def test_ingest_is_refused_while_another_process_owns_the_store(_isolated_home, tmp_path):
    from agent.config import Settings
    from memory import VectorStore

    doc = tmp_path / "a.md"
    doc.write_text("hello")
    store = VectorStore.from_settings(Settings.load(), wait_s=1)
    try:
        proc = metagent("ingest", str(doc), home=_isolated_home, timeout=120)
    finally:
        store.close()
    assert proc.returncode == 2
    assert "store" in proc.stderr.lower() and str(os.getpid()) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ingest_then_memory_and_kinds_commands(_isolated_home, tmp_path):
    (tmp_path / "notes.md").write_text("Metagent keeps episodes per user.\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    proc = metagent("ingest", str(tmp_path), home=_isolated_home)
    assert proc.returncode == 0, proc.stderr
    assert "image.png" in proc.stderr  # skipped, with a reason
    listed = metagent("memory", "list", "--json", home=_isolated_home)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    forgot = metagent("memory", "forget", "--all", home=_isolated_home)
    assert forgot.returncode == 0 and "forgot 0" in forgot.stdout
    missing = metagent("ingest", str(tmp_path / "missing"), home=_isolated_home)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_teach_persists_a_kind(_isolated_home):
    proc = metagent("teach", "weather", "will it rain tomorrow?", "how hot is it in Rome today",
                    "forecast for Paris", "is it sunny in Oslo", "do I need an umbrella", home=_isolated_home)
    assert proc.returncode == 0, proc.stderr
    kinds = metagent("kinds", home=_isolated_home)
    assert "weather" in kinds.stdout


def test_missing_model_path_is_one_clear_error(_isolated_home):
    proc = metagent("run", "hi", home=_isolated_home, env={"METAGENT_MODEL__PATH": "/nonexistent/model"})
    assert proc.returncode == 2
    assert "/nonexistent/model" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_the_essentials(_isolated_home):
    proc = metagent("doctor", home=_isolated_home)
    assert proc.returncode == 0, proc.stderr
    for needle in ("device", "model", "data directory", "sandbox", str(_isolated_home)):
        assert needle in proc.stdout


@pytest.mark.model
def test_run_json_contract_on_the_bundled_model(_isolated_home, model_cache_dir):
    env = {"METAGENT_MODEL__CACHE_DIR": str(model_cache_dir), "METAGENT_MODEL__MAX_NEW_TOKENS": "48"}
    proc = metagent("run", "what is 12*12?", "--json", "--kind", "tool", "--approve", "no",
                    home=_isolated_home, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads(proc.stdout)
    assert {"answer", "citations", "tool_calls", "task_kind", "adapter", "verdicts", "timings", "usage"} <= set(result)
    assert result["task_kind"] == "tool"
    assert result["tool_calls"] and result["tool_calls"][0]["name"] in {"calculator", "python", "read_file",
                                                                      "write_file", "list_dir", "search_docs",
                                                                      "recall"}
    for v in result["verdicts"]:
        assert set(v) == {"checkpoint", "action", "reason"} and v["action"] in {"allow", "redact", "ask", "block"}
    assert result["usage"]["completion_tokens"] > 0


def test_empty_arguments_are_refused_clearly(_isolated_home):
    empty = metagent("ingest", "", home=_isolated_home)
    assert empty.returncode == 2 and "empty path" in empty.stderr
    forget = metagent("memory", "forget", "--user", "", home=_isolated_home)
    assert forget.returncode == 2 and "Traceback" not in forget.stderr
    kind = metagent("run", "hi", "--kind", "nosuch", home=_isolated_home, timeout=60)
    assert kind.returncode == 2 and "unknown task kind 'nosuch'" in kind.stderr and "chat" in kind.stderr


def test_a_system_directory_is_never_the_workspace(_isolated_home):
    proc = metagent("tools", "call", "list_dir", "{}", home=_isolated_home, env={"METAGENT_TOOLS__WORKSPACE": "/"})
    assert proc.returncode == 2 and "system or home directory" in proc.stderr


def test_the_data_directory_is_never_inside_the_workspace(_isolated_home):
    for workspace in (_isolated_home, _isolated_home.parent):
        proc = metagent("tools", "call", "list_dir", "{}", home=_isolated_home,
                        env={"METAGENT_TOOLS__WORKSPACE": str(workspace)})  # fmt: skip
        assert proc.returncode == 2 and "contains the data directory" in proc.stderr, proc.stderr


def test_resume_without_a_pending_approval_is_a_fast_clear_error(_isolated_home):
    proc = metagent("resume", "nothing-here", "yes", home=_isolated_home, timeout=60)
    assert proc.returncode == 2 and "no pending approval" in proc.stderr
