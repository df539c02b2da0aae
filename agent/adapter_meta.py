"""What a trained adapter records about itself (metagent_adapter.json), and the base model's fingerprint.

`metagent adapters train` writes metagent_adapter.json next to the PEFT files: the base model it was trained
on (name and sha256), the task kinds it serves, the training file's sha256, the hyperparameters, the
held-out metrics before and after, the general-set check (the forgetting guard), when and with which
metagent version. The registry reads it: its kinds map to the adapter, and an adapter whose base sha256
differs from the configured base model's is listed as unusable (LoRA weights only make sense on the exact
weights they were trained on).

The base model's sha256 (`base_identity`):
    - a GGUF file (the bundled model included): sha256 of the file itself, what `sha256sum FILE` prints;
    - a model directory (or a cached hub id): sha256 over the lines "<file name> <sha256 of the file>" of
      config.json, the tokenizer files and every *.safetensors / *.bin weight file, in name order.
Hashing runs once per file version: the digests are cached in <model cache dir>/file-hashes.json by path,
size and mtime (a changed file is hashed again). Hashing costs ~1 s per GB the first time.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import Settings
from agent.errors import ConfigError

META_FILE = "metagent_adapter.json"
META_FORMAT = 1
HASH_CACHE_FILE = "file-hashes.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.jinja")


class _Record(BaseModel):
    # Unknown keys are kept: a newer metagent may record more.
    model_config = ConfigDict(extra="allow", frozen=True)


class BaseIdentity(_Record):
    name: str = Field(description="what [model] path named, e.g. 'bundled SmolLM2-135M-Instruct'")
    sha256: str
    hashed: str = Field(description="which files the sha256 covers (see agent/adapter_meta.py)")


class HeldOutMetrics(_Record):
    """Held-out numbers at one point (before or after training). None: not measured for this method."""

    examples: int = 0
    loss: float | None = Field(None, description="mean loss per assistant token")
    exact_match: float | None = Field(None, description="share of greedy final replies equal to the reference")
    score: float | None = Field(None, description="mean of the caller's scorer, when one was given")
    preference_accuracy: float | None = Field(None, description="DPO: share with logp(chosen) > logp(rejected)")
    reward_margin: float | None = Field(None, description="DPO: mean of logp(chosen) - logp(rejected)")


class GeneralCheck(_Record):
    """The forgetting guard: loss on the shipped general set with the adapter vs the base model alone."""

    examples: int
    base_loss: float
    adapter_loss: float
    change_pct: float
    threshold_pct: float
    worse: bool = Field(description="the adapter raised the general-set loss by more than threshold_pct")


class AdapterMeta(_Record):
    format: int = META_FORMAT
    name: str
    method: Literal["sft", "dpo"]
    kinds: tuple[str, ...] = ()
    base: BaseIdentity
    data_file: str
    data_sha256: str
    train_examples: int
    held_out_examples: int
    hyperparameters: dict[str, Any]
    from_adapter: str | None = None
    before: HeldOutMetrics | None = None
    after: HeldOutMetrics | None = None
    general: GeneralCheck | None = None
    device: str = ""
    train_s: float = 0.0
    examples_per_s: float = 0.0
    created: str = Field(description="UTC, ISO 8601")
    metagent_version: str


def read_meta(directory: Path) -> AdapterMeta | None:
    """The adapter's metadata; None when it has none (an adapter made elsewhere). Raises ConfigError when broken."""
    file = directory / META_FILE
    if not file.is_file():
        return None
    try:
        return AdapterMeta.model_validate_json(file.read_bytes())
    except (OSError, ValidationError) as e:
        raise ConfigError(f"unreadable {file}: {e}".splitlines()[0][:400]) from e


def write_meta(directory: Path, meta: AdapterMeta) -> None:
    (directory / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_identity(settings: Settings) -> BaseIdentity:
    """The configured base model's name and sha256 (see the module docstring). Raises ModelLoadError."""
    from agent.llm.loading import resolve_source

    source = resolve_source(settings.model.path)
    cache = _HashCache(settings.model_cache_dir / HASH_CACHE_FILE)
    if source.kind == "gguf":
        return BaseIdentity(name=source.label, sha256=cache.sha256(source.path),
                            hashed=f"the GGUF file {source.path.name}")
    files = sorted(p for p in source.path.iterdir() if p.is_file() and
                   (p.name == "config.json" or p.name in TOKENIZER_FILES or p.suffix in (".safetensors", ".bin")))
    lines = "".join(f"{p.name} {cache.sha256(p)}\n" for p in files)
    return BaseIdentity(name=source.label, sha256=hashlib.sha256(lines.encode()).hexdigest(),
                        hashed=f"{', '.join(p.name for p in files)} in {source.path}")


class _HashCache:
    """sha256 of files, remembered by (path, size, mtime) in a JSON file; a lost update only costs a rehash."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        known = self._read()
        if isinstance(known.get(key), str):
            return str(known[key])
        digest = sha256_file(path)
        known[key] = digest
        self._write(known)
        return digest

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f".{self.file.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.file)
        except OSError:
            pass  # a read-only cache directory: hash again next time
