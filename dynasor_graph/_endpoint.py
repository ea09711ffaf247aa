"""The endpoint adapter: the one place that talks to the model server.

- :class:`Endpoint` says where the server is (validated; the key is a ``SecretStr``).
- :func:`complete` continues an assistant turn through LiteLLM's async chat API. The server
  renders the conversation with ``continue_final_message=True, add_generation_prompt=False``,
  so a probe (reasoning + suffix) shares the reasoning request's prompt and vLLM's prefix
  cache serves it. Token counts are the server's ``usage``, never estimated.
- :func:`post_json` calls vLLM's own endpoints (``/classify``) over one shared httpx client.
- :data:`admission` is the hook a scheduler installs to admit each call (see
  :class:`~dynasor_graph.Scheduler`); the adapter knows nothing of scheduling policies.

Every failure becomes an :class:`~dynasor_graph.EndpointError` read from the status and body
of the server's answer: unreachable and busy (429/5xx) are retried by the graphs'
``RetryPolicy``, refusals (4xx) are not.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langgraph.types import RetryPolicy
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ._errors import TRANSIENT, EndpointError, EndpointUnreachable, ServerBusy, ServerRefused

if TYPE_CHECKING:
    import asyncio

    import httpx

# Without this, importing litellm fetches a price map from the internet and stalls offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Message = dict[str, Any]  # an OpenAI chat message (an agent's may carry tool calls)
T = TypeVar("T")
Continuation = Literal["auto", "tokens", "text"]


class Endpoint(BaseModel):
    """An OpenAI-compatible server (vLLM) reached through LiteLLM.

    ``api_key`` is a :class:`~pydantic.SecretStr`: it never appears in ``repr``, logs or graph
    state; graphs keep the endpoint in their closure, not in the state or ``configurable``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="LiteLLM model string, e.g. hosted_vllm/smollm2")
    api_base: str = Field(min_length=1, description="Server URL ending in /v1")
    api_key: SecretStr = SecretStr("EMPTY")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Per-request timeout")
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries of transient failures")
    continuation: Continuation = Field(
        default="auto", description="tokens: token-exact via /tokenize + /v1/completions; text: "
        "chat completions continuing the assistant turn; auto: tokens where /tokenize answers")
    client: Literal["litellm", "openai"] = Field(
        default="litellm", description="Token-mode generation through LiteLLM (default), or "
        "the same /v1/completions request through the OpenAI SDK client LiteLLM wraps, without "
        "LiteLLM's per-call logging and pricing (several times less client CPU per round)")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the chat template, e.g. enable_thinking")
    think_markers: tuple[str, str] = Field(
        default=("<think>", "</think>"), description="How the model opens and closes thinking")

    @field_validator("think_markers")
    @classmethod
    def _markers(cls, value: tuple[str, str]) -> tuple[str, str]:
        if not all(marker.strip() for marker in value):
            raise ValueError("think_markers must be two non-empty strings")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("model")
    @classmethod
    def _litellm_provider(cls, value: str) -> str:
        # A bare served name is a vLLM model: LiteLLM needs the provider prefix to route it.
        return value if "/" in value else f"hosted_vllm/{value}"

    @property
    def served_name(self) -> str:
        """The model's name on the server, without LiteLLM's provider prefix."""
        return self.model.split("/", 1)[1]

    @property
    def server_root(self) -> str:
        """The server's URL without ``/v1``: where vLLM's own endpoints live."""
        return self.api_base.removesuffix("/v1")

    @classmethod
    def from_env(cls, **overrides: Any) -> Endpoint:
        """Build from ``DYNASOR_MODEL``, ``DYNASOR_API_BASE``, ``DYNASOR_API_KEY`` and overrides
        (``None`` overrides are ignored); every value is validated."""
        values: dict[str, Any] = {}
        for field, var in (("model", "DYNASOR_MODEL"), ("api_base", "DYNASOR_API_BASE"),
                           ("api_key", "DYNASOR_API_KEY")):
            value = os.environ.get(var)
            if value:
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def retry_policy(endpoint: Endpoint) -> RetryPolicy:
    """Retry transient endpoint failures (never refusals) ``endpoint.max_retries`` times."""
    return RetryPolicy(
        max_attempts=endpoint.max_retries + 1,
        initial_interval=0.5,
        max_interval=8.0,
        retry_on=TRANSIENT,
    )


