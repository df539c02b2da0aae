"""OpenAICompatLLM: the LLM seam over an OpenAI-compatible /v1/chat/completions server (vLLM, SGLang, TGI,
Ollama, llama.cpp's server), the way to run a model bigger than one GPU (vLLM with tensor parallelism) or one
model shared by many processes. `openai_wire.py` maps requests and replies; this module sends them.

    llm = OpenAICompatLLM(ServerConfig("http://gpu-box:8000/v1", "Qwen/Qwen2.5-72B-Instruct"), api_key=key)
    llm = OpenAICompatLLM.from_settings(settings)      # [model] backend = "openai"

One httpx.Client (thread-safe, pooled connections) serves every session of the process: requests run
concurrently and the server batches them.

Retries: connection errors, timeouts, a dropped connection and HTTP 5xx/429 are tried again up to `max_retries`
times, after an exponential backoff (base_s * 2**n capped at cap_s; half of it fixed, half random jitter) or the
server's Retry-After (seconds or an HTTP date, capped at retry_after_cap_s). Any other 4xx fails at once. After
the last try an LLMError names the server URL and the last failure. A stream is retried only while it has shown
nothing: once a text delta has gone to the caller a failure is an LLMError, since a retry would show text twice
(and a sampled model would not write the same text again). Tool-call pieces are never shown, so a stream that
breaks inside a call is retried.

Adapters: vLLM serves each LoRA under a model name of its own (`--lora-modules NAME=PATH`); a request's adapter
is sent as `adapter_models[adapter]`, else as the adapter's own name; no adapter sends the base model's name.

The API key comes from the environment variable that `[model] api_key_env` names, goes out as
`Authorization: Bearer`, and is kept out of every error message (replaced by *** even where the server echoes it).

Does NOT: constrain decoding itself (tool_choice="required" and constraints are as strong as the server's guided
decoding: vLLM and SGLang enforce them, Ollama ignores tool_choice); check calls against the tool schemas (the
broker does); authenticate the server beyond TLS (its replies are trusted as the model's words); count tokens
before sending (a prompt too long for the server's context comes back as its HTTP 400, raised as an LLMError).
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from agent.config import Settings
from agent.errors import ConfigError, LLMError
from agent.llm.openai_wire import StreamAssembler, reply_from_body, request_body
from agent.types import LLMDelta, LLMReply, LLMRequest

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROBE_TIMEOUT_S = 3.0
MAX_ERROR_CHARS = 300
# Worth another try: the server may be starting, restarting or overloaded.
RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_s: float = 0.5
    cap_s: float = 8.0
    retry_after_cap_s: float = 60.0

    def delay_s(self, retry: int, retry_after_s: float | None) -> float:
        """How long to wait before retry number `retry` (0 for the first)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.retry_after_cap_s)
        backoff = min(self.cap_s, self.base_s * 2.0**retry)
        return backoff / 2 + random.uniform(0.0, backoff / 2)


@dataclass(frozen=True)
class ServerConfig:
    """Where the server is and how to talk to it. `api_key_env` only names the key's variable in messages."""

    base_url: str
    model: str
    adapter_models: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    api_key_env: str = ""


class ServerStatus(Exception):
    """An HTTP error status from the server; retried or turned into an LLMError, never raised to callers."""

    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


Failure = ServerStatus | httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError


