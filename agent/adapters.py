"""The adapter registry: LoRA adapters on disk, and which task kind uses which.

Adapters live in `<home>/adapters/<name>/`, each a PEFT directory (adapter_config.json plus
adapter_model.safetensors or .bin), and, when `metagent adapters train` made it, metagent_adapter.json
(agent/adapter_meta.py: base model hash, kinds, data hash, metrics). A task kind uses:

    1. the adapter `settings.adapters[kind]` names (settings.toml: [adapters] sql = "sql-lora"), else
    2. the adapter whose metadata lists the kind (the newest, when several do), else
    3. the adapter whose directory is named exactly like the kind, else
    4. none: the base model.

An adapter whose metadata records another base model (its sha256 differs from the configured model's) is
unusable: LoRA weights only fit the weights they were trained on.

The registry only reads directories; loading an adapter into the model is the engine's job
(`TransformersLLM`, which receives `paths()`). Broken directories and mappings to adapters that do not exist
are listed with the reason (`metagent adapters list`), never raised while a run picks its adapter.
"""

from __future__ import annotations

import builtins
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.adapter_meta import AdapterMeta, read_meta
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
    meta: AdapterMeta | None = None  # what `metagent adapters train` recorded, when it made the adapter

    @property
    def usable(self) -> bool:
        return self.problem is None


class AdapterRegistry:
    """Lists the adapters in the data directory and maps task kinds to them (see the module docstring)."""

    def __init__(self, settings: Settings, *, base_sha256: str | None = None) -> None:
        """`base_sha256`: the base model's fingerprint (adapter_meta.base_identity); None works it out from the
        settings when an adapter's metadata needs checking."""
        self.root = settings.adapters_dir
        self._settings = settings
        self._base_sha256 = base_sha256
        self._by_kind = dict(settings.adapters)
        # A model server serves its adapters itself: those in [model] adapter_models need no directory here.
        self._served = set(settings.model.adapter_models) if settings.model.backend == "openai" else set()

    def list(self) -> list[AdapterInfo]:
        """Every adapter directory, usable or not, then mappings to adapters that are not there."""
        claimed = self._claimed_kinds()
        found = {info.name: info for info in (self._read(d, claimed) for d in self._dirs())}
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

    def get(self, name: str) -> AdapterInfo:
        """One adapter, usable or not (`metagent adapters show`); ConfigError when there is no such adapter."""
        for info in self.list():
            if info.name == name:
                return info
        known = ", ".join(info.name for info in self.list()) or "none"
        raise ConfigError(f"no adapter named {name!r} in {self.root} (adapters: {known})")

    def remove(self, name: str) -> Path:
        """Delete an adapter's directory (renamed aside first, so a reader never sees half of it)."""
        directory = self.root / name
        if name.startswith(".") or "/" in name or not directory.is_dir():
            known = ", ".join(p.name for p in self._dirs()) or "none"
            raise ConfigError(f"no adapter directory named {name!r} in {self.root} (adapters: {known})")
        aside = self.root / f".removing-{name}-{uuid.uuid4().hex[:8]}"
        directory.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
        return directory

    def for_kind(self, kind: str) -> str | None:
        """The adapter a task kind uses, or None for the base model (also when the mapped one is unusable)."""
        name = self._by_kind.get(kind) or self._claimed_kinds().get(kind, kind)
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

    def _kinds_of(self, name: str, claimed: dict[str, str]) -> tuple[str, ...]:
        kinds = [kind for kind, target in self._by_kind.items() if target == name]
        kinds += [kind for kind, target in claimed.items() if target == name and kind not in self._by_kind]
        if name not in self._by_kind and name not in claimed:  # kind "<name>" uses adapter "<name>"
            kinds.append(name)
        return tuple(sorted(set(kinds)))

    def _claimed_kinds(self) -> dict[str, str]:
        """kind -> adapter, from the adapters' metadata; the most recently trained one wins a contested kind."""
        metas = []
        for directory in self._dirs():
            try:
                meta = read_meta(directory)
            except ConfigError:
                continue  # listed with its problem by _read
            if meta is not None:
                metas.append((meta.created, directory.name, meta.kinds))
        return {kind: name for _, name, kinds in sorted(metas) for kind in kinds}

    def _base_problem(self, meta: AdapterMeta) -> str | None:
        if self._base_sha256 is None and self._settings.model.backend == "transformers":
            from agent.adapter_meta import base_identity

            try:
                self._base_sha256 = base_identity(self._settings).sha256
            except ConfigError:
                return None  # no base model to compare with: loading the model reports that
        if self._base_sha256 is None or meta.base.sha256 == self._base_sha256:
            return None
        return (f"trained on another base model ({meta.base.name}, sha256 {meta.base.sha256[:12]}...) than the "
                f"configured one (sha256 {self._base_sha256[:12]}...); retrain it on this model "
                "(metagent adapters train), or set [model] path back to the model it was trained on")

    def _read(self, directory: Path, claimed: dict[str, str] | None = None) -> AdapterInfo:
        name = directory.name
        kinds = self._kinds_of(name, self._claimed_kinds() if claimed is None else claimed)
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
        try:
            meta = read_meta(directory)
        except ConfigError as e:
            return AdapterInfo(name, directory, base_model, kinds, problem=str(e))
        problem = self._base_problem(meta) if meta is not None else None
        return AdapterInfo(name, directory, base_model, kinds, problem=problem, meta=meta)