Admission = Callable[[int, Awaitable[Any]], Awaitable[Any]]
"""``admit(max_tokens, call)``: awaits ``call`` when the caller's policy lets it run."""

admission: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "dynasor_admission", default=None)
"""The admission hook of the program running in this context (set by a scheduler)."""


RequestTags = Callable[[int], dict[str, Any]]
"""``tags(max_tokens)``: extra request-body fields for the next model call (e.g. vLLM's
``priority``), from the policy of the program running in this context."""

request_tags: contextvars.ContextVar[RequestTags | None] = contextvars.ContextVar(
    "dynasor_request_tags", default=None)
"""The request-tagging hook of the program running in this context (set by a scheduler)."""


def _request_tags(max_tokens: int) -> dict[str, Any]:
    tags = request_tags.get()
    return tags(max_tokens) if tags is not None else {}


async def _admitted(max_tokens: int, call: Awaitable[T]) -> T:
    admit = admission.get()
    if admit is None:
        return await call
    result: T = await admit(max_tokens, call)
    return result


@dataclass(frozen=True)
class Completion:
    """One completion: its text, why it stopped, and the server's token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    top_logprobs: tuple[dict[str, float], ...] = ()
    """Per generated token, its most likely alternatives (token → logprob), when asked for."""
    token_ids: tuple[int, ...] = ()
    """The generated tokens' ids (token-exact continuation only)."""
    token_offsets: tuple[int, ...] = ()
    """Where each generated token starts in ``text`` (token-exact continuation only)."""

    def tokens_before(self, position: int) -> int:
        """How many generated tokens lie wholly before character ``position`` of ``text``
        (all of them in text mode, where token boundaries are unknown)."""
        if not self.token_offsets:
            return self.completion_tokens
        return sum(1 for offset in self.token_offsets if offset < position)


def continuation(
    messages: list[Message], assistant_prefix: str
) -> tuple[list[Message], dict[str, bool]]:
    """Messages and template flags that make the model continue ``assistant_prefix``."""
    if not assistant_prefix:
        return messages, {"add_generation_prompt": True, "continue_final_message": False}
    turn = [*messages, {"role": "assistant", "content": assistant_prefix}]
    return turn, {"add_generation_prompt": False, "continue_final_message": True}


async def complete(
    endpoint: Endpoint,
    messages: list[Message],
    assistant_prefix: str,
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None = None,
    tools: Sequence[dict[str, Any]] = (),
    top_logprobs: int = 0,
) -> Completion:
    """Continue ``assistant_prefix`` after ``messages`` for at most ``max_tokens`` tokens.

    ``tools`` (OpenAI schemas) are sent with ``tool_choice="none"``: an agent's probe renders
    the same prompt as the agent's own call, so it shares its prefix, and never calls a tool.
    ``top_logprobs > 0`` asks for that many alternatives per token (an LLM judge reads them).
    """
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners on every failure
    turn, template_flags = continuation(messages, assistant_prefix)
    extra_body: dict[str, Any] = dict(template_flags)
    if seed is not None:
        extra_body["seed"] = seed
    extra_body.update(_request_tags(max_tokens))
    tool_args: dict[str, Any] = {"tools": list(tools), "tool_choice": "none"} if tools else {}
    if top_logprobs:
        tool_args.update(logprobs=True, top_logprobs=top_logprobs)
    headers = session_headers()
    if headers:
        tool_args["extra_headers"] = headers
    try:
        response = await _admitted(max_tokens, litellm.acompletion(
            model=endpoint.model,
            messages=turn,
            api_base=endpoint.api_base,
            api_key=endpoint.api_key.get_secret_value(),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            timeout=endpoint.timeout_s,
            num_retries=0,  # retries belong to the graph's RetryPolicy, counted once
            max_retries=0,
            extra_body=extra_body,
            **tool_args,
        ))
    except Exception as exc:
        raise _text_mode_hint(endpoint_error(exc, endpoint)) from exc
    return _parse(response, endpoint)


