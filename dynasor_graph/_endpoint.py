"""The one place that calls the model: LiteLLM's async chat API against a vLLM server.

Reasoning continues the assistant turn under the model's own chat template: the server renders
the conversation with ``continue_final_message=True, add_generation_prompt=False``, so a probe
(reasoning + suffix) shares the reasoning request's prompt byte for byte and vLLM's prefix cache
serves it. Token counts are the server's ``usage``, never estimated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._config import Endpoint
from ._errors import EndpointUnreachable, ServerRefused
from ._scheduler import scheduled

# Without this, importing litellm fetches a price map from the internet and stalls offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Message = dict[str, Any]  # an OpenAI chat message (an agent's may carry tool calls)


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

    Raises :class:`EndpointUnreachable` for transient failures (graph nodes retry those with
    LangGraph's ``RetryPolicy``) and :class:`ServerRefused` with the server's own message.
    """
    import litellm
    import openai

    litellm.suppress_debug_info = True  # no "Give Feedback" banners on every failure
    turn, template_flags = continuation(messages, assistant_prefix)
    extra_body: dict[str, Any] = dict(template_flags)
    if seed is not None:
        extra_body["seed"] = seed
    tool_args: dict[str, Any] = {"tools": list(tools), "tool_choice": "none"} if tools else {}
    if top_logprobs:
        tool_args.update(logprobs=True, top_logprobs=top_logprobs)
    try:
        # Under a Scheduler (Scheduler.run), wait for an admission slot first.
        response = await scheduled(max_tokens, litellm.acompletion(
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
    except (
        litellm.exceptions.APIConnectionError,
        litellm.exceptions.Timeout,
        litellm.exceptions.ServiceUnavailableError,
        litellm.exceptions.InternalServerError,
        litellm.exceptions.RateLimitError,
    ) as exc:
        raise EndpointUnreachable(
            f"cannot reach {endpoint.api_base}: {_server_message(exc)}", api_base=endpoint.api_base
        ) from exc
    except openai.OpenAIError as exc:  # LiteLLM's status errors subclass openai's
        raise ServerRefused(
            f"{endpoint.api_base} refused the request: {_server_message(exc)}",
            api_base=endpoint.api_base,
        ) from exc
    return _parse(response, endpoint)


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


def _server_message(exc: BaseException) -> str:
    """The server's own error text, without LiteLLM's prefixes and tracebacks."""
    text = str(getattr(exc, "message", None) or exc)
    start = text.find("{")
    if start != -1:
        try:
            body = json.loads(text[start:])
            error = body.get("error", body) if isinstance(body, dict) else body
            message = error.get("message") if isinstance(error, dict) else None
            if message:
                return str(message)
        except ValueError:
            pass
    for prefix in ("litellm.", "Hosted_vllmException - ", "OpenAIException - "):
        text = text.split(prefix)[-1] if prefix in text else text
    text = re.sub(r"\s*ssl:<[^>]*>", "", text).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
