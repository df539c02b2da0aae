"""Function-calling examples the project generates itself, split by function.

    examples = generate("train", 192, seed=0)     # functions of catalogue.TRAIN_DOMAINS only
    held_out = generate("test", 48, seed=0)       # functions of catalogue.HELD_OUT_DOMAINS only

Each example is a request to the agent with 1 to 3 tools offered, of one of four kinds (in a fixed rotation,
so every size has the same mix): "single" needs one call, "parallel" two calls at once (the same function
twice or two functions), "chat" needs no tool (the reply answers in words), "unsupported" asks for something
none of the offered tools can do (the reply says so). The target is exactly what the engine parses: call
blocks written by `toolformat.format_call`, one per line, or plain text. The prompt is the agent's act
prompt in miniature: the default system prompt, then the request; the engine itself appends the tools
section (`TransformersLLM.render_prompt`, `toolformat.with_tools`), in training and at evaluation alike.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal

from agent.config import AgentSettings
from agent.llm.toolformat import format_call
from agent.types import LLMRequest, Message, ToolSpec
from benchmarks.data.aliases import Aliases
from benchmarks.data.catalogue import HELD_OUT_DOMAINS, TRAIN_DOMAINS
from benchmarks.data.params import Function

Split = Literal["train", "test"]
Kind = Literal["single", "parallel", "chat", "unsupported"]
# The mix: of every 8 examples, 3 single calls, 2 parallel, 1 chat, 2 unsupported (telling that no offered tool
# fits is the hardest part for a small model, so it gets as many examples as the parallel calls).
ROTATION: tuple[Kind, ...] = ("single", "parallel", "unsupported", "single", "chat", "single", "parallel",
                              "unsupported")
MAX_TOOLS = 3
SYSTEM = AgentSettings().system_prompt

# Requests that need no tool, with the answer the model should give. Split by position: train / test.
CHAT_TRAIN = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that's all I needed.", "You're welcome! Have a great day."),
    ("What does the word 'punctual' mean?", "'Punctual' means arriving or doing something at the agreed time."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'cheerful'."),
    ("Who are you?", "I'm metagent, an assistant that runs locally on your machine."),
    ("What is the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("Can you spell 'necessary' for me?", "Sure: n-e-c-e-s-s-a-r-y."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What's the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("Tell me something nice.", "You're doing great, and it's a good day to learn something new."),
)
CHAT_TEST = (
    ("Hello, how are you?", "I'm doing well, thanks for asking! How can I help?"),
    ("Thank you so much!", "You're welcome!"),
    ("What does 'brief' mean?", "'Brief' means short in time or length."),
    ("How many months are in a year?", "A year has twelve months."),
    ("What's a synonym for 'big'?", "A synonym for 'big' is 'large'."),
    ("What's the opposite of 'early'?", "The opposite of 'early' is 'late'."),
    ("Good night!", "Good night, sleep well!"),
    ("What is the plural of 'child'?", "The plural of 'child' is 'children'."),
)
CANNOT = (
    "Sorry, none of the tools I have can do that.",
    "I can't help with that here: none of the available tools fits this request.",
    "None of my tools can do that, so I can't carry out this request.",
)
POLITE = ("{C}.", "Please {c}.", "Could you {c}?", "Can you {c}, please?", "I need you to {c}.", "{C}, thanks.",
          "Hey, {c}.")
JOINS = (" and ", ", then ", ", and also ", ". Also ")


@dataclass(frozen=True)
class ToolExample:
    """One request with its offered tools and the expected calls (none for "chat" and "unsupported")."""

    kind: Kind
    request: str
    tools: tuple[ToolSpec, ...]
    calls: tuple[tuple[str, dict[str, Any]], ...]
    reply: str  # the assistant's target text

    @property
    def messages(self) -> tuple[Message, ...]:
        return Message("system", SYSTEM), Message("user", self.request)

    def row(self) -> dict[str, Any]:
        """The chat-format training row ({"messages", "tools"}) that agent/training.py reads."""
        messages = [m.to_dict() for m in self.messages] + [{"role": "assistant", "content": self.reply}]
        tools = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in self.tools]
        return {"messages": messages, "tools": tools}

    def request_for(self, adapter: str | None, max_new_tokens: int) -> LLMRequest:
        return LLMRequest("act", self.messages, tools=self.tools, tool_choice="auto", adapter=adapter,
                          max_new_tokens=max_new_tokens)


def functions(split: Split) -> list[Function]:
    domains = TRAIN_DOMAINS if split == "train" else HELD_OUT_DOMAINS
    return [f for domain in domains for f in domain]


def generate(split: Split, count: int, seed: int) -> list[ToolExample]:
    """`count` examples of `split`'s functions, the same for the same (split, count, seed)."""
    rng = random.Random(f"toolcalls-{split}-{seed}")
    pool = functions(split)
    chat = CHAT_TRAIN if split == "train" else CHAT_TEST
    made = []
    for i in range(count):
        kind = ROTATION[i % len(ROTATION)]
        alias = Aliases(rng, enabled=split == "train")
        if kind == "single":
            made.append(_single(rng, pool, alias))
        elif kind == "parallel":
            made.append(_parallel(rng, pool, alias))
        elif kind == "chat":
            made.append(_chat(rng, pool, chat, alias))
        else:
            made.append(_unsupported(rng, pool, alias))
    return made