def _text_mode_hint(error: EndpointError) -> EndpointError:
    """Say which mode failed when a chat template rewrote the continued assistant turn (a
    reasoning template keeps only what follows ``</think>``), and what to use instead."""
    if not (isinstance(error, ServerRefused) and "does not appear" in str(error)):
        return error
    return ServerRefused(f"{error} (text mode: the chat template rewrites the continued "
                         "assistant turn; use token mode, Endpoint(continuation='tokens'), on a "
                         "vLLM with /tokenize)", api_base=error.api_base,
                         status_code=error.status_code)


def session_headers() -> dict[str, str]:
    """``X-Session-ID: <thread_id>`` inside a LangGraph run that has a thread: every request
    of one program carries the same key, so vllm-router (``--policy consistent_hash``) sends
    them all to the replica that holds the program's prefix in cache."""
    from langgraph.config import get_config

    try:
        configurable = get_config().get("configurable") or {}
    except RuntimeError:  # not inside a graph run
        return {}
    thread = configurable.get("thread_id")
    return {"X-Session-ID": str(thread)} if thread else {}


def endpoint_error(exc: Exception, endpoint: Endpoint) -> EndpointError:
    """The :class:`EndpointError` for a failed call, from its HTTP status and error body."""
    import litellm

    if isinstance(exc, EndpointError):
        return exc
    base = endpoint.api_base
    status = getattr(exc, "status_code", None)
    unanswered = _unanswered(exc) or isinstance(
        exc, litellm.exceptions.APIConnectionError | litellm.exceptions.Timeout)
    if unanswered or not isinstance(status, int):
        if not unanswered and not _is_openai_error(exc):
            raise exc  # not a server failure: a bug, let it surface as it is
        return EndpointUnreachable(f"cannot reach {base}: {server_message(exc)}", api_base=base)
    if status == 429 or status >= 500:
        return ServerBusy(f"{base} failed ({status}): {server_message(exc)}", api_base=base,
                          status_code=status)
    return ServerRefused(f"{base} refused the request: {server_message(exc)}", api_base=base,
                         status_code=status)


def _unanswered(exc: BaseException) -> bool:
    """True when the request never got an answer: a transport failure anywhere in the cause
    chain (LiteLLM reports a refused connection as a synthetic 500)."""
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError | OSError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_openai_error(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


def server_message(exc: BaseException) -> str:
    """The server's own error text: the ``message`` of the error body it sent (``{"error":
    {"message": ...}}`` or vLLM's ``{"message": ...}``), read from the HTTP response found in
    the exception's cause chain (LiteLLM keeps the real one there); else the exception's."""
    seen: BaseException | None = exc
    while seen is not None:
        message = _body_message(getattr(seen, "body", None)) or _response_message(seen)
        if message:
            return message
        seen = seen.__cause__ or seen.__context__
    text = str(getattr(exc, "message", None) or exc)
    for prefix in ("litellm.", "Hosted_vllmException - ", "OpenAIException - "):
        text = text.split(prefix)[-1] if prefix in text else text
    text = re.sub(r"\s*ssl:<[^>]*>", "", text).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _response_message(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    if not content or not isinstance(content, bytes):
        return None
    try:
        return _body_message(json.loads(content))
    except ValueError:
        return None


def _body_message(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:500] if message else None


def _parse(response: Any, endpoint: Endpoint) -> Completion:
    usage = getattr(response, "usage", None)
    choices = getattr(response, "choices", None)
    if usage is None or not choices:
        raise ServerRefused(
            f"{endpoint.api_base} returned no usage or no choices", api_base=endpoint.api_base
        )
    choice = choices[0]
    return Completion(
        text=_message_text(choice.message, endpoint),
        finish_reason=str(choice.finish_reason or "stop"),
        prompt_tokens=int(usage.prompt_tokens),
        completion_tokens=int(usage.completion_tokens),
        top_logprobs=_top_logprobs(choice),
    )


def _message_text(message: Any, endpoint: Endpoint) -> str:
    """The generated text; under a server ``--reasoning-parser`` the thinking comes back in
    ``reasoning`` (``reasoning_content`` before vLLM 0.11): rejoined with the close marker."""
    content = _get(message, "content") or ""
    thinking = (_get(message, "reasoning_content") or _get(message, "reasoning")
                or (getattr(message, "provider_specific_fields", None) or {}).get("reasoning"))
    if not thinking:
        return str(content)
    return f"{thinking}{endpoint.think_markers[1]}{content}" if content else str(thinking)


def _top_logprobs(choice: Any) -> tuple[dict[str, float], ...]:
    """``choice.logprobs.content[i].top_logprobs`` as one token → logprob map per token."""
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if content is None and isinstance(logprobs, dict):
        content = logprobs.get("content")
    result: list[dict[str, float]] = []
    for entry in content or []:
        alternatives = _get(entry, "top_logprobs") or []
        result.append({str(_get(a, "token")): float(_get(a, "logprob")) for a in alternatives})
    return tuple(result)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary())


def _client() -> httpx.AsyncClient:
    """One pooled httpx client per event loop (an async client cannot cross loops)."""
    import asyncio

    import httpx

    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _CLIENTS[loop] = httpx.AsyncClient()
    return client


_OPENAI: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, float], Any]] = (
    weakref.WeakKeyDictionary())


