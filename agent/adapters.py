"""The adapter registry: LoRA adapters on disk, and which task kind uses which.

Adapters live in `<home>/adapters/<name>/`, each a PEFT directory (adapter_config.json plus
adapter_model.safetensors or .bin). A task kind uses:

    1. the adapter `settings.adapters[kind]` names (settings.toml: [adapters] sql = "sql-lora"), else
    2. the adapter whose directory is named exactly like the kind, else
    3. none: the base model.

The registry only reads directories; loading an adapter into the model is the engine's job
(`TransformersLLM`, which receives `paths()`). Broken directories and mappings to adapters that do not exist
are listed with the reason (`metagent adapters list`), never raised while a run picks its adapter.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from pathlib import Path

from agent.config import Settings
from agent.errors import ConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter directory (or a settings mapping to a missing one): usable when `problem` is None."""

    name: str
    path: Path
    base_model: str | None
    kinds: tuple[str, ...]
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


class AdapterRegistry:
    """Lists the adapters in the data directory and maps task kinds to them (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.adapters_dir
        self._by_kind = dict(settings.adapters)
        # A model server serves its adapters itself: those in [model] adapter_models need no directory here.
        self._served = set(settings.model.adapter_models) if settings.model.backend == "openai" else set()

    def list(self) -> list[AdapterInfo]:
        """Every adapter directory, usable or not, then mappings to adapters that are not there."""
        found = {info.name: info for info in (self._read(d) for d in self._dirs())}
        missing: dict[str, builtins.list[str]] = {}
        for kind, name in sorted(self._by_kind.items()):
            if name not in found:
                missing.setdefault(name, []).append(kind)
        for name, kinds in missing.items():
            found[name] = AdapterInfo(
                name, self.root / name, None, tuple(kinds),
                problem=f"not found: settings map kind(s) {', '.join(kinds)} to it but {self.root / name} "
                        "does not exist",
            )
        return sorted(found.values(), key=lambda info: info.name)

    def paths(self) -> dict[str, Path]:
        """Usable adapters by name: what the engine may load."""
        return {info.name: info.path for info in self.list() if info.usable}

    def path(self, name: str) -> Path:
        for info in self.list():
            if info.name == name:
                if info.problem:
                    raise ConfigError(f"adapter {name!r} cannot be used: {info.problem}")
                return info.path
        known = ", ".join(self.paths()) or "none"
        raise ConfigError(f"unknown adapter {name!r} (usable adapters: {known}); adapters live in {self.root}")

    def for_kind(self, kind: str) -> str | None:
        """The adapter a task kind uses, or None for the base model (also when the mapped one is unusable)."""
        name = self._by_kind.get(kind, kind)
        if name in self._served:
            return name
        directory = self.root / name
        if directory.is_dir() and self._read(directory).usable:
            return name
        return None

    def _dirs(self) -> builtins.list[Path]:
        if not self.root.is_dir():
            return []
        # Dot-directories are a trainer's scratch space, not adapters.
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _kinds_of(self, name: str) -> tuple[str, ...]:
        kinds = [kind for kind, target in self._by_kind.items() if target == name]
        if name not in self._by_kind:  # the naming convention: kind "<name>" uses adapter "<name>"
            kinds.append(name)
        return tuple(sorted(set(kinds)))

    def _read(self, directory: Path) -> AdapterInfo:
        name = directory.name
        kinds = self._kinds_of(name)
        config_file = directory / CONFIG_FILE
        if not config_file.is_file():
            return AdapterInfo(name, directory, None, kinds, problem=f"no {CONFIG_FILE} (not a PEFT adapter)")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return AdapterInfo(name, directory, None, kinds, problem=f"unreadable {CONFIG_FILE}: {e}")
        if not isinstance(config, dict):
            return AdapterInfo(name, directory, None, kinds, problem=f"{CONFIG_FILE} is not a JSON object")
        base = config.get("base_model_name_or_path")
        base_model = base if isinstance(base, str) else None
        if not any((directory / w).is_file() for w in WEIGHT_FILES):
            return AdapterInfo(name, directory, base_model, kinds, problem=f"no weights ({' or '.join(WEIGHT_FILES)})")
        return AdapterInfo(name, directory, base_model, kinds)
