"""Assembly: build the services of one process from Settings (the only place that knows concrete classes).

The Agent, the CLI and the REPL get their services here, so each builds only what it needs: `metagent tools
call` never loads a model, `metagent ingest` never opens the checkpoint database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import McpServerSettings, Settings
from agent.errors import ConfigError
from agent.protocols import LLM, Embedder

if TYPE_CHECKING:
    from agent.adapters import AdapterRegistry
    from agent.classifier import TaskClassifier
    from agent.guards import Guards
    from memory import ChromaEpisodes, DocumentStore, VectorStore
    from tools import Broker, ToolRegistry
    from tools.journal import JournaledCalls

Progress = Callable[[str], None]


def open_store(settings: Settings, wait_s: float = 10.0) -> VectorStore:
    from memory import VectorStore

    return VectorStore.from_settings(settings, wait_s=wait_s)


def make_embedder() -> Embedder:
    from memory import MiniLMEmbedder

    return MiniLMEmbedder()


def make_documents(settings: Settings, store: VectorStore, embedder: Embedder) -> DocumentStore:
    from memory import DocumentStore

    return DocumentStore(store, embedder, settings.retrieval.chunk_chars, settings.retrieval.overlap_chars)


def make_episodes(settings: Settings, store: VectorStore, embedder: Embedder) -> ChromaEpisodes:
    from memory import ChromaEpisodes

    return ChromaEpisodes(store, embedder, min_score=settings.memory.min_score)


def load_llm(settings: Settings, adapters: AdapterRegistry, progress: Progress | None = None) -> LLM:
    if settings.model.backend == "openai":
        from agent.llm.openai_compat import OpenAICompatLLM

        llm = OpenAICompatLLM.from_settings(settings)
        if progress is not None:
            progress(f"model: {llm.name} at {llm.base_url}")
        return llm
    from agent.llm.engine import TransformersLLM

    return TransformersLLM.from_settings(settings, progress=progress, adapters=adapters.paths())


def make_registry(tools: Sequence[Any], modules: Sequence[str] = (), retriever: Any = None,
                  episodes: Any = None, mcp_servers: Mapping[str, McpServerSettings] | None = None) -> ToolRegistry:
    """Built-in tools plus the user's own (functions are wrapped with @tool, LangChain tools adapted) plus
    the tools of the MCP servers, which are started here; `registry.close()` stops them."""
    from tools import ToolRegistry, builtin_tools

    from_modules = [t for module in modules for t in module_tools(module)]
    registry = ToolRegistry([*builtin_tools(retriever=retriever, episodes=episodes), *tools, *from_modules])
    if mcp_servers:
        from tools.mcp_tools import register_servers

        try:
            register_servers(registry, mcp_servers)
        except BaseException:
            registry.close()
            raise
    return registry


def module_tools(module_name: str) -> list[Any]:
    """The @tool objects defined in a module named in [tools] modules (how the CLI finds a user's tools)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any import failure is theirs to fix
        raise ConfigError(f"cannot import tool module {module_name!r} ([tools] modules): "
                          f"{type(e).__name__}: {e}") from e
    found = [obj for obj in vars(module).values()
             if all(hasattr(obj, a) for a in ("spec", "run", "policy", "args_model")) and not isinstance(obj, type)]
    if not found:
        raise ConfigError(f"tool module {module_name!r} defines no @tool functions")
    return found


SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/sbin",
               "/srv", "/sys", "/tmp", "/usr", "/var")


def check_workspace(path: Path, home: Path | None = None) -> Path:
    """The workspace is the one directory tools may write: a system directory, a whole home directory, or one
    holding the data directory (checkpoints, journal, settings, memory) must never be it."""
    resolved = path.expanduser().resolve()
    if str(resolved) in SYSTEM_DIRS or resolved == Path.home().resolve():
        raise ConfigError(f"[tools] workspace = {str(path)!r} is a system or home directory; point it at a "
                          "dedicated folder (the default is <data dir>/workspace)")
    data = home.expanduser().resolve() if home is not None else None
    if data is not None and (resolved == data or resolved in data.parents):
        raise ConfigError(f"[tools] workspace = {str(path)!r} contains the data directory {data} (checkpoints, "
                          "settings, memory): tools must never write those; the default is <data dir>/workspace")
    return resolved