def _openai_client(endpoint: Endpoint) -> Any:
    """An ``AsyncOpenAI`` over the shared httpx client, one per loop, server and timeout: the
    client of the token route (:func:`complete_tokens`). Its timeout is the endpoint's:
    ``litellm.atext_completion`` does not pass its ``timeout`` on to a client it is given."""
    import asyncio

    import openai

    clients = _OPENAI.setdefault(asyncio.get_running_loop(), {})
    key = (endpoint.api_base, endpoint.api_key.get_secret_value(), endpoint.timeout_s)
    if key not in clients or _client().is_closed:
        # openai >= 3.57 types http_client as httpx2's client (its fork of httpx) and still
        # takes an httpx one: the pooled client is shared with /tokenize and the reward calls.
        clients[key] = openai.AsyncOpenAI(
            base_url=endpoint.api_base, api_key=key[1], max_retries=0,
            timeout=endpoint.timeout_s, http_client=_client())  # type: ignore[arg-type, unused-ignore]
    return clients[key]


async def post_json(endpoint: Endpoint, path: str, body: dict[str, Any], *,
                    admit: bool = True) -> dict[str, Any]:
    """POST ``body`` to vLLM's own ``path`` (e.g. ``/classify``) with the endpoint's key and
    timeout, through the admission hook unless ``admit=False`` (``/tokenize`` runs no model);
    the JSON answer, or an :class:`EndpointError`."""
    import httpx

    url = endpoint.server_root + path
    headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
    request = _client().post(url, json=body, headers=headers, timeout=endpoint.timeout_s)
    try:
        response = await (_admitted(0, request) if admit else request)
    except httpx.TransportError as exc:
        raise EndpointUnreachable(f"cannot reach {endpoint.api_base} ({path}): "
                                  f"{exc or type(exc).__name__}",
                                  api_base=endpoint.api_base) from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    status = response.status_code
    message = _body_message(payload) or response.text[:300]
    if status == 429 or status >= 500:
        raise ServerBusy(f"{url} failed ({status}): {message}", api_base=endpoint.api_base,
                         status_code=status)
    if not response.is_success or not isinstance(payload, dict):
        raise ServerRefused(f"{url} refused the request: {message}",
                            api_base=endpoint.api_base, status_code=status)
    return payload


_NO_TOKENIZE: set[str] = set()  # servers that answered /tokenize with 404: text mode
_TOKENIZED: dict[tuple[str, str, str], tuple[int, ...]] = {}  # (server, model, text) → ids


async def render_chat(endpoint: Endpoint, messages: list[Message],
                      tools: Sequence[dict[str, Any]] = ()) -> list[int] | None:
    """The conversation (and an agent step's ``tools``) rendered through the server's chat
    template (generation prompt on,
    ``chat_template_kwargs`` passed through) as token ids, from vLLM's ``/tokenize``; ``None``
    in text mode (``continuation="text"``, or ``auto`` and the server has no ``/tokenize``)."""
    if endpoint.continuation == "text" or (
            endpoint.continuation == "auto" and endpoint.server_root in _NO_TOKENIZE):
        return None
    body: dict[str, Any] = {"model": endpoint.served_name, "messages": messages,
                            "add_generation_prompt": True}
    if tools:
        body["tools"] = list(tools)
    if endpoint.chat_template_kwargs:
        body["chat_template_kwargs"] = endpoint.chat_template_kwargs
    try:
        payload = await post_json(endpoint, "/tokenize", body, admit=False)
    except ServerRefused as exc:
        if exc.status_code in (404, 405) and endpoint.continuation == "auto":
            _NO_TOKENIZE.add(endpoint.server_root)
            return None
        if exc.status_code in (404, 405):
            raise ServerRefused(f"{exc} (token mode, continuation='tokens', needs vLLM's "
                                "/tokenize; use continuation='text' or 'auto')",
                                api_base=exc.api_base, status_code=exc.status_code) from exc
        raise
    return _ids(payload, endpoint, "/tokenize")


