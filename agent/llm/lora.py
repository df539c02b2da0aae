"""LoraSet: the PEFT LoRA adapters resident on the one base model, and per-row adapter routing.

Adapters load on first use into the base model (`PeftModel.from_pretrained` injects LoRA layers into the
model's own modules; later ones `load_adapter`); the base weights are never reloaded. Every forward names
one adapter per row (lorarouter.py: a gathered LoRA product, or PEFT's mixed-batch `adapter_names`), so rows
with different adapters and base rows decode in one forward, and nothing is switched between requests (no
`set_adapter` on the hot path).

A retrained adapter (`add` with a name already loaded) loads under a new internal name (`name@2`): requests
already decoding finish on the weights they started with, new ones get the new weights, and the old copy is
deleted once no row uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from agent.errors import LLMError
from agent.llm.lorarouter import BASE, LoraRouter


class LoraSet:
    """Adapters by name: `check` in any thread; `resolve`, `route` and `collect` in the decode thread only."""

    def __init__(self, model: Any, paths: Mapping[str, Path] | None = None) -> None:
        self._model = model
        self._paths: dict[str, Path] = {name: Path(path) for name, path in (paths or {}).items()}
        self._loaded: dict[str, str] = {}  # adapter name -> internal PEFT name of its current weights
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _paths and _loaded against add() from other threads
        self.peft: Any = None  # the PeftModel wrapping the model, once an adapter is loaded
        self._router = LoraRouter()

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._paths)

    def add(self, name: str, path: Path) -> None:
        """Make an adapter available (loaded on first use); a retrained one replaces its namesake for new requests."""
        with self._lock:
            self._paths[name] = Path(path)
            self._loaded.pop(name, None)

    def check(self, name: str | None) -> None:
        """Raise LLMError for an adapter name nobody registered."""
        with self._lock:
            if name is None or name in self._paths:
                return
            known = ", ".join(sorted(self._paths)) or "none installed"
        raise LLMError(f"unknown adapter {name!r} (known adapters: {known}); see `metagent adapters list`")

    def resolve(self, name: str | None) -> str:
        """The internal name to route a row to (loading the adapter first if needed); BASE for None."""
        if name is None:
            return BASE
        with self._lock:
            internal = self._loaded.get(name)
            path = self._paths.get(name)
        if internal is not None:
            return internal
        if path is None:
            self.check(name)
        version = self._versions.get(name, 0) + 1
        internal = name if version == 1 else f"{name}@{version}"
        self._load(internal, Path(str(path)))
        self._versions[name] = version
        with self._lock:
            self._loaded[name] = internal
        return internal

    def route(self, names: Sequence[str]) -> Any:
        """A context in which a forward runs row i under adapter names[i]."""
        if self.peft is None:
            return nullcontext()
        return self._router.route(names)

    def collect(self, in_use: set[str]) -> None:
        """Delete replaced adapters' old weights that no row decodes with any more."""
        if self.peft is None:
            return
        with self._lock:
            current = set(self._loaded.values())
        stale = [n for n in self.peft.peft_config if n not in current and n not in in_use]
        for internal in stale:
            if len(self.peft.peft_config) > 1:
                self.peft.delete_adapter(internal)
        if stale:
            self._router.refresh(self.peft)

    def _load(self, internal: str, path: Path) -> None:
        from peft import PeftConfig, PeftModel

        name = internal.split("@")[0]
        try:
            if getattr(PeftConfig.from_pretrained(str(path)), "use_dora", False):
                raise LLMError(f"adapter {name!r} uses DoRA, which the engine cannot decode in a batch with other "
                               "adapters (PEFT's mixed-adapter forward refuses it); retrain it as plain LoRA")
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self._model, str(path), adapter_name=internal,
                                                      is_trainable=False)
            else:
                self.peft.load_adapter(str(path), adapter_name=internal, is_trainable=False)
        except LLMError:
            raise
        except Exception as e:  # missing/invalid adapter_config.json, weights of another base model...
            self._drop_failed(internal)
            raise LLMError(f"cannot load adapter {name!r} from {path}: {type(e).__name__}: {e}"[:600]) from e
        self.peft.eval()
        self._router.refresh(self.peft)

    def _drop_failed(self, internal: str) -> None:
        """Delete what a failed or refused load left behind (PEFT keeps at least one adapter)."""
        if self.peft is not None and internal in self.peft.peft_config and len(self.peft.peft_config) > 1:
            self.peft.delete_adapter(internal)