class OpenAICompatLLM:
    """Runs requests on an OpenAI-compatible server (see the module docstring)."""

    def __init__(self, config: ServerConfig, api_key: str | None = None) -> None:
        if not config.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the model server URL must start with http:// or https://, got {config.base_url!r} "
                              '([model] base_url, e.g. "http://gpu-box:8000/v1")')
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.name = config.model
        self._url = f"{self.base_url}/chat/completions"
        self._key = api_key or ""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0))
        self._client = httpx.Client(headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAICompatLLM:
        m = settings.model
        if not m.base_url:
            raise ConfigError('[model] backend = "openai" needs base_url, the server\'s OpenAI API root, e.g. '
                              '"http://gpu-box:8000/v1"')
        if not m.name:
            raise ConfigError('[model] backend = "openai" needs name, the model name the server serves (vLLM: the '
                              "model argument or --served-model-name; GET <base_url>/models lists them)")
        config = ServerConfig(m.base_url, m.name, dict(m.adapter_models), m.timeout_s,
                              RetryPolicy(max_retries=m.max_retries), m.api_key_env)
        return cls(config, api_key=read_api_key(m.api_key_env))

    def __repr__(self) -> str:
        return f"OpenAICompatLLM({self.base_url!r}, model={self.name!r})"

    def close(self) -> None:
        self._client.close()

    def model_for(self, adapter: str | None) -> str:
        """The server's model name for a request's adapter (None: the base model)."""
        if adapter is None:
            return self.name
        return self.config.adapter_models.get(adapter, adapter)

    def complete(self, request: LLMRequest) -> LLMReply:
        body = request_body(request, self.model_for(request.adapter), stream=False)
        retry = 0
        while True:
            try:
                response = self._client.post(self._url, json=body)
                self._check_status(response)
                return reply_from_body(self._json(response), request)
            except (ServerStatus, *RETRYABLE_TRANSPORT) as e:
                retry = self._after_failure(e, retry, request)
            except httpx.HTTPError as e:
                raise LLMError(f"the request to the model server at {self.base_url} failed: "
                               f"{self._describe(e)}") from e

    def stream(self, request: LLMRequest) -> Iterator[LLMDelta | LLMReply]:
        """Text deltas as the server streams them, then one LLMReply (see the module docstring on retries)."""
        body = request_body(request, self.model_for(request.adapter), stream=True)
        retry = 0
        while True:
            shown = False
            try:
                with self._client.stream("POST", self._url, json=body) as response:
                    self._check_status(response)
                    assembler = StreamAssembler(request)
                    events = EventStream(response)
                    for chunk in events:
                        text = assembler.feed(chunk)
                        if text:
                            shown = True
                            yield LLMDelta(text)
                    if not (events.done or assembler.finish_reason):
                        raise httpx.RemoteProtocolError("the stream ended before its [DONE]")
                yield assembler.reply()
                return
            except (ServerStatus, *RETRYABLE_TRANSPORT) as e:
                if shown:
                    raise LLMError(f"the stream from the model server at {self.base_url} broke after text was "
                                   f"shown ({self._describe(e)}); not retried, as a retry would show text twice: "
                                   "ask again") from e
                retry = self._after_failure(e, retry, request)
            except httpx.HTTPError as e:
                raise LLMError(f"the request to the model server at {self.base_url} failed: "
                               f"{self._describe(e)}") from e

    def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> str:
        """One line on whether the server answers GET /models within timeout_s, and what it serves; never raises."""
        try:
            response = self._client.get(f"{self.base_url}/models", timeout=timeout_s)
        except httpx.HTTPError as e:
            return f"no answer from {self.base_url} ({self._describe(e)})"
        if response.status_code >= 400:
            return f"answers HTTP {response.status_code}: {self._scrub(error_message(response))}"
        try:
            listed = response.json().get("data")
            names = [str(m.get("id")) for m in listed if isinstance(m, dict)]
        except (ValueError, AttributeError, TypeError):
            return "answers, but GET /models is not an OpenAI model list"
        missing = f"; [model] name {self.name!r} is not among them" if names and self.name not in names else ""
        return f"answers; serves {', '.join(names[:10]) or 'no models'}{missing}"

    def _after_failure(self, error: Failure, retry: int, request: LLMRequest) -> int:
        """Wait and return the next retry number, or raise the LLMError that ends the request."""
        if isinstance(error, ServerStatus) and not error.retryable:
            raise LLMError(self._refused(error, request)) from None
        if retry >= self.config.retry.max_retries:
            raise LLMError(f"the model server at {self.base_url} did not answer after {retry + 1} attempt(s) "
                           f"(last: {self._describe(error)}); check that it is running and reachable ([model] "
                           "base_url), or raise [model] max_retries / timeout_s") from error
        wait = error.retry_after_s if isinstance(error, ServerStatus) else None
        time.sleep(self.config.retry.delay_s(retry, wait))
        return retry + 1

    def _refused(self, error: ServerStatus, request: LLMRequest) -> str:
        hint = ""
        if error.status in (401, 403):
            env = self.config.api_key_env
            hint = (f"; check the API key in the environment variable {env} ([model] api_key_env)" if env else
                    "; the server wants an API key: put it in an environment variable and name that variable in "
                    "[model] api_key_env")
        elif error.status == 404:
            adapter = (f", or map adapter {request.adapter!r} in [model] adapter_models (vLLM serves a LoRA with "
                       "--lora-modules NAME=PATH)") if request.adapter else ""
            hint = (f"; is {self.model_for(request.adapter)!r} served there? GET {self.base_url}/models lists the "
                    f"names: set [model] name{adapter}; and base_url must end in /v1")
        return f"the model server at {self.base_url} refused the request ({error}){hint}"

    def _check_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        raise ServerStatus(response.status_code, self._scrub(error_message(response)),
                           retry_after_s(response.headers.get("retry-after")))

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as e:
            raise LLMError(f"the model server at {self.base_url} answered with something that is not JSON: "
                           f"{self._scrub(response.text[:200])!r}") from e

    def _describe(self, error: Exception) -> str:
        text = str(error) if isinstance(error, ServerStatus) else f"{type(error).__name__}: {error}"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


class EventStream:
    """The JSON payloads of a server-sent-events body; `done` once `data: [DONE]` arrived."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.done = False

    def __iter__(self) -> Iterator[Any]:
        data: list[str] = []
        for line in self.response.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line.strip() and data:
                yield from self._dispatch(data)
                data = []
            if self.done:
                return
        yield from self._dispatch(data)

    def _dispatch(self, data: list[str]) -> Iterator[Any]:
        payload = "\n".join(data)
        if not payload:
            return
        if payload == "[DONE]":
            self.done = True
            return
        try:
            yield json.loads(payload)
        except json.JSONDecodeError as e:
            raise LLMError(f"the model server streamed an event that is not JSON: {payload[:200]!r}") from e


def error_message(response: httpx.Response) -> str:
    """The server's own words from an error body ({"error": {"message": ...}} and the usual variants)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    message: Any = response.text
    if isinstance(data, dict):
        error = data.get("error")
        message = (error.get("message") if isinstance(error, dict) else error) or data.get("message") \
            or data.get("detail") or response.text
    return " ".join(str(message).split())[:MAX_ERROR_CHARS] or "(no message)"


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def read_api_key(env_name: str) -> str | None:
    """The key in the environment variable `env_name` ("" = the server needs none)."""
    if not env_name:
        return None
    if not ENV_NAME.match(env_name):
        # Never echo the value: someone may have pasted the key itself here.
        raise ConfigError("[model] api_key_env must be the NAME of an environment variable that holds the key "
                          "(letters, digits and _), not the key itself; the value given is not shown")
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(f"the environment variable {env_name} named by [model] api_key_env is not set or empty: "
                          "export the server's API key in it, or leave api_key_env empty for a server without one")
    return key


def describe_server(settings: Settings) -> dict[str, str]:
    """`metagent doctor` rows for the model backend; asks the server with a short timeout, never raises."""
    m = settings.model
    if m.backend != "openai":
        return {"model backend": "transformers (in this process)"}
    rows = {"model backend": f"openai-compatible server at {m.base_url or '(base_url not set)'}",
            "model": m.name or "(name not set)"}
    if not m.api_key_env:
        rows["model api key"] = "none ([model] api_key_env is empty)"
    elif ENV_NAME.match(m.api_key_env):
        rows["model api key"] = f"from ${m.api_key_env} ({'set' if os.environ.get(m.api_key_env) else 'NOT SET'})"
    else:
        rows["model api key"] = "[model] api_key_env is not a variable name (is it the key itself? it is not shown)"
    try:
        llm = OpenAICompatLLM.from_settings(settings)
    except ConfigError as e:
        rows["model server"] = str(e)
        return rows
    try:
        rows["model server"] = llm.probe()
    finally:
        llm.close()
    return rows