async def tokenize(endpoint: Endpoint, text: str) -> tuple[int, ...]:
    """``text`` as token ids without special tokens (a probe suffix), cached per server."""
    key = (endpoint.server_root, endpoint.served_name, text)
    if key not in _TOKENIZED:
        payload = await post_json(endpoint, "/tokenize", {
            "model": endpoint.served_name, "prompt": text, "add_special_tokens": False},
            admit=False)
        _TOKENIZED[key] = tuple(_ids(payload, endpoint, "/tokenize"))
    return _TOKENIZED[key]


def _ids(payload: dict[str, Any], endpoint: Endpoint, path: str) -> list[int]:
    tokens = payload.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ServerRefused(f"{endpoint.server_root}{path} answered without token ids",
                            api_base=endpoint.api_base)
    return tokens


async def complete_tokens(
    endpoint: Endpoint,
    prompt: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None = None,
) -> Completion:
    """Continue a prompt of token ids for at most ``max_tokens`` tokens through vLLM's
    ``/v1/completions``, returning the generated ids (``return_token_ids``) and where each
    token starts in the text.

    By default the request goes through LiteLLM's text route (``text-completion-openai/``),
    over the pooled ``AsyncOpenAI`` client: through ``litellm.atext_completion`` while LiteLLM
    has anything to do around a call (:func:`_litellm_observed`: callbacks, a cache, a budget,
    global headers or model aliases), else straight through the OpenAI text-completion
    handler ``atext_completion`` ends in (:func:`_litellm_handler`), skipping the per-call
    logging object, pricing and success handler nobody would read (they walk every leaf of the
    request, each of the prompt's ids: 4-9 ms of client CPU per call against under 2 ms,
    ``benchmarks/client_overhead.py``). ``Endpoint(client="openai")`` sends the very same
    request through the OpenAI SDK client directly. The request body is the same on every
    route, and so are the errors (:func:`endpoint_error` reads the OpenAI SDK's as it reads
    LiteLLM's).
    """
    extra_body: dict[str, Any] = {"return_token_ids": True}
    extra_body.update(_request_tags(max_tokens))
    headers = session_headers()
    ids = prompt if isinstance(prompt, list) else list(prompt)
    request: dict[str, Any] = {
        "prompt": [ids], "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "timeout": endpoint.timeout_s, "extra_body": extra_body,
        **({"seed": seed} if seed is not None else {}),
        **({"extra_headers": headers} if headers else {}),
    }
    try:
        if endpoint.client == "openai":
            call: Awaitable[Any] = _openai_client(endpoint).completions.create(
                model=endpoint.served_name, logprobs=0, **request)
        else:
            import litellm

            litellm.suppress_debug_info = True
            seed_body = {"seed": request.pop("seed")} if "seed" in request else {}
            request["extra_body"] = {**extra_body, "logprobs": 0, **seed_body}
            handler = None if _litellm_observed() else _litellm_handler()
            if handler is not None:
                call = _through_handler(handler, endpoint, request)
            else:
                call = litellm.atext_completion(
                    model=f"text-completion-openai/{endpoint.served_name}",
                    client=_openai_client(endpoint), api_base=endpoint.api_base,
                    api_key=endpoint.api_key.get_secret_value(), num_retries=0,
                    max_retries=0, **request)
        response = await _admitted(max_tokens, call)
    except Exception as exc:
        raise endpoint_error(exc, endpoint) from exc
    usage = getattr(response, "usage", None)
    choices = getattr(response, "choices", None)
    if usage is None or not choices:
        raise ServerRefused(f"{endpoint.api_base} returned no usage or no choices",
                            api_base=endpoint.api_base)
    choice = choices[0]
    generated = _get(choice, "token_ids")
    if not isinstance(generated, list):
        raise ServerRefused(
            f"{endpoint.api_base} returned no token ids: token mode (continuation 'tokens' or "
            "'auto') needs vLLM's return_token_ids; use Endpoint(continuation='text') for a "
            "server without them",
            api_base=endpoint.api_base)
    logprobs = _get(choice, "logprobs")
    offsets = _get(logprobs, "text_offset") if logprobs is not None else None
    return Completion(
        text=str(_get(choice, "text") or ""),
        finish_reason=str(_get(choice, "finish_reason") or "stop"),
        prompt_tokens=int(usage.prompt_tokens),
        completion_tokens=int(usage.completion_tokens),
        token_ids=tuple(int(i) for i in generated),
        token_offsets=tuple(int(o) for o in offsets or ()),
    )


