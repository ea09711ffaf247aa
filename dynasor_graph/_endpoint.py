"""The endpoint: where the model server is, and the hooks every model call goes through.

- :class:`Endpoint` says where the server is and how to talk to it (validated; the key is a
  ``SecretStr``).
- :data:`admission` and :data:`request_tags` are the per-program hooks a scheduler installs
  (see :class:`~dynasor_graph.Scheduler`): every call is admitted and tagged through them. The
  routes know nothing of scheduling policies.
- :func:`session_headers` gives every request of one program the same session key: the
  thread's id, else the program's own ``session_id``, which :func:`keyed` nodes set for the
  requests they send.
- :class:`Completion` is what every route returns: text, stop reason and the server's counts.

The routes themselves: ``_token_route`` (``/tokenize`` + ``/v1/completions``, token-exact; the
default on vLLM), ``_text_route`` (chat completions continuing the assistant turn), ``_http``
(connections, vLLM's own endpoints); failures are translated in ``_errors``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from langgraph.types import RetryPolicy
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ._errors import TRANSIENT

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
        default="litellm", description="Token route client: litellm (litellm.atext_completion, "
        "so LiteLLM callbacks, budgets and hooks see every call) or openai (the same "
        "/v1/completions request through the OpenAI SDK directly: less client CPU per round, "
        "unseen by LiteLLM)")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the chat template, e.g. enable_thinking")
    think_markers: tuple[str, str] | None = Field(
        default=None, description="How the model opens and closes thinking; default: "
        "detected from the server's chat template and tokenizer (dynasor_graph._thinking)")
    thinking: bool | None = Field(
        default=None, description="Thinking on or off, mapped to the family's own switch "
        "(enable_thinking, thinking, reasoning_effort, /think); None: the template's default")

    @field_validator("think_markers")
    @classmethod
    def _markers(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is not None and not all(marker.strip() for marker in value):
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


def request_tags_for(max_tokens: int) -> dict[str, Any]:
    """The extra body fields the running program's policy gives a call of ``max_tokens``."""
    tags = request_tags.get()
    return tags(max_tokens) if tags is not None else {}


async def admitted(max_tokens: int, call: Awaitable[T]) -> T:
    """Await ``call`` once the running program's admission hook lets it run."""
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
    token_logprobs: tuple[float, ...] = ()
    """Each generated token's log-probability (token-exact continuation only)."""

    def tokens_before(self, position: int) -> int:
        """How many generated tokens lie wholly before character ``position`` of ``text``
        (all of them in text mode, where token boundaries are unknown)."""
        if not self.token_offsets:
            return self.completion_tokens
        return sum(1 for offset in self.token_offsets if offset < position)


program_session: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dynasor_program_session", default=None)
"""The session key of the program whose node is running here (its state's ``session_id``),
set by :func:`keyed` for the node's duration."""

N = TypeVar("N", bound=Callable[[Any], Awaitable[Any]])


def new_session_id() -> str:
    """A fresh program key: a uuid4 hex."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def program_key(key: str | None) -> Iterator[None]:
    """Within the block, ``key`` is the running program's session key (an empty key keeps the
    enclosing one)."""
    token = program_session.set(key or program_session.get())
    try:
        yield
    finally:
        program_session.reset(token)


def keyed(node: N, *, start: bool = False) -> N:
    """``node`` run with its program's key (the state's ``session_id``) as the session key of
    every request it sends, and of the tasks it starts (a live stream). ``start=True`` is for a
    program's first node (``prepare``): a state without a key gets a new one, which that node
    keeps in the state, so every later node, and a resume, reads the same key."""

    @functools.wraps(node)
    async def run(state: Any) -> Any:
        key = state.get("session_id") if isinstance(state, Mapping) else None
        if start and not key:
            key = new_session_id()
            state = {**state, "session_id": key}
        with program_key(key):
            return await node(state)

    return cast(N, run)


def session_key() -> str | None:
    """The key that keeps the running program on one replica: the LangGraph thread's id when
    the run has one (a durable thread: a resumed run and every later turn of the thread keep
    it, and share its prefix), else the program's own key (:data:`program_session`), else
    ``None`` (a call outside any program)."""
    from langgraph.config import get_config

    try:
        thread = (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:  # not inside a graph run
        thread = None
    return str(thread) if thread else program_session.get()


def session_headers() -> dict[str, str]:
    """``X-Session-ID: <key>`` (:func:`session_key`) on every request of one program, so
    vllm-router (``--policy consistent_hash``) sends them all to the replica that holds the
    program's prefix in cache; none outside a program."""
    key = session_key()
    return {"X-Session-ID": key} if key else {}
