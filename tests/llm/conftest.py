"""Fixtures for the engine tests: the bundled model's tokenizer, tiny random Llama models, the real model.

The bundled GGUF is converted once per session into the session `model_cache_dir` (~40 s on 2 cores); every
test here, tiny-model ones included, reuses that conversion for the real 49k-token SmolLM2 tokenizer.
Set METAGENT_TEST_MODEL_CACHE to a directory to keep the conversion between sessions while developing, or
METAGENT_TEST_TOKENIZER to a directory holding just the tokenizer's files (tokenizer.json, tokenizer_config.json,
chat_template.jinja) where the bundled model's package is not installed: the tiny-model tests need only those.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.llm.engine import TransformersLLM
from agent.llm.loading import bundled_gguf, cached_conversion

TinyFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def bundled_dir(model_cache_dir: Path) -> Path:
    kept = os.environ.get("METAGENT_TEST_MODEL_CACHE")
    return cached_conversion(bundled_gguf(), Path(kept) if kept else model_cache_dir)


@pytest.fixture(scope="session")
def tokenizer(request: pytest.FixtureRequest) -> Any:
    from transformers import AutoTokenizer

    folder = os.environ.get("METAGENT_TEST_TOKENIZER") or str(request.getfixturevalue("bundled_dir"))
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="session")
def tiny_model() -> TinyFactory:
    """A factory of tiny random Llama models with the SmolLM2 vocabulary (49,152 tokens, EOS 2)."""

    def make(seed: int = 0, max_positions: int = 2048) -> Any:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
            pad_token_id=2, tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()

    return make


@pytest.fixture(scope="session")
def tiny_llm(tiny_model: TinyFactory, tokenizer: Any) -> TransformersLLM:
    return TransformersLLM(tiny_model(0), tokenizer, name="tiny")


@pytest.fixture(scope="session")
def bundled_llm(bundled_dir: Path, tokenizer: Any) -> TransformersLLM:
    """The real SmolLM2-135M-Instruct, loaded once for the session's model tests."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(bundled_dir), dtype=torch.float32, local_files_only=True)
    return TransformersLLM(model.eval(), tokenizer, name="SmolLM2-135M-Instruct")
