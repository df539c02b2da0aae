"""Adapters: the registry reads the data directory; the engine hot-swaps LoRA adapters on one base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.adapters import AdapterRegistry
from agent.config import Settings
from agent.errors import ConfigError, LLMError
from agent.llm.engine import TransformersLLM
from agent.types import LLMRequest, Message
from tests.llm.conftest import TinyFactory


def fake_adapter(root: Path, name: str, config: str | None = '{"base_model_name_or_path": "tiny"}',
                 weights: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "adapter_config.json").write_text(config)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"not read by the registry")
    return folder


def make_lora(tiny_model: TinyFactory, folder: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter for tiny_model(0), with lora_B perturbed so that it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 2.0)
    peft_model.save_pretrained(str(folder))
    return folder


def ask(adapter: str | None) -> LLMRequest:
    return LLMRequest("act", (Message("user", "Say something."),), adapter=adapter, max_new_tokens=12)


def test_registry_lists_usable_and_broken_adapters(settings: Settings) -> None:
    root = settings.adapters_dir
    fake_adapter(root, "sql")
    fake_adapter(root, "no-config", config=None)
    fake_adapter(root, "bad-json", config="{oops")
    fake_adapter(root, "no-weights", weights=False)
    (root / ".training-scratch").mkdir()
    registry = AdapterRegistry(settings.model_copy(update={"adapters": {"math": "sql", "poetry": "missing"}}))
    infos = {info.name: info for info in registry.list()}
    assert set(infos) == {"sql", "no-config", "bad-json", "no-weights", "missing"}
    assert infos["sql"].usable and infos["sql"].base_model == "tiny" and infos["sql"].kinds == ("math", "sql")
    assert "adapter_config.json" in (infos["no-config"].problem or "")
    assert "unreadable" in (infos["bad-json"].problem or "")
    assert "no weights" in (infos["no-weights"].problem or "")
    assert "poetry" in (infos["missing"].problem or "") and infos["missing"].kinds == ("poetry",)
    assert registry.paths() == {"sql": root / "sql"}


def test_registry_maps_kinds_by_settings_then_by_name(settings: Settings) -> None:
    fake_adapter(settings.adapters_dir, "sql")
    fake_adapter(settings.adapters_dir, "legal")
    fake_adapter(settings.adapters_dir, "broken", weights=False)
    mapped = settings.model_copy(update={"adapters": {"math": "sql", "legal": "sql", "poetry": "missing",
                                                      "broken": "broken"}})
    registry = AdapterRegistry(mapped)
    assert registry.for_kind("math") == "sql"
    assert registry.for_kind("legal") == "sql"  # settings win over the naming convention
    assert registry.for_kind("sql") == "sql"  # the naming convention
    assert registry.for_kind("chit-chat") is None
    assert registry.for_kind("poetry") is None  # mapped to an adapter that is not there: base model
    assert registry.for_kind("broken") is None
    assert registry.path("legal") == settings.adapters_dir / "legal"
    with pytest.raises(ConfigError, match="unknown adapter 'nope'.*legal, sql"):
        registry.path("nope")
    with pytest.raises(ConfigError, match="cannot be used: no weights"):
        registry.path("broken")


def test_registry_without_an_adapters_directory_is_empty(settings: Settings) -> None:
    registry = AdapterRegistry(settings)
    assert registry.list() == [] and registry.paths() == {} and registry.for_kind("math") is None


def test_engine_swaps_adapters_on_one_base_model(tiny_model: TinyFactory, tokenizer: Any, tmp_path: Path) -> None:
    adapters = {"one": make_lora(tiny_model, tmp_path / "one", seed=1),
                "two": make_lora(tiny_model, tmp_path / "two", seed=2)}
    model = tiny_model(0)
    embedding = model.get_input_embeddings().weight
    llm = TransformersLLM(model, tokenizer, adapters=adapters)
    base = llm.complete(ask(None)).text
    one = llm.complete(ask("one")).text
    two = llm.complete(ask("two")).text
    assert len({base, one, two}) == 3
    assert llm.complete(ask(None)).text == base  # adapters disabled: exactly the base model again
    assert llm.complete(ask("one")).text == one  # switching back and forth is stable
    assert llm.model is model and model.get_input_embeddings().weight is embedding  # never reloaded
    with pytest.raises(LLMError, match="unknown adapter 'three'.*one, two"):
        llm.complete(ask("three"))
    llm.add_adapter("one", adapters["two"])  # retrained: replaces the loaded adapter of that name
    assert llm.complete(ask("one")).text == two and llm.complete(ask(None)).text == base


def test_registry_paths_feed_the_engine(settings: Settings, tiny_model: TinyFactory, tokenizer: Any) -> None:
    make_lora(tiny_model, settings.adapters_dir / "math", seed=3)
    registry = AdapterRegistry(settings)
    llm = TransformersLLM(tiny_model(0), tokenizer, adapters=registry.paths())
    kind_adapter = registry.for_kind("math")
    assert llm.adapters == ["math"] and kind_adapter == "math"
    assert llm.complete(ask(kind_adapter)).text != llm.complete(ask(None)).text


def test_an_adapter_that_does_not_load_is_an_llm_error(tiny_model: TinyFactory, tokenizer: Any,
                                                        tmp_path: Path) -> None:
    broken = fake_adapter(tmp_path, "broken", config=json.dumps({"peft_type": "LORA"}))
    llm = TransformersLLM(tiny_model(0), tokenizer)
    base = llm.complete(ask(None)).text
    llm.add_adapter("broken", broken)
    with pytest.raises(LLMError, match=r"cannot load adapter 'broken' from .*broken"):
        llm.complete(ask("broken"))
    assert llm.complete(ask(None)).text == base  # the engine still serves requests, unchanged
