"""The server's context window, a budget every token-route request is sized to fit.

vLLM serves a model with a context window, ``max_model_len``: a request's prompt plus the
tokens it may generate. Recent vLLM cuts a request's ``max_tokens`` to what is left and refuses
a prompt that fills the window; older vLLM refuses any request whose prompt plus
``max_tokens`` passes it. Either way a program that reasons to the window would crash there,
losing its run, so every program learns the window and never sends a request that cannot fit:

- :func:`remember` records ``max_model_len`` from a ``/tokenize`` answer (vLLM's
  ``TokenizeResponse`` carries it), so the window usually costs no request of its own;
- :func:`context_limit` is the window, read once per server and model (from a ``/tokenize``
  answer seen before, else one bounded ``GET /v1/models``, whose ``ModelCard`` lists
  ``max_model_len``); ``None`` when the server reports none (then requests go as before);
- :func:`room` (in ``_token_route``) is what a request may generate after its prompt, keeping
  room for what must follow it (the probe after a chunk);
- :func:`no_room` is the error for a prompt that leaves no room at all.

Where the window is respected: every chunk and probe of Dynasor-CoT and SC (``_probe``), every
tree step (``_tree``), an LLM judge's prompt (:class:`~dynasor_graph.rewards.JudgeReward`
shortens the solution it shows), and an agent's probe (``_agent_probe``: skipped when it
cannot fit).

Text mode (chat completions) knows no token counts before a request, so it knows no window.
"""

from __future__ import annotations

from typing import Any

from ._endpoint import Endpoint
from ._errors import ServerRefused
from ._http import get_json

_LIMITS: dict[tuple[str, str], int | None] = {}  # (server, model) → max_model_len (None: none)


def _key(endpoint: Endpoint) -> tuple[str, str]:
    return endpoint.server_root, endpoint.served_name


def _valid(value: Any, endpoint: Endpoint, where: str) -> int | None:
    """``max_model_len`` as read from an answer: a positive int, absent (``None``), or a clear
    refusal for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServerRefused(f"{endpoint.server_root}{where} answered max_model_len={value!r}, "
                            "not a positive number of tokens", api_base=endpoint.api_base)
    return value


def remember(endpoint: Endpoint, payload: dict[str, Any]) -> None:
    """Record the window a ``/tokenize`` answer reports (vLLM's ``max_model_len``)."""
    limit = _valid(payload.get("max_model_len"), endpoint, "/tokenize")
    if limit is not None:
        _LIMITS[_key(endpoint)] = limit


async def context_limit(endpoint: Endpoint) -> int | None:
    """The server's context window for the endpoint's model, in tokens; ``None`` when neither
    a ``/tokenize`` answer nor ``/v1/models`` reports one. Read once and cached."""
    key = _key(endpoint)
    if key not in _LIMITS:
        _LIMITS[key] = await _listed_limit(endpoint)
    return _LIMITS[key]


async def _listed_limit(endpoint: Endpoint) -> int | None:
    """``max_model_len`` of the model's entry in ``GET /v1/models`` (vLLM's ``ModelCard``),
    within the endpoint's timeout; ``None`` when the server lists none."""
    try:
        payload = await get_json(endpoint, "/v1/models")
    except ServerRefused:  # no model list (not vLLM): no window known
        return None
    models = payload.get("data")
    for card in models if isinstance(models, list) else ():
        if isinstance(card, dict) and card.get("id") == endpoint.served_name:
            return _valid(card.get("max_model_len"), endpoint, "/v1/models")
    return None


def no_room(endpoint: Endpoint, prompt: int, reserve: int, limit: int, *,
            what: str = "the prompt") -> ServerRefused:
    """The error for a program whose prompt leaves no room, within the window, for one
    generated token and the ``reserve`` that must follow it (a probe); ``what`` names the
    prompt (an LLM judge's, shortened as far as it goes)."""
    after = f" and the {reserve} tokens of a probe" if reserve else ""
    return ServerRefused(
        f"{endpoint.api_base}: {what} is {prompt} tokens, which leaves no room for one "
        f"generated token{after} within the model's maximum context length (max_model_len "
        f"{limit}); shorten the question or serve the model with a larger --max-model-len",
        api_base=endpoint.api_base)
