"""Model resolution and loading: clear ModelLoadErrors for bad paths, and a GGUF conversion cache that works."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.errors import ModelLoadError
from agent.llm import loading
from agent.llm.engine import TransformersLLM
from agent.llm.loading import (
    SETUP_HINT,
    bundled_gguf,
    cache_key,
    cached_conversion,
    load_model,
    pick_device,
    pick_dtype,
    resolve_source,
)
from agent.types import LLMRequest, Message
from tests.llm.conftest import TinyFactory

TINY_REQUEST = LLMRequest("act", (Message("user", "hi"),), max_new_tokens=3)


def with_model(settings: Settings, **model: Any) -> Settings:
    return settings.model_copy(update={"model": settings.model.model_copy(update=model)})


def test_empty_path_means_the_bundled_gguf() -> None:
    source = resolve_source("")
    assert source.kind == "gguf" and source.path == bundled_gguf() and source.path.stat().st_size > 50_000_000


def test_missing_path_names_it_and_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError) as raised:
        resolve_source(str(missing))
    assert str(missing) in str(raised.value) and SETUP_HINT in str(raised.value)


def test_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("garbage")
    with pytest.raises(ModelLoadError, match=f"{tmp_path} is not a model directory.*METAGENT_MODEL__PATH"):
        resolve_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        resolve_source(str(tmp_path))


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelLoadError, match=f"{fake} is not a GGUF file"):
        resolve_source(str(fake))


def test_a_hub_id_outside_the_local_cache_is_never_downloaded() -> None:
    with pytest.raises(ModelLoadError, match="'metagent-tests/not-a-cached-model'.*never downloads"):
        resolve_source("metagent-tests/not-a-cached-model")


def test_a_truncated_gguf_is_a_model_load_error_and_leaves_no_cache(settings: Settings, tmp_path: Path) -> None:
    truncated = tmp_path / "small.gguf"
    with bundled_gguf().open("rb") as f:
        truncated.write_bytes(f.read(4096))  # a valid header, then nothing
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as raised:
        load_model(with_model(settings, path=str(truncated), cache_dir=str(cache)))
    assert str(truncated) in str(raised.value) and "truncated or corrupt" in str(raised.value)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def tiny_model_dir(tiny_model: TinyFactory, tokenizer: Any, folder: Path) -> Path:
    """A Hugging Face model directory holding tiny_model(0) and the bundled tokenizer."""
    tiny_model(0).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_a_corrupt_safetensors_file_is_a_model_load_error(tiny_model: TinyFactory, tokenizer: Any,
                                                          settings: Settings, tmp_path: Path) -> None:
    folder = tiny_model_dir(tiny_model, tokenizer, tmp_path / "tiny")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"could not load the model from {folder}"):
        load_model(with_model(settings, path=str(folder)))


def test_a_model_directory_loads_with_progress(tiny_model: TinyFactory, tokenizer: Any, settings: Settings,
                                               tmp_path: Path) -> None:
    folder = tiny_model_dir(tiny_model, tokenizer, tmp_path / "tiny")
    messages: list[str] = []
    llm = TransformersLLM.from_settings(with_model(settings, path=str(folder)), progress=messages.append)
    assert any("loading weights" in m for m in messages) and "model ready" in messages[-1]
    assert llm.model.device.type == "cpu" and llm.model.dtype.is_floating_point
    assert llm.complete(TINY_REQUEST).usage.completion_tokens == 3


def test_device_and_dtype_choice() -> None:
    import torch

    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("float16", "cpu") == torch.float16


def test_the_gguf_conversion_is_cached(bundled_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundled_dir.name == cache_key(bundled_gguf())
    assert (bundled_dir / "config.json").is_file() and (bundled_dir / "model.safetensors").is_file()

    def convert_again(*_: Any) -> None:
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(loading, "_convert", convert_again)
    started = time.perf_counter()
    assert cached_conversion(bundled_gguf(), bundled_dir.parent) == bundled_dir
    assert time.perf_counter() - started < 0.5


@pytest.mark.model
def test_the_bundled_model_loads_from_the_cache_quickly(bundled_dir: Path, settings: Settings) -> None:
    messages: list[str] = []
    loaded = load_model(with_model(settings, cache_dir=str(bundled_dir.parent)), progress=messages.append)
    assert not any("converting" in m for m in messages)
    assert loaded.device == "cpu" and loaded.dtype == "float32" and loaded.load_s < 20
    assert loaded.model.config.vocab_size == 49152 and loaded.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize(("default", "setting", "expected"), [(2, 0, 2), (8, 0, 8), (1, 0, 1), (2, 3, 3)])
def test_cpu_threads_are_torch_default_unless_set(monkeypatch: pytest.MonkeyPatch, default: int, setting: int,
                                                  expected: int) -> None:
    import torch

    monkeypatch.setattr(loading, "_TORCH_DEFAULT_THREADS", [])
    monkeypatch.setattr(torch, "get_num_threads", lambda: default)
    assert loading.cpu_threads(setting) == expected
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # as after a load left its thread at one
    assert loading.cpu_threads(setting) == expected  # torch's default is read once: a second load keeps the count


def test_the_decode_thread_computes_on_the_configured_threads(tiny_model: TinyFactory, tokenizer: Any,
                                                              settings: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import torch

    folder = tiny_model_dir(tiny_model, tokenizer, tmp_path / "tiny")
    seen: dict[str, int] = {}

    def observed_step(self: Any) -> None:  # the decode thread's own torch thread count, as each step sees it
        seen[threading.current_thread().name] = torch.get_num_threads()
        step(self)

    from agent.llm.scheduler import Scheduler

    step = Scheduler._step
    monkeypatch.setattr(Scheduler, "_step", observed_step)
    before = torch.get_num_threads()
    try:
        llm = TransformersLLM.from_settings(with_model(settings, path=str(folder), threads=3))
        assert torch.get_num_threads() == 1  # loading leaves its own thread at one: one OpenMP pool, the decoder's
        assert llm.threads == 3 and llm.complete(TINY_REQUEST).usage.completion_tokens == 3
        assert seen == {"metagent-decode": 3}
        assert torch.get_num_threads() == 1  # the caller's thread is left as it was
    finally:
        torch.set_num_threads(before)


def test_on_threads_runs_work_in_its_own_thread_and_raises_its_error() -> None:
    import threading

    import torch

    here = threading.current_thread()
    seen = loading.on_threads(3, lambda: (threading.current_thread() is here, torch.get_num_threads()))
    assert seen == (False, 3)
    assert loading.on_threads(0, lambda: threading.current_thread() is here)  # 0: here, as things are

    def fails() -> None:
        raise ModelLoadError("bad")

    with pytest.raises(ModelLoadError, match="bad"):
        loading.on_threads(2, fails)
