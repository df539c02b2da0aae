"""Adapter training: file validation, SFT and DPO on a tiny random Llama, metadata, the registry, the CLI, and
the forgetting guard (requests without the adapter decode exactly as before it was trained and loaded).

The tiny model has the real SmolLM2 tokenizer and chat template (the bundled GGUF converted once per
session, as in tests/llm) so prompts are rendered by the engine's real code. Unlike tests/llm's tiny model it
has no padding row in its embeddings (that row is the end-of-turn token's, which must be learnable) and a
larger initial scale, so that a LoRA can move its output distribution within a few dozen steps.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.adapter_meta import META_FILE, BaseIdentity, read_meta
from agent.adapters import AdapterRegistry
from agent.cli import main
from agent.config import Settings
from agent.errors import ConfigError
from agent.llm.engine import TransformersLLM
from agent.training import Hyperparameters, TrainBase, TrainReport, TrainRequest, train_adapter
from agent.training_data import ChatExample, load_chat_examples, load_preference_pairs, split_held_out
from agent.training_tokens import IGNORE, Encoder
from agent.types import LLMReply, LLMRequest, Message, ToolSpec

TINY = BaseIdentity(name="tiny", sha256="ab" * 32, hashed="nothing: a test model")
THINGS = ["sky", "car", "house", "tree", "river", "shirt", "door", "cup", "lamp", "bike", "chair", "boat"]
FAST = Hyperparameters(epochs=6, lr=3e-2, batch_size=8, seed=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads cost 3x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol_tokenizer(model_cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from agent.llm.loading import bundled_gguf, cached_conversion

    kept = os.environ.get("METAGENT_TEST_MODEL_CACHE")
    folder = cached_conversion(bundled_gguf(), Path(kept) if kept else model_cache_dir)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tiny_llm(tokenizer: Any, seed: int = 0) -> TransformersLLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, initializer_range=0.3)
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)
    return TransformersLLM(model.eval(), tokenizer, constrained=False, name="tiny")


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def question(i: int) -> str:
    return f"What color is the {THINGS[i % len(THINGS)]} number {i}?"


def blue_rows(count: int) -> list[dict[str, Any]]:
    """A learnable toy task: whatever the question, the answer is "blue"."""
    return [{"messages": [{"role": "user", "content": question(i)}, {"role": "assistant", "content": "blue"}]}
            for i in range(count)]


def preference_rows(count: int) -> list[dict[str, Any]]:
    return [{"prompt": [{"role": "user", "content": question(i)}], "chosen": "blue", "rejected": "red",
             "kind": "colors"} for i in range(count)]


def ask(text: str, adapter: str | None = None) -> LLMRequest:
    return LLMRequest("answer", (Message("user", text),), adapter=adapter, max_new_tokens=8)


@dataclass(frozen=True)
class Trained:
    """One SFT run shared by several tests (training is the slow part)."""

    llm: TransformersLLM
    report: TrainReport
    base_replies: list[LLMReply]
    base_state: dict[str, Any]


@pytest.fixture(scope="module")
def trained(smol_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    folder = tmp_path_factory.mktemp("trained")
    llm = tiny_llm(smol_tokenizer)
    prompts = ["hello", question(999), "Tell me about boats."]
    base_replies = [llm.complete(ask(p)) for p in prompts]  # the base model, before any adapter exists
    base_state = {k: v.clone() for k, v in llm.model.state_dict().items()}
    scored: list[str] = []

    def scorer(example: ChatExample, reply: LLMReply) -> float:
        scored.append(example.target)
        return 1.0 if "blue" in reply.text else 0.0

    import torch

    threads: set[int] = set()
    llm.threads = 2  # the engine's decode-thread count: training and its evaluations use it in their own thread
    request = TrainRequest("blue", write_rows(folder / "blue.jsonl", blue_rows(30)), TrainBase(llm, TINY),
                           folder / "adapters", kinds=("colors",), hyper=FAST, scorer=scorer)
    report = train_adapter(request, progress=lambda event: threads.add(torch.get_num_threads()))
    assert threads == {2} and torch.get_num_threads() == 1  # then put back (the module runs on one)
    llm.threads = 0
    assert scored == ["blue"] * 12  # 6 held-out examples, scored before and after
    return Trained(llm, report, base_replies, base_state)


# -- the training file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"text": "no messages"}', '"messages" must be a non-empty list'),
    ('{"messages": []}', '"messages" must be a non-empty list'),
    ('{"messages": [{"role": "robot", "content": "beep"}]}', "unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}', "non-empty"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "must be a string"),
    ('{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}', "last message"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": [{}]}',
     'tools\\[0\\] needs a "name"'),
])
def test_a_bad_row_is_reported_with_its_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write_rows(tmp_path / "data.jsonl", [*blue_rows(3), "", line, *blue_rows(2)])
    with pytest.raises(ConfigError, match=f"data.jsonl:5: .*{expected}"):
        load_chat_examples(path)


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "", "chosen": "a", "rejected": "b"}, '"prompt" must be a non-empty list'),
    ({"prompt": "q", "chosen": "a"}, '"rejected" must be a non-empty string'),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "the same text"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "must end before the reply"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "kind": 3}, '"kind" must be a string or null'),
])
def test_a_bad_preference_row_is_reported_with_its_line(tmp_path: Path, row: dict[str, Any], expected: str) -> None:
    path = write_rows(tmp_path / "pairs.jsonl", [*preference_rows(2), row])
    with pytest.raises(ConfigError, match=f"pairs.jsonl:3: .*{expected}"):
        load_preference_pairs(path)


def test_rows_read_tool_calls_and_tools_and_split_the_same_way_every_time(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                            "name": "calculator", "arguments": "{\"expression\": \"2+2\"}"}}]},
                        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "It is 4."}],
           "tools": [{"type": "function", "function": {"name": "calculator", "description": "Adds.",
                                                       "parameters": {"type": "object"}}}]}
    (example,) = load_chat_examples(write_rows(tmp_path / "calls.jsonl", [row]))
    assert example.messages[1].content == '<tool_call>\n{"name": "calculator", "arguments": {"expression": ' \
                                          '"2+2"}}\n</tool_call>'
    assert example.tools == (ToolSpec("calculator", "Adds.", {"type": "object"}),)
    assert example.target == "It is 4." and len(example.prompt) == 3
    items = list(range(50))
    train, held = split_held_out(items, 0.2, seed=7, where="x")
    assert (train, held) == split_held_out(items, 0.2, seed=7, where="x") and len(held) == 10
    assert sorted(train + held) == items and held != split_held_out(items, 0.2, seed=8, where="x")[1]
    with pytest.raises(ConfigError, match="x has 4 row\\(s\\): too few for a held-out split"):
        split_held_out(items[:4], 0.2, seed=0, where="x")


def test_bad_data_trains_nothing(smol_tokenizer: Any, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "data.jsonl", [*blue_rows(10), '{"messages": [{"role": "user", "content": "x"}]}'])
    request = TrainRequest("blue", data, TrainBase(tiny_llm(smol_tokenizer), TINY), tmp_path / "adapters")
    with pytest.raises(ConfigError, match="data.jsonl:11: no assistant turn"):
        train_adapter(request)
    few = write_rows(tmp_path / "few.jsonl", blue_rows(3))
    with pytest.raises(ConfigError, match="few.jsonl has 3 row"):
        train_adapter(replace(request, data=few))
    assert not (tmp_path / "adapters").exists()


# -- what the model is trained on ---------------------------------------------------------------------


def test_only_assistant_tokens_are_labelled_and_prompts_are_the_engines(smol_tokenizer: Any) -> None:
    llm = tiny_llm(smol_tokenizer)
    tools = (ToolSpec("lookup", "Looks a word up.", {"type": "object", "properties": {"word": {"type": "string"}}}),)
    example = ChatExample((Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "Hello!"),
                           Message("user", "define cat"), Message("assistant", "A small furry animal.")), tools)
    row = Encoder(llm).chat(example)
    labelled = [tok for tok, label in zip(row.ids, row.labels, strict=True) if label != IGNORE]
    assert smol_tokenizer.decode(labelled) == "Hello!<|im_end|>A small furry animal.<|im_end|>"
    prompt = llm.prompt_ids(LLMRequest("act", example.prompt, tools=tools))  # what inference sees
    assert list(row.ids[:len(prompt)]) == prompt and "lookup" in smol_tokenizer.decode(prompt)


# -- SFT, metadata, registry ----------------------------------------------------------------------------


def test_training_lowers_the_held_out_loss_and_learns_the_answer(trained: Trained) -> None:
    meta = trained.report.meta
    before, after = trained.report.before, trained.report.after
    assert before is not None and after is not None and before.loss is not None and after.loss is not None
    assert (meta.train_examples, meta.held_out_examples, before.examples) == (24, 6, 6)
    assert after.loss < before.loss / 5
    assert (before.exact_match, after.exact_match) == (0.0, 1.0)
    assert (before.score, after.score) == (0.0, 1.0)
    assert meta.examples_per_s > 0 and meta.train_s > 0


def test_the_saved_adapter_serves_the_kind_and_answers_like_in_training(trained: Trained, smol_tokenizer: Any,
                                                                         settings: Settings) -> None:
    shutil.copytree(trained.report.path, settings.adapters_dir / "blue")
    registry = AdapterRegistry(settings, base_sha256=TINY.sha256)
    (info,) = registry.list()
    assert info.usable and info.kinds == ("blue", "colors") and info.meta is not None  # its own name: a kind too
    assert info.meta == read_meta(trained.report.path) and info.meta.base == TINY
    assert info.meta.kinds == ("colors",) and info.meta.method == "sft" and len(info.meta.data_sha256) == 64
    assert registry.for_kind("colors") == "blue" and registry.for_kind("blue") == "blue"
    assert registry.for_kind("paint") is None
    fresh = tiny_llm(smol_tokenizer)  # the same base weights, loaded anew; the adapter from disk
    fresh.add_adapter("blue", registry.path("blue"))
    assert fresh.complete(ask(question(1000), "blue")).text == "blue"
    assert fresh.complete(ask(question(1000))).text != "blue"


def test_settings_win_over_the_metadata_and_the_metadata_over_the_directory_name(trained: Trained,
                                                                                  settings: Settings) -> None:
    shutil.copytree(trained.report.path, settings.adapters_dir / "blue")
    shutil.copytree(trained.report.path, settings.adapters_dir / "colors")  # named like the kind blue claims
    meta = read_meta(settings.adapters_dir / "colors")
    assert meta is not None
    (settings.adapters_dir / "colors" / META_FILE).write_text(
        meta.model_copy(update={"kinds": ("paint",), "created": "2000-01-01T00:00:00+00:00"}).model_dump_json())
    registry = AdapterRegistry(settings, base_sha256=TINY.sha256)
    assert registry.for_kind("colors") == "blue" and registry.for_kind("paint") == "colors"
    mapped = AdapterRegistry(settings.model_copy(update={"adapters": {"colors": "colors"}}), base_sha256=TINY.sha256)
    assert mapped.for_kind("colors") == "colors"
    assert {i.name: i.kinds for i in registry.list()} == {"blue": ("blue", "colors"), "colors": ("paint",)}


def test_an_adapter_of_another_base_model_is_unusable(trained: Trained, settings: Settings) -> None:
    shutil.copytree(trained.report.path, settings.adapters_dir / "blue")
    registry = AdapterRegistry(settings)  # the configured base: the bundled model, hashed from its GGUF
    (info,) = registry.list()
    assert info.problem is not None and "trained on another base model (tiny, sha256 abababababab" in info.problem
    assert registry.for_kind("colors") is None and registry.paths() == {}
    with pytest.raises(ConfigError, match="cannot be used: trained on another base model"):
        registry.path("blue")


def test_an_existing_adapter_needs_force_and_survives_a_failed_run(trained: Trained, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    shutil.copytree(trained.report.path, adapters / "blue")
    before = (adapters / "blue" / META_FILE).read_text()
    request = TrainRequest("blue", Path(trained.report.meta.data_file), TrainBase(trained.llm, TINY), adapters)
    with pytest.raises(ConfigError, match="already exists.*--force"):
        train_adapter(request)
    with pytest.raises(ConfigError, match="adapter name '../x'"):
        train_adapter(replace(request, name="../x"))
    assert (adapters / "blue" / META_FILE).read_text() == before
    assert sorted(p.name for p in adapters.iterdir()) == ["blue"]  # no temporary directory left


# -- the forgetting guard -------------------------------------------------------------------------------


def test_requests_without_the_adapter_decode_exactly_as_before(trained: Trained) -> None:
    import torch

    llm = trained.llm
    state = llm.model.state_dict()
    assert state.keys() == trained.base_state.keys()
    assert all(torch.equal(state[k], v) for k, v in trained.base_state.items())  # LoRA layers removed
    assert not hasattr(llm.model, "peft_config") and not llm.model.training
    prompts = ["hello", question(999), "Tell me about boats."]
    llm.add_adapter("blue", trained.report.path)
    assert llm.complete(ask(prompts[1], "blue")).text == "blue"  # the adapter is loaded and in use
    for prompt, base in zip(prompts, trained.base_replies, strict=True):
        reply = llm.complete(ask(prompt))
        assert (reply.text, reply.usage) == (base.text, base.usage)


def test_the_general_set_check_is_recorded(trained: Trained) -> None:
    general = trained.report.general
    assert general is not None and general.examples >= 20
    assert general.base_loss > 0 and general.adapter_loss > 0 and general.threshold_pct == 25.0
    assert general.change_pct == pytest.approx(100 * (general.adapter_loss / general.base_loss - 1))
    assert general.worse == (general.change_pct > 25.0)


# -- DPO ------------------------------------------------------------------------------------------------


def test_dpo_raises_the_held_out_preference_accuracy(trained: Trained, smol_tokenizer: Any, tmp_path: Path) -> None:
    rows = preference_rows(24)
    for row in rows[1::2]:  # the same two replies preferred the other way round after another wording
        row["chosen"], row["rejected"] = "red", "blue"
        row["prompt"] = [{"role": "user", "content": row["prompt"][0]["content"].replace("What", "Which")}]
    adapters = tmp_path / "adapters"
    shutil.copytree(trained.report.path, adapters / "blue")
    request = TrainRequest("prefer", write_rows(tmp_path / "pairs.jsonl", rows), TrainBase(tiny_llm(smol_tokenizer),
                           TINY), adapters, method="dpo", hyper=replace(FAST, lr=2e-2, beta=0.5, epochs=8))
    report = train_adapter(request)
    before, after = report.before, report.after
    assert before is not None and after is not None and after.examples == 5
    assert before.preference_accuracy is not None and before.preference_accuracy < 0.5  # the base prefers one reply
    assert after.preference_accuracy == 1.0
    assert (after.reward_margin or 0) > (before.reward_margin or 0) + 1
    assert after.loss is not None and before.loss is not None and after.loss < before.loss  # chosen stays likely
    assert after.exact_match is not None and after.exact_match >= 0.8  # the greedy reply is the chosen one
    assert report.meta.method == "dpo" and report.meta.hyperparameters["beta"] == 0.5
    started = train_adapter(replace(request, name="prefer2", from_adapter=("blue", adapters / "blue"),
                                    hyper=replace(request.hyper, epochs=1)))
    assert started.meta.from_adapter == "blue"
    assert started.before is not None and started.before.reward_margin != before.reward_margin  # starts from blue


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_lists_shows_and_removes_adapters(trained: Trained, settings: Settings,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = settings.home / "settings.toml"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(f'[model]\ncache_dir = "{settings.model_cache_dir}"\n')
    shutil.copytree(trained.report.path, settings.adapters_dir / "blue")
    assert main(["adapters", "list"]) == 0
    assert "blue" in capsys.readouterr().out
    assert main(["adapters", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "blue" and "trained on another base model" in listed["problem"]
    assert main(["adapters", "show", "blue", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kinds"] == ["blue", "colors"] and shown["meta"]["after"]["exact_match"] == 1.0
    assert main(["adapters", "show", "blue"]) == 0
    assert "general set" in capsys.readouterr().out
    assert main(["adapters", "remove", "blue"]) == 2  # stdin is not a terminal: no confirmation, no removal
    assert "pass --yes" in capsys.readouterr().err and (settings.adapters_dir / "blue").is_dir()
    assert main(["adapters", "remove", "blue", "--yes"]) == 0
    assert not (settings.adapters_dir / "blue").exists()
    assert main(["adapters", "show", "blue"]) == 2


def test_cli_train_reports_a_bad_line_before_loading_the_model(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "data.jsonl", [*blue_rows(6), {"messages": [{"role": "bot", "content": "x"}]}])
    assert main(["adapters", "train", "blue", "--data", str(data), "--kind", "colors"]) == 2
    assert "data.jsonl:7: messages[0]: unknown role 'bot'" in capsys.readouterr().err
    assert main(["adapters", "train", "blue", "--dpo", str(tmp_path / "missing.jsonl")]) == 2
    assert "training file not found" in capsys.readouterr().err
