"""Shared fixtures. Every test gets its own data directory; nothing touches the user's real one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Settings


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("METAGENT_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("METAGENT_") and key not in ("METAGENT_HOME", "METAGENT_TEST_HOME_ROOT"):
            monkeypatch.delenv(key)
    yield home


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-weights cache for the whole session, so the bundled GGUF is de-quantized once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def settings(_isolated_home: Path, model_cache_dir: Path) -> Settings:
    s = Settings.load(env={"METAGENT_HOME": str(_isolated_home)})
    return s.model_copy(update={"model": s.model.model_copy(update={"cache_dir": str(model_cache_dir)})})
