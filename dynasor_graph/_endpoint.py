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
import json
import os
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

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
        raise endpoint_error(exc, endpoint) from exc
    return _parse(response, endpoint)


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
        text=choice.message.content or "",
        finish_reason=str(choice.finish_reason or "stop"),
        prompt_tokens=int(usage.prompt_tokens),
        completion_tokens=int(usage.completion_tokens),
        top_logprobs=_top_logprobs(choice),
    )


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


async def post_json(endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to vLLM's own ``path`` (e.g. ``/classify``) with the endpoint's key and
    timeout, through the admission hook; the JSON answer, or an :class:`EndpointError`."""
    import httpx

    url = endpoint.server_root + path
    headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
    request = _client().post(url, json=body, headers=headers, timeout=endpoint.timeout_s)
    try:
        response = await _admitted(0, request)
    except httpx.TransportError as exc:
        raise EndpointUnreachable(f"cannot reach {url}: {exc or type(exc).__name__}",
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
