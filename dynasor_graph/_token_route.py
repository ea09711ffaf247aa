"""The token route: token-exact continuation through vLLM's ``/tokenize`` and
``/v1/completions``.

A program renders its chat once through the server's chat template (:func:`render_chat`),
then every request's prompt is token ids: the rendered prompt, every token the program has
generated, and a suffix's ids (:func:`extend`). The model sees exactly its own tokens and the
prefix cache serves them all, whatever the chat template does to earlier assistant text.

Two clients send the same ``/v1/completions`` request (``Endpoint.client``):

- ``"litellm"`` (default): ``litellm.atext_completion``, LiteLLM's public API, so the user's
  LiteLLM callbacks, budgets, caches and rules see every call;
- ``"openai"``: the OpenAI SDK's ``AsyncOpenAI`` directly, skipping LiteLLM's per-call logging
  and pricing (less client CPU per round; LiteLLM's callbacks do not see these calls). Its
  body is encoded once by orjson and sent with the SDK's own ``post``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from ._context import context_limit, remember
from ._endpoint import Completion, Endpoint, Message, admitted, request_tags_for, session_headers
from ._errors import ServerRefused, endpoint_error
from ._http import encode_json, openai_client, post_json
from ._text_route import complete, field
from ._thinking import detect, thinking_fields

_NO_TOKENIZE: set[str] = set()  # servers that answered /tokenize with 404: text mode
_TOKENIZED: dict[tuple[str, str, str], tuple[int, ...]] = {}  # (server, model, text) → ids


async def render_chat(endpoint: Endpoint, messages: list[Message],
                      tools: Sequence[dict[str, Any]] = ()) -> list[int] | None:
    """The conversation (and an agent step's ``tools``) rendered through the server's chat
    template (generation prompt on, the detected thinking switch and ``chat_template_kwargs``
    passed through) as token ids, from
    vLLM's ``/tokenize``; ``None`` in text mode (``continuation="text"``, or ``auto`` and the
    server has no ``/tokenize``)."""
    if endpoint.continuation == "text" or (
            endpoint.continuation == "auto" and endpoint.server_root in _NO_TOKENIZE):
        return None
    body: dict[str, Any] = {"model": endpoint.served_name, "messages": messages,
                            "add_generation_prompt": True}
    if tools:
        body["tools"] = list(tools)
    kwargs = (await detect(endpoint)).template_kwargs(endpoint)  # the thinking switch too
    if kwargs:
        body["chat_template_kwargs"] = kwargs
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
    return token_ids(payload, endpoint, "/tokenize")


async def tokenize(endpoint: Endpoint, text: str) -> tuple[int, ...]:
    """``text`` as token ids without special tokens (a probe suffix), cached per server."""
    key = (endpoint.server_root, endpoint.served_name, text)
    if key not in _TOKENIZED:
        payload = await post_json(endpoint, "/tokenize", {
            "model": endpoint.served_name, "prompt": text, "add_special_tokens": False},
            admit=False)
        _TOKENIZED[key] = tuple(token_ids(payload, endpoint, "/tokenize"))
    return _TOKENIZED[key]


def token_ids(payload: dict[str, Any], endpoint: Endpoint, path: str) -> list[int]:
    """The ``tokens`` list of a ``/tokenize`` answer, or a clear refusal; the server's context
    window it reports (``max_model_len``) is remembered (:mod:`._context`)."""
    remember(endpoint, payload)
    tokens = payload.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ServerRefused(f"{endpoint.server_root}{path} answered without token ids",
                            api_base=endpoint.api_base)
    return tokens


async def room(endpoint: Endpoint, prompt: int, *, reserve: int = 0) -> int | None:
    """The most tokens a request whose prompt is ``prompt`` tokens may generate so that
    ``reserve`` more tokens (the probe that follows a chunk) still fit in the server's context
    window; ``None`` when the server reports no window."""
    limit = await context_limit(endpoint)
    return None if limit is None else limit - prompt - reserve


def completion_body(endpoint: Endpoint, prompt: Sequence[int], *, max_tokens: int,
                    temperature: float, top_p: float, seed: int | None,
                    top_logprobs: int = 0) -> dict[str, Any]:
    """The ``/v1/completions`` JSON body of a token-route call: the prompt ids, sampling,
    ``return_token_ids`` plus ``logprobs`` (the generated ids, their text offsets and their
    logprobs; ``top_logprobs`` alternatives per token when asked), the detected format's
    fields, the program's request tags (e.g. vLLM's ``priority``) and the seed. Both clients
    send it (the OpenAI SDK as it is, LiteLLM through :func:`completion_request`), and the
    streamed route (:mod:`._stream`) with ``stream`` and ``stream_options`` added."""
    body: dict[str, Any] = {
        "model": endpoint.served_name,
        "prompt": [prompt if isinstance(prompt, list) else list(prompt)],
        "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "return_token_ids": True, "logprobs": top_logprobs,
        **thinking_fields(endpoint, chat=False), **request_tags_for(max_tokens)}
    if seed is not None:
        body["seed"] = seed
    return body


_NAMED = ("prompt", "max_tokens", "temperature", "top_p")
"""The body's fields LiteLLM takes as named arguments; the rest rides in ``extra_body`` (its
text route does not map them), which the SDK under it merges into the same JSON body."""


def completion_request(endpoint: Endpoint, prompt: Sequence[int], *, max_tokens: int,
                       temperature: float, top_p: float, seed: int | None,
                       top_logprobs: int = 0) -> dict[str, Any]:
    """:func:`completion_body` as ``litellm.atext_completion``'s keyword arguments (the model
    apart: LiteLLM names it its own way), with the timeout and the program's session header."""
    body = completion_body(endpoint, prompt, max_tokens=max_tokens, temperature=temperature,
                           top_p=top_p, seed=seed, top_logprobs=top_logprobs)
    headers = session_headers()
    return {
        **{key: body[key] for key in _NAMED}, "timeout": endpoint.timeout_s,
        "extra_body": {k: v for k, v in body.items() if k not in (*_NAMED, "model")},
        **({"extra_headers": headers} if headers else {}),
    }


