"""The text route: continue an assistant turn through LiteLLM's chat API.

:func:`complete` sends the conversation with the assistant's text so far as its last message;
the server renders it with ``continue_final_message=True, add_generation_prompt=False``, so a
probe (reasoning + suffix) shares the reasoning request's prompt and vLLM's prefix cache.
It is the route for servers without ``/tokenize`` (``Endpoint(continuation="text")`` or
``"auto"``), for agent probes that carry tools, and for LLM-judge rewards. Token counts are the
server's ``usage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._endpoint import Completion, Endpoint, Message, admitted, request_tags_for, session_headers
from ._errors import EndpointError, ServerRefused, endpoint_error
from ._thinking import known, thinking_fields


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
    extra_body.update(thinking_fields(endpoint, chat=True))
    if seed is not None:
        extra_body["seed"] = seed
    extra_body.update(request_tags_for(max_tokens))
    options: dict[str, Any] = {"tools": list(tools), "tool_choice": "none"} if tools else {}
    if top_logprobs:
        options.update(logprobs=True, top_logprobs=top_logprobs)
    headers = session_headers()
    if headers:
        options["extra_headers"] = headers
    try:
        response = await admitted(max_tokens, litellm.acompletion(
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
            **options,
        ))
    except Exception as exc:
        raise _text_mode_hint(endpoint_error(exc, endpoint.api_base)) from exc
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
    content = field(message, "content") or ""
    thinking = (field(message, "reasoning_content") or field(message, "reasoning")
                or (getattr(message, "provider_specific_fields", None) or {}).get("reasoning"))
    if not thinking:
        return str(content)
    fmt = known(endpoint)  # the detected close marker (R1's where nothing was detected)
    close = fmt.close if fmt is not None and not fmt.plain else "</think>"
    return f"{thinking}{close}{content}" if content else str(thinking)


def _top_logprobs(choice: Any) -> tuple[dict[str, float], ...]:
    """``choice.logprobs.content[i].top_logprobs`` as one token → logprob map per token."""
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if content is None and isinstance(logprobs, dict):
        content = logprobs.get("content")
    result: list[dict[str, float]] = []
    for entry in content or []:
        alternatives = field(entry, "top_logprobs") or []
        result.append({str(field(a, "token")): float(field(a, "logprob")) for a in alternatives})
    return tuple(result)


def field(obj: Any, key: str) -> Any:
    """``obj[key]`` or ``obj.key``: responses come as SDK objects or plain dicts."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
