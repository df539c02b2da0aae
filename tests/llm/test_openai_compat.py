"""OpenAICompatLLM against a fake OpenAI-compatible server on 127.0.0.1 (tests/llm/openai_server.py).

What the server receives is judged from its own record of each request; what the caller gets, from the LLMReply.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.errors import ConfigError, LLMError
from agent.llm import OpenAICompatLLM, format_call
from agent.llm.openai_compat import RetryPolicy, ServerConfig, retry_after_s
from agent.llm.openai_wire import wire_messages
from agent.types import Constraint, LLMDelta, LLMReply, LLMRequest, Message, ToolSpec
from tests.llm.openai_server import Answer, Cut, FakeOpenAI, Item, Stall, Status

FAST = RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.05)
CALC = ToolSpec("calculator", "Evaluate arithmetic.",
                {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]})

Serve = Callable[..., FakeOpenAI]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[FakeOpenAI] = []

    def start(*script: Item, models: tuple[str, ...] = ("base",)) -> FakeOpenAI:
        servers.append(FakeOpenAI(script, models))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(server: FakeOpenAI | str, api_key: str | None = None, **config: Any) -> OpenAICompatLLM:
    url = server if isinstance(server, str) else server.url
    return OpenAICompatLLM(ServerConfig(url, "base", **{"retry": FAST, **config}), api_key=api_key)


def ask(text: str = "hi", **fields: Any) -> LLMRequest:
    return LLMRequest(purpose="act", messages=(Message("system", "Be brief."), Message("user", text)), **fields)


def streamed(llm: OpenAICompatLLM, request: LLMRequest) -> tuple[list[str], LLMReply]:
    items = list(llm.stream(request))
    deltas = [i.text for i in items[:-1] if isinstance(i, LLMDelta)]
    assert len(deltas) == len(items) - 1 and isinstance(items[-1], LLMReply)
    return deltas, items[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_plain_completion(serve: Serve) -> None:
    server = serve(Answer("Hello there."))
    reply = client(server).complete(ask(max_new_tokens=50, temperature=0.3))
    assert (reply.content, reply.text, reply.finish_reason, reply.tool_calls) == ("Hello there.", "Hello there.",
                                                                                  "stop", ())
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 3)
    (body,) = server.bodies
    assert body["model"] == "base" and body["max_tokens"] == 50 and body["temperature"] == 0.3
    assert body["stream"] is False and "tools" not in body and "response_format" not in body
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_two_parallel_tool_calls_round_trip(serve: Serve) -> None:
    server = serve(Answer(calls=(("calculator", '{"expression": "2+2"}'), ("calculator", '{"expression": "3*3"}'))),
                   Answer("4 and 9."))
    llm = client(server)
    reply = llm.complete(ask("2+2 and 3*3?", tools=(CALC,)))
    assert reply.finish_reason == "tool_calls" and not reply.parse_errors
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("calculator", {"expression": "2+2"}),
                                                                ("calculator", {"expression": "3*3"})]
    assert reply.text == "\n".join(format_call(c.name, c.arguments) for c in reply.tool_calls)
    # The next step sends the history the graph keeps: calls as Hermes text, results as role="tool".
    history = (*ask("2+2 and 3*3?").messages, Message("assistant", reply.text),
               Message("tool", "[calculator] 4"), Message("tool", "[calculator] 9"))
    assert llm.complete(LLMRequest("act", history, tools=(CALC,))).content == "4 and 9."
    sent = server.bodies[1]["messages"]
    assistant, first, second = sent[2:]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [{"expression": "2+2"},
                                                                                        {"expression": "3*3"}]
    assert len(set(ids)) == 2 and assistant["content"] == ""
    assert (first["role"], first["tool_call_id"], first["content"]) == ("tool", ids[0], "[calculator] 4")
    assert (second["tool_call_id"], second["content"]) == (ids[1], "[calculator] 9")
    assert server.bodies[0]["tools"][0]["function"] == {"name": "calculator", "description": "Evaluate arithmetic.",
                                                        "parameters": CALC.parameters}


def test_unreadable_arguments_become_parse_errors_not_crashes(serve: Serve) -> None:
    server = serve(Answer(calls=(("calculator", '{"expression": "2+'),)),
                   Answer(calls=(("calculator", '[1, 2]'), ("calculator", '{"expression": "1+1"}'))))
    llm = client(server)
    bad = llm.complete(ask(tools=(CALC,)))
    assert bad.tool_calls == () and bad.finish_reason == "stop"
    assert len(bad.parse_errors) == 1 and "not valid JSON" in bad.parse_errors[0]
    assert '{"expression": "2+' in bad.text  # the model is shown what it wrote
    mixed = llm.complete(ask(tools=(CALC,)))
    assert [c.arguments for c in mixed.tool_calls] == [{"expression": "1+1"}]
    assert "must be a JSON object" in mixed.parse_errors[0]
    cut = serve(Answer(calls=(("calculator", '{"expression": "12'),), finish_reason="length"))
    _, reply = streamed(client(cut), ask(tools=(CALC,)))
    assert reply.finish_reason == "length" and "max_new_tokens ran out" in reply.parse_errors[0]


def test_tool_choice_required_and_none(serve: Serve) -> None:
    server = serve(Answer(calls=(("calculator", '{"expression": "1"}'),)), Answer("plain"))
    llm = client(server)
    llm.complete(ask(tools=(CALC,), tool_choice="required"))
    llm.complete(ask(tools=(CALC,), tool_choice="none"))
    required, none = server.bodies
    assert required["tool_choice"] == "required"
    assert [t["function"]["name"] for t in required["tools"]] == ["calculator"]
    assert "tools" not in none and "tool_choice" not in none  # no tools offered: nothing to call


def test_json_schema_constraint_is_sent_as_response_format(serve: Serve) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    server = serve(Answer('{"city": "Paris"}'))
    reply = client(server).complete(ask(constraint=Constraint(json_schema=schema)))
    assert json.loads(reply.content) == {"city": "Paris"}
    assert server.bodies[0]["response_format"] == {"type": "json_schema",
                                                   "json_schema": {"name": "output", "schema": schema}}


def test_choice_constraint_returns_the_chosen_string(serve: Serve) -> None:
    server = serve(Answer('{"choice": "math"}'), Answer("chat"))
    llm = client(server)
    assert llm.complete(ask(constraint=Constraint(choices=("math", "chat")))).content == "math"
    sent = server.bodies[0]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["properties"]["choice"]["enum"] == ["math", "chat"]
    # A server that ignores response_format: its free text is the content.
    assert llm.complete(ask(constraint=Constraint(choices=("math", "chat")))).content == "chat"


def test_streaming_text(serve: Serve) -> None:
    server = serve(Answer("The answer is 42, as computed."))
    deltas, reply = streamed(client(server), ask())
    assert len(deltas) > 3 and "".join(deltas) == reply.text == reply.content == "The answer is 42, as computed."
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 3)
    assert server.bodies[0]["stream"] is True and server.bodies[0]["stream_options"] == {"include_usage": True}


def test_streamed_tool_call_deltas_are_assembled(serve: Serve) -> None:
    server = serve(Answer("Let me compute.", calls=(("calculator", '{"expression": "17*23"}'),
                                                    ("calculator", '{"expression": "2**10"}')), piece_chars=3))
    deltas, reply = streamed(client(server), ask(tools=(CALC,)))
    assert "".join(deltas) == "Let me compute." == reply.content
    assert [c.arguments["expression"] for c in reply.tool_calls] == ["17*23", "2**10"]
    assert [c.id for c in reply.tool_calls] == ["call_srv_0", "call_srv_1"] and reply.finish_reason == "tool_calls"


def test_hermes_blocks_in_text_are_calls(serve: Serve) -> None:
    # A server without a tool-call parser returns the model's own call blocks as text.
    server = serve(Answer(format_call("calculator", {"expression": "5*5"})))
    reply = client(server).complete(ask(tools=(CALC,)))
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("calculator", {"expression": "5*5"})]


def test_retry_after_503_then_success(serve: Serve) -> None:
    server = serve(Status(503), Status(502, "upstream gone"), Answer("ok"))
    assert client(server).complete(ask()).content == "ok"
    assert len(server.bodies) == 3


def test_retry_after_is_honoured(serve: Serve) -> None:
    server = serve(Status(429, headers=(("Retry-After", "0.4"),)), Answer("ok"))
    started = time.monotonic()
    assert client(server).complete(ask()).content == "ok"
    assert time.monotonic() - started >= 0.4 and len(server.bodies) == 2
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_s("soon") is None


def test_no_retry_on_400(serve: Serve) -> None:
    server = serve(Status(400, '{"error": {"message": "max_tokens is too large"}}'), Answer("never"))
    with pytest.raises(LLMError) as caught:
        client(server).complete(ask())
    assert len(server.bodies) == 1
    text = str(caught.value)
    assert server.url in text and "HTTP 400" in text and "max_tokens is too large" in text


def test_connection_refused_fails_fast_with_a_clear_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        client(url).complete(ask())
    assert time.monotonic() - started < 1.0
    assert url in str(caught.value) and "3 attempt(s)" in str(caught.value) and "ConnectError" in str(caught.value)


def test_timeout_is_retried(serve: Serve) -> None:
    server = serve(Stall(1.0, Answer("late")), Answer("on time"))
    assert client(server, timeout_s=0.2).complete(ask()).content == "on time"
    assert len(server.bodies) == 2


def test_stream_retried_until_it_shows_text_then_not(serve: Serve) -> None:
    server = serve(Status(503), Cut(Answer("never shown"), after_chunks=1), Answer("Fine."))
    deltas, reply = streamed(client(server), ask())
    assert "".join(deltas) == "Fine." and len(server.bodies) == 3
    broken = serve(Cut(Answer("This text was shown before the break."), after_chunks=4), Answer("again"))
    shown: list[str] = []
    with pytest.raises(LLMError, match="broke after text was shown"):
        for item in client(broken).stream(ask()):
            shown.append(item.text if isinstance(item, LLMDelta) else "")
    assert "".join(shown) and len(broken.bodies) == 1


def test_adapters_map_to_server_model_names(serve: Serve) -> None:
    server = serve(Answer("a"), Answer("b"), Answer("c"))
    llm = client(server, adapter_models={"sql": "sql-lora-v2"})
    for adapter in ("sql", "math", None):
        llm.complete(ask(adapter=adapter))
    assert [b["model"] for b in server.bodies] == ["sql-lora-v2", "math", "base"]


def test_unknown_model_error_says_what_to_set(serve: Serve) -> None:
    server = serve(Status(404, '{"object": "error", "message": "The model `math` does not exist.", "code": 404}'))
    with pytest.raises(LLMError, match="adapter_models") as caught:
        client(server).complete(ask(adapter="math"))
    assert "The model `math` does not exist." in str(caught.value) and len(server.bodies) == 1


def test_api_key_from_the_environment_never_in_errors(serve: Serve, settings: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-test-1234567890"
    server = serve(Answer("ok"), Status(401, json.dumps({"error": {"message": f"bad key {key}"}})))
    monkeypatch.setenv("MY_SERVER_KEY", key)
    model = settings.model.model_copy(update={"backend": "openai", "base_url": server.url, "name": "base",
                                              "api_key_env": "MY_SERVER_KEY"})
    llm = OpenAICompatLLM.from_settings(settings.model_copy(update={"model": model}))
    llm.complete(ask())
    with pytest.raises(LLMError) as caught:
        llm.complete(ask())
    assert [r.headers.get("Authorization") for r in server.requests] == [f"Bearer {key}"] * 2
    assert key not in str(caught.value) and "MY_SERVER_KEY" in str(caught.value) and key not in repr(llm)
    monkeypatch.delenv("MY_SERVER_KEY")
    with pytest.raises(ConfigError, match="MY_SERVER_KEY"):
        OpenAICompatLLM.from_settings(settings.model_copy(update={"model": model}))
    pasted = model.model_copy(update={"api_key_env": key})
    with pytest.raises(ConfigError) as wrong:
        OpenAICompatLLM.from_settings(settings.model_copy(update={"model": pasted}))
    assert key not in str(wrong.value)


def test_concurrent_sessions_share_one_client(serve: Serve) -> None:
    def echo(body: dict[str, Any]) -> Answer:
        return Answer(f"echo {body['messages'][-1]['content']}")

    server = serve(*[echo] * 8)
    llm = client(server)
    results: dict[int, str] = {}

    def run(n: int) -> None:
        results[n] = llm.complete(ask(f"request {n}")).content

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == {n: f"echo request {n}" for n in range(8)}


def test_unanswered_calls_and_stray_results_stay_text() -> None:
    call = format_call("calculator", {"expression": "1+"})
    sent = wire_messages((Message("user", "q"), Message("assistant", call), Message("user", "go on"),
                          Message("tool", "[error] ERROR: bad call")))
    assert sent[1] == {"role": "assistant", "content": call}  # no result follows: not sent as a call
    assert sent[3] == {"role": "user", "content": "Tool result:\n[error] ERROR: bad call"}


def test_probe_answers_quickly(serve: Serve) -> None:
    server = serve(models=("base", "sql-lora"))
    assert client(server).probe() == "answers; serves base, sql-lora"
    started = time.monotonic()
    assert client(f"http://127.0.0.1:{closed_port()}/v1").probe().startswith("no answer from")
    assert time.monotonic() - started < 3.0


def test_kinds_use_adapters_the_server_serves(settings: Any) -> None:
    from agent.adapters import AdapterRegistry

    model = settings.model.model_copy(update={"backend": "openai", "adapter_models": {"sql": "sql-lora-v2"}})
    remote = settings.model_copy(update={"model": model, "adapters": {"database": "sql"}})
    served = AdapterRegistry(remote)
    assert (served.for_kind("database"), served.for_kind("sql"), served.for_kind("chat")) == ("sql", "sql", None)
    local = remote.model_copy(update={"model": model.model_copy(update={"backend": "transformers"})})
    assert AdapterRegistry(local).for_kind("database") is None  # locally an adapter needs its directory


def test_it_is_an_llm_and_stream_ends_with_what_complete_returns(serve: Serve) -> None:
    from agent.protocols import LLM

    answer = Answer("Two calls:", calls=(("calculator", '{"expression": "1+1"}'),))
    server = serve(answer, answer)
    llm = client(server)
    assert isinstance(llm, LLM)
    done = llm.complete(ask(tools=(CALC,)))
    _, last = streamed(llm, ask(tools=(CALC,)))
    assert (last.text, last.content, last.usage, last.finish_reason) == (done.text, done.content, done.usage,
                                                                         done.finish_reason)
    assert [(c.id, c.name, c.arguments) for c in last.tool_calls] == [(c.id, c.name, c.arguments)
                                                                      for c in done.tool_calls]