def say(function: Function, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A request clause for one call of `function` (ending in "?" or "." only if its ask does) and its arguments."""
    drawn = {p.name: p.sample(rng) for p in function.params}
    mentioned = [p for p in function.optional if rng.random() < 0.5]
    clause = rng.choice(function.asks).format(**{p.name: drawn[p.name][0] for p in function.required})
    extras = [p.phrase.format(drawn[p.name][0]) for p in mentioned]
    rng.shuffle(extras)
    end = clause[-1] if clause[-1] in "?." else ""
    clause = " ".join([clause.rstrip("?."), *extras]) + end
    arguments = {p.name: drawn[p.name][1] for p in function.params if p.required or p in mentioned}
    return clause, arguments


def target(calls: tuple[tuple[str, dict[str, Any]], ...]) -> str:
    return "\n".join(format_call(name, arguments) for name, arguments in calls)


def _single(rng: random.Random, pool: list[Function], alias: Aliases) -> ToolExample:
    function = rng.choice(pool)
    clause, arguments = say(alias(function), rng)
    calls = ((alias(function).name, arguments),)
    return ToolExample("single", _sentence(clause, rng), _offer(rng, pool, [function], alias), calls, target(calls))


def _parallel(rng: random.Random, pool: list[Function], alias: Aliases) -> ToolExample:
    first = rng.choice(pool)
    second = first if rng.random() < 0.5 else rng.choice([f for f in pool if f is not first])
    one, args_one = say(alias(first), rng)
    two, args_two = say(alias(second), rng)
    while first is second and _key(args_two) == _key(args_one):
        two, args_two = say(alias(second), rng)
    calls = ((alias(first).name, args_one), (alias(second).name, args_two))
    if one[-1] in "?." or two[-1] in "?." or rng.random() < 0.3:
        request = f"{_sentence(one, rng)} {_sentence(two, rng, polite=False)}"
    else:
        request = _sentence(one + rng.choice(JOINS) + two, rng)
    return ToolExample("parallel", request, _offer(rng, pool, [first, second], alias), calls, target(calls))


def _chat(rng: random.Random, pool: list[Function], chat: tuple[tuple[str, str], ...], alias: Aliases) -> ToolExample:
    request, answer = rng.choice(chat)
    return ToolExample("chat", request, _offer(rng, pool, [], alias), (), answer)


def _unsupported(rng: random.Random, pool: list[Function], alias: Aliases) -> ToolExample:
    asked = rng.choice(pool)
    clause, _ = say(asked, rng)
    others = [f for f in pool if f.domain != asked.domain]
    return ToolExample("unsupported", _sentence(clause, rng), _offer(rng, others, [], alias), (), rng.choice(CANNOT))


def _offer(rng: random.Random, pool: list[Function], needed: list[Function], alias: Aliases) -> tuple[ToolSpec, ...]:
    """The needed functions plus distractors (same domain first), at most MAX_TOOLS, shuffled, as `alias` names
    them."""
    chosen = list(dict.fromkeys(needed))
    room = rng.randint(max(1, len(chosen)), MAX_TOOLS) - len(chosen)
    domains = {f.domain for f in chosen}
    near = [f for f in pool if f.domain in domains and f not in chosen]
    far = [f for f in pool if f.domain not in domains]
    rng.shuffle(near)
    rng.shuffle(far)
    chosen += (near + far)[:room]
    rng.shuffle(chosen)
    return tuple(alias(f).spec() for f in chosen)


def _sentence(clause: str, rng: random.Random, polite: bool = True) -> str:
    """A whole request from a clause: a question or statement as is, a command in one of several framings."""
    if clause[-1] in "?.":
        return clause[0].upper() + clause[1:]
    capital = clause[0].upper() + clause[1:]
    frames = POLITE if polite and clause[0].islower() else ("{C}.", "{C}, thanks.")
    return rng.choice(frames).format(c=clause, C=capital)


def _key(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True)