def make_broker(settings: Settings, registry: ToolRegistry) -> Broker:
    from tools import Broker

    check_workspace(settings.workspace_dir, settings.home)
    settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    return Broker(registry, settings.tools, settings.workspace_dir)


def open_journal(settings: Settings, broker: Broker) -> JournaledCalls:
    """The tool call journal on <home>/tool_calls.sqlite, beside the checkpoints and never in the workspace
    (a sandboxed tool must not be able to forge or erase what ran)."""
    from tools.journal import CallJournal, JournaledCalls

    path = settings.home / "tool_calls.sqlite"
    workspace = check_workspace(settings.workspace_dir)
    if workspace == path.parent.resolve() or workspace in path.parent.resolve().parents:
        raise ConfigError(f"[tools] workspace = {str(workspace)!r} contains the data directory {settings.home}; "
                          "point it at a dedicated folder (the default is <data dir>/workspace)")
    return JournaledCalls(broker, CallJournal(path))


def make_classifier(settings: Settings, embedder: Embedder, llm: LLM | None) -> TaskClassifier:
    from agent.classifier import TaskClassifier, load_kinds

    c = settings.classifier
    return TaskClassifier(embedder, load_kinds(settings.kinds_file), llm, c.threshold, c.margin,
                          kinds_file=settings.kinds_file)


def open_checkpointer(settings: Settings) -> Any:
    """LangGraph's SQLite saver on <home>/checkpoints.sqlite (threads and interrupted runs survive restarts)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    settings.home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(settings.checkpoint_db), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return SqliteSaver(conn)


@dataclass
class Services:
    """Everything an Agent holds; `close()` releases the store lock and the database."""

    settings: Settings
    llm: LLM
    embedder: Embedder
    store: VectorStore
    documents: DocumentStore
    episodes: ChromaEpisodes
    classifier: TaskClassifier
    registry: ToolRegistry
    broker: Broker
    adapters: AdapterRegistry
    guards: Guards
    checkpointer: Any
    journal: JournaledCalls
    closed: bool = field(default=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.registry.close()  # stops the MCP servers
        self.store.close()
        self.journal.close()
        conn = getattr(self.checkpointer, "conn", None)
        if conn is not None:
            conn.close()


def build_services(settings: Settings, llm: LLM | None, tools: Sequence[Any], embedder: Embedder | None,
                   progress: Progress | None) -> Services:
    from agent.adapters import AdapterRegistry
    from agent.guards import Guards

    say = progress or (lambda _msg: None)
    say("opening the data directory")
    store = open_store(settings)
    registry: ToolRegistry | None = None
    try:
        embedder = embedder or make_embedder()
        documents = make_documents(settings, store, embedder)
        episodes = make_episodes(settings, store, embedder)
        adapters = AdapterRegistry(settings)
        if llm is None:
            llm = load_llm(settings, adapters, progress)
        registry = make_registry(tools, settings.tools.modules, retriever=documents, episodes=episodes,
                                 mcp_servers=settings.mcp.servers)
        broker = make_broker(settings, registry)
        return Services(
            settings=settings, llm=llm, embedder=embedder, store=store, documents=documents,
            episodes=episodes, classifier=make_classifier(settings, embedder, llm), registry=registry,
            broker=broker, adapters=adapters, guards=Guards(settings.guards, settings.tools.approval),
            checkpointer=open_checkpointer(settings), journal=open_journal(settings, broker),
        )
    except BaseException:
        store.close()
        if registry is not None:
            registry.close()
        raise
