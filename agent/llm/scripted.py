"""ScriptedLLM: the one test double for the LLM seam.

Replies are raw text keyed by purpose (classify, plan, act, answer...), so the real parsing runs on them.
Every request is recorded. Asking for a purpose whose queue is empty raises ScriptExhausted (a test that
needs more replies than it scripted is wrong, and should say so loudly); `assert_complete()` fails when
replies are left over.

    llm = ScriptedLLM({"act": [format_call("calculator", {"expression": "2+2"}), "It is 4."]})
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping

from agent.errors import ScriptExhausted
from agent.llm.toolformat import parse_reply
from agent.types import LLMDelta, LLMReply, LLMRequest, Usage

Reply = str | Callable[[LLMRequest], str]


class ScriptedLLM:
    def __init__(self, script: Mapping[str, Iterable[Reply]] | None = None) -> None:
        self._queues: dict[str, deque[Reply]] = {k: deque(v) for k, v in (script or {}).items()}
        self.requests: list[LLMRequest] = []
        self._lock = threading.Lock()

    def add(self, purpose: str, *replies: Reply) -> ScriptedLLM:
        self._queues.setdefault(purpose, deque()).extend(replies)
        return self

    def complete(self, request: LLMRequest) -> LLMReply:
        with self._lock:
            self.requests.append(request)
            queue = self._queues.get(request.purpose)
            if not queue:
                raise ScriptExhausted(
                    f"ScriptedLLM has no reply left for purpose {request.purpose!r} "
                    f"(request #{len(self.requests)}; last message: {request.messages[-1].content[:120]!r})"
                )
            reply = queue.popleft()
        text = reply(request) if callable(reply) else reply
        if request.constraint and request.constraint.choices and text not in request.constraint.choices:
            raise ScriptExhausted(f"scripted reply {text!r} is not one of {request.constraint.choices}")
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))
        return parse_reply(text, [t.name for t in request.tools], usage)

    def stream(self, request: LLMRequest) -> Iterator[LLMDelta | LLMReply]:
        reply = self.complete(request)
        if not reply.tool_calls:
            for word in reply.text.split(" "):
                yield LLMDelta(word + " ")
        yield reply

    def remaining(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._queues.items() if v}

    def assert_complete(self) -> None:
        left = self.remaining()
        if left:
            raise AssertionError(f"ScriptedLLM has unused replies: {left}")

    def calls_for(self, purpose: str) -> list[LLMRequest]:
        return [r for r in self.requests if r.purpose == purpose]


def scripted(**script: list[Reply]) -> ScriptedLLM:
    """Shorthand: scripted(act=["..."], answer=["..."])."""
    return ScriptedLLM(script)


__all__ = ["ScriptedLLM", "scripted"]
