"""Settings: one pydantic model, read once at the entry point from a TOML file and the environment.

Where things live (the data directory, `$METAGENT_HOME` or the platform's per-user data directory):

    settings.toml       optional; every key has a default (see `Settings`)
    chroma/             vector store: ingested documents and episodes (owned by one process, see store.lock)
    store.lock          held by the process that owns chroma/
    checkpoints.sqlite  LangGraph checkpoints: threads and interrupted runs
    kinds.json          task kinds taught with `metagent teach`
    adapters/           LoRA adapters, one PEFT directory each
    cache/models/       converted weights (the bundled GGUF de-quantized once)
    workspace/          the only directory file tools and the sandbox may write

Environment overrides take the form METAGENT_<SECTION>__<KEY>, e.g. METAGENT_MODEL__DEVICE=cpu.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError

ENV_PREFIX = "METAGENT_"
HOME_ENV = "METAGENT_HOME"

DEFAULT_INJECTION_PATTERNS = (
    r"ignore (all |any )?(the )?(previous|prior|above|earlier) (instructions|prompts|messages)",
    r"disregard (all |any )?(the )?(previous|prior|above|system) (instructions|prompt)",
    r"forget (all |everything )?(you were told|your instructions|previous instructions)",
    r"you are now (in )?(developer|dan|jailbreak|unrestricted) mode",
    r"(reveal|print|show|repeat) (me )?(your|the) (system prompt|hidden instructions|initial instructions)",
    r"</?(system|im_start|im_end)>|<\|im_(start|end)\|>",
    r"new instructions?:",
    r"act as (an? )?(unfiltered|unrestricted|jailbroken)",
)


RedactKind = Literal["email", "phone", "card", "api_key"]
REDACT_KINDS: tuple[RedactKind, ...] = ("email", "phone", "card", "api_key")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    path: str = Field("", description="HF model directory, GGUF file, or cached hub id; empty = bundled")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = Field(384, ge=1, le=32768)
    constrained: bool = True
    repetition_penalty: float = Field(
        1.15, ge=1.0, le=3.0, description="penalty on tokens already generated, free text only; 1.0 = off"
    )
    threads: int = Field(0, ge=0, description="torch CPU threads of the decode thread (and of adapter training); "
                         "loading runs on one; 0 = torch's default")
    max_batch: int = Field(8, ge=1, le=256, description="requests decoded together in one batch; more wait their turn")
    prefix_cache_mb: int = Field(
        256, ge=0, description="KV cache of recent prompts kept for reuse (shared system prompt, tool schemas, "
        "earlier steps); 0 = off"
    )
    int4: Literal["auto", "on", "off"] = Field(
        "auto", description="CPU decode steps read 4-bit packed weights: auto = only when the weights are exactly "
        "4-bit (a Q4_1 GGUF such as the bundled model), on = any model (quantizes), off = never"
    )
    lean_decode: bool = Field(
        True, description="decode steps of Llama-family models (llama, mistral, qwen2) run a lean forward with "
        "fused products instead of transformers' (same results up to rounding); false = transformers' forward"
    )
    cuda_graphs: bool = Field(
        True, description="on a GPU, lean decode steps replay CUDA graphs over a static KV cache of max_batch rows "
        "x graph_tokens positions, allocated on the first request; false = eager steps over a growing cache"
    )
    graph_tokens: int = Field(
        4096, ge=256, le=1_048_576, description="positions per row of the GPU's static KV cache (capped by the "
        "model's context); a batch with a longer row decodes without graphs until it ends"
    )
    cache_dir: str = Field("", description="where converted weights are cached; empty = <home>/cache/models")
    # backend = "openai": an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama); see docs/llm.md.
    backend: Literal["transformers", "openai"] = Field(
        "transformers", description="transformers: run `path` in this process; openai: the server at base_url"
    )
    base_url: str = Field("", description='the server\'s OpenAI API root, e.g. "http://gpu-box:8000/v1"')
    name: str = Field("", description="the model name the server serves (vLLM: --served-model-name)")
    api_key_env: str = Field("", description="NAME of the environment variable holding the API key, never the key")
    adapter_models: dict[str, str] = Field(
        default_factory=dict, description="adapter -> the server's model name for it (vLLM --lora-modules NAME=PATH); "
        "an adapter not listed is sent under its own name"
    )
    timeout_s: float = Field(120.0, gt=0, le=3600, description="longest wait for the server's next bytes")
    max_retries: int = Field(3, ge=0, le=20, description="on connection errors, timeouts, HTTP 5xx and 429")


class AgentSettings(_Section):
    max_steps: int = Field(6, ge=1, le=100, description="act steps per run before the budget ends it")
    max_replans: int = Field(1, ge=0, le=10)
    history_messages: int = Field(8, ge=0, description="earlier turns of the thread shown to the model")
    system_prompt: str = "You are metagent, a helpful assistant that runs locally. Answer concisely."


class ClassifierSettings(_Section):
    # Tuned on a held-out set (tests/memory/test_classifier.py): MiniLM cosine to a kind's prototype is
    # 0.2-0.6 for correct in-domain requests, so a higher threshold sends right answers to a small LLM.
    # Margin 0.06 since prototypes include the kind's label: "write 'hello' into greeting.txt" (tool) then
    # scores chat 0.051 ahead, where it was 0.047 ahead before; 0.05 would send it to chat unasked.
    threshold: float = Field(0.2, ge=-1.0, le=1.0, description="below this similarity, ask the LLM")
    margin: float = Field(0.06, ge=0.0, le=2.0, description="below this gap to the runner-up, ask the LLM")


class RetrievalSettings(_Section):
    top_k: int = Field(4, ge=1, le=50)
    chunk_chars: int = Field(800, ge=100, le=20000)
    overlap_chars: int = Field(120, ge=0, le=5000)
    min_score: float = Field(0.2, ge=-1.0, le=1.0)


class MemorySettings(_Section):
    recall_k: int = Field(2, ge=0, le=20)
    min_score: float = Field(0.5, ge=-1.0, le=1.0)


class ToolPolicySettings(_Section):
    """[tools.policy.NAME]: the settings' say over one tool's policy (tools/base.py ToolPolicy); unset keys keep
    what the tool declares."""

    sandboxed: bool | None = Field(None, description="true runs it in the sandbox; false is refused")
    network: list[str] | None = Field(None, description='hosts it may reach, e.g. ["api.github.com"]; [] = none')
    filesystem: Literal["none", "workspace"] | None = None
    timeout_s: float | None = Field(None, gt=0, le=3600)
    memory_mb: int | None = Field(None, ge=32)
    output_cap_bytes: int | None = Field(None, ge=256)
    approval: Literal["never", "always", "side_effects"] | None = None
    side_effects: bool | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ToolSettings(_Section):
    workspace: str = Field("", description="directory file tools may use; empty = <home>/workspace")
    timeout_s: float = Field(10.0, gt=0, le=3600)
    output_cap_bytes: int = Field(1 << 20, ge=256, description="stdout+stderr kept per call; the child is killed there")
    workspace_cap_mb: int = Field(256, ge=1, description="most a sandboxed call may leave in the workspace")
    memory_mb: int = Field(512, ge=32)
    max_parallel: int = Field(4, ge=1, le=64)
    approval: list[str] = Field(default_factory=lambda: ["write_file"], description="tools that need a yes")
    sandbox: Literal["auto", "bwrap", "landlock", "unshare", "none"] = "auto"
    modules: list[str] = Field(default_factory=list, description="modules whose @tool functions are registered")
    policy: dict[str, ToolPolicySettings] = Field(default_factory=dict, description="per-tool policy overrides")


class McpServerSettings(_Section):
    """One MCP server started over stdio, [mcp.servers.<name>]. Its tools are named <prefix><tool name>."""

    command: list[str] = Field(description='the program and its arguments, e.g. ["python", "-m", "my_server"]')
    env: dict[str, str] = Field(
        default_factory=dict, description="the server's environment besides PATH, HOME, LANG and a few more; "
        "nothing else of the host's environment is passed"
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="per tool call")
    start_timeout_s: float = Field(30.0, gt=0, le=600, description="to start the server and list its tools")
    approval: Literal["never", "always", "side_effects"] = Field(
        "side_effects", description="side_effects: ask for tools the server does not mark readOnlyHint"
    )
    tools: list[str] | None = Field(None, description="the server's tools to register; None = all")
    prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,32}$", description="prepended to each tool's name")

    @field_validator("command", mode="before")
    @classmethod
    def _a_program(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value or not isinstance(value[0], str) or not value[0].strip():
            raise ValueError(f'command must be a list naming a program, e.g. ["python", "-m", "my_server"]; '
                             f"got {value!r}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not k or "=" in k or "\0" in k]
        if bad:
            raise ValueError(f"environment variable names must be non-empty without '=': {bad}")
        return value


class McpSettings(_Section):
    servers: dict[str, McpServerSettings] = Field(default_factory=dict, description="MCP servers by name")

    @field_validator("servers")
    @classmethod
    def _server_names(cls, value: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        bad = [n for n in value if not n or len(n) > 64 or not all(c.isascii() and (c.isalnum() or c in "_-")
                                                                     for c in n)]
        if bad:
            raise ValueError(f"MCP server names {bad}: use letters, digits, '_' or '-' (at most 64)")
        return value


class GuardSettings(_Section):
    injection_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_INJECTION_PATTERNS))
    blocked_input_patterns: list[str] = Field(default_factory=list)
    redact: list[RedactKind] = Field(default_factory=lambda: list(REDACT_KINDS))
    max_input_chars: int = Field(200_000, ge=1)
    max_tool_result_chars: int = Field(8000, ge=100)
    # What to do with a tool result or retrieved passage that looks like a prompt injection.
    on_injection: Literal["block", "redact", "ask"] = "redact"


class Settings(_Section):
    home: Path = Field(default_factory=lambda: default_home())
    model: ModelSettings = Field(default_factory=lambda: ModelSettings())
    agent: AgentSettings = Field(default_factory=lambda: AgentSettings())
    classifier: ClassifierSettings = Field(default_factory=lambda: ClassifierSettings())
    retrieval: RetrievalSettings = Field(default_factory=lambda: RetrievalSettings())
    memory: MemorySettings = Field(default_factory=lambda: MemorySettings())
    tools: ToolSettings = Field(default_factory=lambda: ToolSettings())
    guards: GuardSettings = Field(default_factory=lambda: GuardSettings())
    mcp: McpSettings = Field(default_factory=lambda: McpSettings())
    adapters: dict[str, str] = Field(default_factory=dict, description="task kind -> adapter name")

    # Paths inside the data directory. Nothing is created until a command needs it.
    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def checkpoint_db(self) -> Path:
        return self.home / "checkpoints.sqlite"

    @property
    def kinds_file(self) -> Path:
        return self.home / "kinds.json"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def model_cache_dir(self) -> Path:
        return Path(self.model.cache_dir).expanduser() if self.model.cache_dir else self.home / "cache" / "models"

    @property
    def workspace_dir(self) -> Path:
        return Path(self.tools.workspace).expanduser() if self.tools.workspace else self.home / "workspace"

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Read `path` (default: <home>/settings.toml when it exists), then apply environment overrides."""
        env = dict(os.environ if env is None else env)
        home = Path(env[HOME_ENV]).expanduser() if env.get(HOME_ENV) else default_home()
        data: dict[str, Any] = {}
        file = path if path is not None else home / "settings.toml"
        if path is not None and not file.is_file():
            raise ConfigError(f"settings file not found: {file}. Create it or leave out the path.")
        if file.is_file():
            try:
                data = tomllib.loads(file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"settings file {file} is not valid TOML: {e}") from e
        data.setdefault("home", str(home))
        _apply_env(data, env)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"invalid settings (from {file} and {ENV_PREFIX}* variables):\n{e}") from e


def default_home() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("metagent", appauthor=False))


def _apply_env(data: dict[str, Any], env: dict[str, str]) -> None:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].lower().partition("__")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{key}: [{section}] is not a settings section")
        target[name] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    """Environment values are TOML scalars or arrays when they parse as such, plain strings otherwise."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