_LITELLM_HOOKS = ("callbacks", "success_callback", "failure_callback", "input_callback",
                  "service_callback", "_async_success_callback", "_async_failure_callback",
                  "_async_input_callback", "cache", "max_budget", "headers", "model_alias_map")
"""LiteLLM's globals that make a call do more than send its request: callbacks of any kind
(logging, tracing, spend tracking), the response cache, the budget, headers added to every
request, model aliases."""


def _litellm_observed() -> bool:
    """True when any of LiteLLM's :data:`_LITELLM_HOOKS` is set: a token-route call must then
    go through ``litellm.atext_completion`` so that they all see it, as they see every call."""
    import litellm

    return any(getattr(litellm, name, None) for name in _LITELLM_HOOKS)


_HANDLER_ARGS = frozenset({"logging_obj", "api_base", "data", "headers", "model_response",
                           "api_key", "model", "timeout", "max_retries", "client"})


@functools.cache
def _litellm_handler() -> Any | None:
    """LiteLLM's OpenAI text-completion handler, the one ``atext_completion`` hands a
    ``text-completion-openai/`` call to; ``None`` where this LiteLLM has none with the
    expected ``acompletion`` arguments (then every call takes ``atext_completion``)."""
    import inspect

    try:
        from litellm.llms.openai.completion.handler import OpenAITextCompletion
    except ImportError:
        return None
    if not inspect.signature(OpenAITextCompletion.acompletion).parameters.keys() >= _HANDLER_ARGS:
        return None
    return OpenAITextCompletion()


class _Unlogged:
    """The handler's logging object when nothing listens: its pre and post call hooks are
    LiteLLM's logging, which has no callback to call."""

    def pre_call(self, *args: Any, **kwargs: Any) -> None:
        pass

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        pass


def _through_handler(handler: Any, endpoint: Endpoint, request: dict[str, Any]) -> Awaitable[Any]:
    """``request`` through LiteLLM's text-completion handler: the same body ``atext_completion``
    builds (the served model and every field of ``request``: prompt, sampling, timeout,
    ``extra_body``, ``extra_headers``), sent over the same pooled client, answered by the same
    ``TextCompletionResponse``."""
    result: Awaitable[Any] = handler.acompletion(
        logging_obj=_Unlogged(), api_base=endpoint.api_base,
        data={"model": endpoint.served_name, **request}, headers={},
        model_response=None, api_key=endpoint.api_key.get_secret_value(),
        model=endpoint.served_name, timeout=endpoint.timeout_s, max_retries=0,
        client=_openai_client(endpoint))
    return result


async def extend(
    endpoint: Endpoint,
    chat: list[Message],
    prompt_ids: Sequence[int] | None,
    generated: Sequence[int],
    text: str,
    *,
    suffix: str = "",
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None = None,
) -> Completion:
    """Continue a program: its rendered prompt, then everything it generated, then ``suffix``.

    Token-exact where the program has ``prompt_ids`` (from :func:`render_chat`): the prompt is
    ``prompt_ids + generated + ids(suffix)``, so the model sees exactly its own tokens and the
    prefix cache serves them all, whatever the chat template does to earlier assistant text.
    Text mode (``prompt_ids is None``): the chat continues the assistant turn ``text + suffix``.
    """
    if prompt_ids is None:
        return await complete(endpoint, chat, text + suffix, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed)
    suffix_ids = await tokenize(endpoint, suffix) if suffix else ()
    return await complete_tokens(endpoint, [*prompt_ids, *generated, *suffix_ids],
                                 max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 seed=seed)
