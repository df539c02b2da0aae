"""Training examples as token ids, and their log-probabilities under the model (torch imported lazily).

A chat example becomes one sequence: its final prompt exactly as the engine builds it at inference
(`TransformersLLM.prompt_ids`: the chat template, tools rendered by the engine's own code), then the final
reply's tokens and the end-of-turn token. Only assistant tokens carry a label (are trained on and scored):
the final reply with its end-of-turn token, and earlier assistant turns found in the prompt text where the
template renders them (a template that rewrites earlier turns leaves them unlabelled).

Batches are left-padded with explicit position ids, so every row sees the positions it sees at inference,
and only the logits of the last positions that hold labels are computed (`logits_to_keep`): the prompt's
share of the 49k-wide output layer is skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.llm.engine import END_OF_TURN_TOKENS, TransformersLLM
from agent.training_data import ChatExample, PreferencePair
from agent.types import LLMRequest, Message, ToolSpec

if TYPE_CHECKING:
    import torch

IGNORE = -100  # the label of a token that is neither trained on nor scored


@dataclass(frozen=True)
class TokenRow:
    """One sequence: token ids, and the label of each (the token itself, or IGNORE)."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor  # shifted: labels[:, t] is the token predicted at position t + (T - keep)
    keep: int  # how many last positions' logits are computed


class Encoder:
    """Turns examples into TokenRows with the engine's own prompt code."""

    def __init__(self, llm: TransformersLLM) -> None:
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.end_of_turn = end_of_turn_id(llm)
        self.end_text = str(self.tokenizer.convert_ids_to_tokens(self.end_of_turn))

    def chat(self, example: ChatExample) -> TokenRow:
        prompt_text = self._render(example.prompt, example.tools, example.line)
        ids = list(self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        labels = self._earlier_labels(example, prompt_text, ids)
        target = self.reply_ids(example.target)
        return self._checked(TokenRow(tuple(ids + target), tuple(labels + target)), example.line)

    def pair(self, pair: PreferencePair) -> tuple[TokenRow, TokenRow]:
        """(prompt + chosen, prompt + rejected), labels on the replies only."""
        prompt = self.prompt_ids(pair.prompt, (), pair.line)
        rows = []
        for reply in (pair.chosen, pair.rejected):
            target = self.reply_ids(reply)
            rows.append(self._checked(TokenRow(tuple(prompt + target), (IGNORE,) * len(prompt) + tuple(target)),
                                      pair.line))
        return rows[0], rows[1]

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[ToolSpec], line: int) -> list[int]:
        text = self._render(messages, tools, line)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reply_ids(self, reply: str) -> list[int]:
        """A reply as the model generates it: its tokens, then the end-of-turn token the engine stops on."""
        return list(self.tokenizer(reply, add_special_tokens=False)["input_ids"]) + [self.end_of_turn]

    def _render(self, messages: Sequence[Message], tools: Sequence[ToolSpec], line: int) -> str:
        try:
            return self.llm.render_prompt(LLMRequest("other", tuple(messages), tools=tuple(tools)))
        except Exception as e:  # LLMError: the template rejected the messages (e.g. roles must alternate)
            raise ConfigError(f"line {line}: {e}") from e

    def _earlier_labels(self, example: ChatExample, prompt_text: str, ids: list[int]) -> list[int]:
        """The prompt's labels: IGNORE but on earlier assistant turns (needs a fast tokenizer's offsets)."""
        spans = self._earlier_replies(example, prompt_text)
        if not spans or not getattr(self.tokenizer, "is_fast", False):
            return [IGNORE] * len(ids)
        offsets = self.tokenizer(prompt_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [tok if end > start and any(a <= start and end <= b for a, b in spans) else IGNORE
                for tok, (start, end) in zip(ids, offsets, strict=True)]

    def _earlier_replies(self, example: ChatExample, prompt_text: str) -> list[tuple[int, int]]:
        """Character spans (reply + end-of-turn marker) of the assistant turns before the final one."""
        spans = []
        for i, message in enumerate(example.prompt):
            if message.role != "assistant":
                continue
            before = self._render(example.prompt[:i], example.tools, example.line)
            end = len(before) + len(message.content)
            if prompt_text.startswith(before) and prompt_text[len(before):end] == message.content:
                spans.append((len(before), end + len(self.end_text)))
        return spans

    def _checked(self, row: TokenRow, line: int) -> TokenRow:
        if len(row.ids) > self.llm.context_tokens:
            raise ConfigError(f"line {line}: the example is {len(row.ids)} tokens, more than the model's "
                              f"context of {self.llm.context_tokens}; shorten it or leave it out")
        return row


def end_of_turn_id(llm: TransformersLLM) -> int:
    """The token that ends an assistant turn in the chat template (one the engine stops on)."""
    template = str(getattr(llm.tokenizer, "chat_template", "") or "")
    vocab = llm.tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab and vocab[token] in llm.stop_ids:
            return int(vocab[token])
    eos = llm.tokenizer.eos_token_id
    return int(eos) if isinstance(eos, int) else min(llm.stop_ids)


def collate(rows: Sequence[TokenRow], pad_id: int, device: Any) -> Batch:
    """Left-padded tensors for `rows`, keeping logits only from the first labelled position on."""
    import torch

    width = max(len(r.ids) for r in rows)
    first = min(next(i for i, label in enumerate(r.labels) if label != IGNORE) + width - len(r.ids) for r in rows)
    keep = min(width, width - first + 1)  # the logit at position first - 1 predicts the first label
    ids, mask, labels = [], [], []
    for r in rows:
        pad = width - len(r.ids)
        ids.append([pad_id] * pad + list(r.ids))
        mask.append([0] * pad + [1] * len(r.ids))
        labels.append(([IGNORE] * pad + list(r.labels))[width - keep + 1:] + [IGNORE])
    attention = torch.tensor(mask, device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(torch.tensor(ids, device=device), attention, positions, torch.tensor(labels, device=device), keep)


def token_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens (differentiable), and how many there are."""
    import torch.nn.functional as F

    kwargs: dict[str, Any] = {}
    if _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = batch.keep
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, **kwargs)
    logits = out.logits[:, -batch.keep:].float()
    rows, keep, vocab = logits.shape
    nll = F.cross_entropy(logits.reshape(-1, vocab), batch.labels.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(rows, keep)
    counted = batch.labels != IGNORE
    return -(nll * counted).sum(-1), counted.sum(-1)


def _takes_logits_to_keep(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