async def complete_tokens(
    endpoint: Endpoint,
    prompt: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None = None,
    top_logprobs: int = 0,
) -> Completion:
    """Continue a prompt of token ids for at most ``max_tokens`` tokens through vLLM's
    ``/v1/completions``, returning the generated ids (``return_token_ids``), where each token
    starts in the text, each token's logprob and, when ``top_logprobs > 0``, that many of
    its most likely alternatives (an LLM judge reads them)."""
    try:
        call: Awaitable[Any]
        if endpoint.client == "openai":
            import openai

            # The SDK's own POST with the body already encoded (orjson, 10x the standard
            # library's speed on a long id list): completions.create would encode it again.
            body = completion_body(endpoint, prompt, max_tokens=max_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed,
                                   top_logprobs=top_logprobs)
            call = openai_client(endpoint).post(
                "/completions", cast_to=openai.types.Completion, content=encode_json(body),
                options={"timeout": endpoint.timeout_s, "headers": session_headers()})
        else:
            import litellm

            litellm.suppress_debug_info = True
            call = litellm.atext_completion(
                model=f"text-completion-openai/{endpoint.served_name}",
                client=openai_client(endpoint), api_base=endpoint.api_base,
                api_key=endpoint.api_key.get_secret_value(), num_retries=0, max_retries=0,
                **completion_request(endpoint, prompt, max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, seed=seed,
                                     top_logprobs=top_logprobs))
        response = await admitted(max_tokens, call)
    except Exception as exc:
        raise endpoint_error(exc, endpoint.api_base) from exc
    return parse_completion(response, endpoint)


def parse_completion(response: Any, endpoint: Endpoint) -> Completion:
    """A ``/v1/completions`` answer (SDK object or dict) as a :class:`Completion`."""
    usage = field(response, "usage")
    choices = field(response, "choices")
    if usage is None or not choices:
        raise ServerRefused(f"{endpoint.api_base} returned no usage or no choices",
                            api_base=endpoint.api_base)
    choice = choices[0]
    generated = field(choice, "token_ids")
    if not isinstance(generated, list):
        raise ServerRefused(
            f"{endpoint.api_base} returned no token ids: token mode (continuation 'tokens' or "
            "'auto') needs vLLM's return_token_ids; use Endpoint(continuation='text') for a "
            "server without them",
            api_base=endpoint.api_base)
    logprobs = field(choice, "logprobs")
    offsets = field(logprobs, "text_offset") if logprobs is not None else None
    chosen = field(logprobs, "token_logprobs") if logprobs is not None else None
    alternatives = field(logprobs, "top_logprobs") if logprobs is not None else None
    return Completion(
        text=str(field(choice, "text") or ""),
        finish_reason=str(field(choice, "finish_reason") or "stop"),
        prompt_tokens=int(field(usage, "prompt_tokens")),
        completion_tokens=int(field(usage, "completion_tokens")),
        token_ids=tuple(int(i) for i in generated),
        token_offsets=tuple(int(o) for o in offsets or ()),
        token_logprobs=tuple(float(p) for p in chosen or () if p is not None),
        top_logprobs=tuple({str(t): float(p) for t, p in (top or {}).items()}
                           for top in alternatives or ()),
    )


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
    ``prompt_ids + generated + ids(suffix)``. Text mode (``prompt_ids is None``): the chat
    continues the assistant turn ``text + suffix`` (:func:`~._text_route.complete`).
    """
    if prompt_ids is None:
        return await complete(endpoint, chat, text + suffix, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed)
    suffix_ids = await tokenize(endpoint, suffix) if suffix else ()
    return await complete_tokens(endpoint, [*prompt_ids, *generated, *suffix_ids],
                                 max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 seed=seed)
