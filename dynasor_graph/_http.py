"""Connections to the server: one pooled httpx client per event loop, the ``AsyncOpenAI``
client over it, and :func:`post_json` for vLLM's own endpoints (``/tokenize``, ``/classify``).

An async client cannot cross event loops, so each loop gets its own; the ``AsyncOpenAI``
client shares the loop's httpx pool, so token-route generations, ``/tokenize`` and reward calls
reuse the same connections.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from ._endpoint import Endpoint, admitted, session_headers
from ._errors import EndpointUnreachable, ServerBusy, ServerRefused, body_message

if TYPE_CHECKING:
    import httpx
    import openai

_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary())
_OPENAI: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str, float], openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary())


def encode_json(body: dict[str, Any]) -> bytes:
    """``body`` as a request's JSON bytes, through orjson: a reasoning program's prompt is its
    whole token-id list (32K ids at 32K tokens, two requests a round), which the standard
    library's encoder takes about ten times longer to write."""
    import orjson

    return orjson.dumps(body)


def json_headers(endpoint: Endpoint) -> dict[str, str]:
    """The headers of a JSON POST of ours to the server: the key, the content type of
    :func:`encode_json`'s bytes and the running program's session header."""
    return {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}",
            "Content-Type": "application/json", **session_headers()}


def shared_client() -> httpx.AsyncClient:
    """The running loop's pooled httpx client."""
    import httpx

    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _CLIENTS[loop] = httpx.AsyncClient()
    return client


def openai_client(endpoint: Endpoint) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` over the loop's pooled httpx client, one per server, key and timeout.

    It carries the endpoint's timeout itself: ``litellm.atext_completion`` does not pass its
    ``timeout`` on to a client it is given. Retries are the graph's (``max_retries=0``).
    """
    import openai

    clients = _OPENAI.setdefault(asyncio.get_running_loop(), {})
    key = (endpoint.api_base, endpoint.api_key.get_secret_value(), endpoint.timeout_s)
    if key not in clients or shared_client().is_closed:
        # openai >= 3.57 types http_client as httpx2's client (its fork of httpx) and still
        # takes an httpx one: the pooled client is shared with /tokenize and the reward calls.
        clients[key] = openai.AsyncOpenAI(
            base_url=endpoint.api_base, api_key=key[1], max_retries=0,
            timeout=endpoint.timeout_s,
            http_client=shared_client())  # type: ignore[arg-type, unused-ignore]
    return clients[key]


async def get_json(endpoint: Endpoint, path: str) -> dict[str, Any]:
    """GET vLLM's own ``path`` (e.g. ``/tokenizer_info``, ``/v1/models``) with the endpoint's
    key and timeout: the JSON object answered, :class:`~dynasor_graph.EndpointUnreachable`
    when the server cannot be reached, :class:`~dynasor_graph.ServerRefused` for any other
    answer (an error status, not a JSON object)."""
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
    try:
        response = await shared_client().get(endpoint.server_root + path, headers=headers,
                                              timeout=endpoint.timeout_s)
    except httpx.TransportError as exc:
        raise EndpointUnreachable(f"cannot reach {endpoint.api_base} ({path}): "
                                  f"{exc or type(exc).__name__}",
                                  api_base=endpoint.api_base) from exc
    try:
        payload = response.json() if response.is_success else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ServerRefused(f"{path}: {response.status_code}", api_base=endpoint.api_base,
                            status_code=response.status_code)
    return payload


async def post_json(endpoint: Endpoint, path: str, body: dict[str, Any], *,
                    admit: bool = True) -> dict[str, Any]:
    """POST ``body`` to vLLM's own ``path`` (e.g. ``/classify``) with the endpoint's key and
    timeout, through the admission hook unless ``admit=False`` (``/tokenize`` runs no model);
    the JSON answer, or an :class:`~dynasor_graph.EndpointError`. It carries the running
    program's session header, as its generations do."""
    import httpx

    url = endpoint.server_root + path
    request = shared_client().post(url, content=encode_json(body),
                                   headers=json_headers(endpoint), timeout=endpoint.timeout_s)
    try:
        response = await (admitted(0, request) if admit else request)
    except httpx.TransportError as exc:
        raise EndpointUnreachable(f"cannot reach {endpoint.api_base} ({path}): "
                                  f"{exc or type(exc).__name__}",
                                  api_base=endpoint.api_base) from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    status = response.status_code
    message = body_message(payload) or response.text[:300]
    if status == 429 or status >= 500:
        raise ServerBusy(f"{url} failed ({status}): {message}", api_base=endpoint.api_base,
                         status_code=status)
    if not response.is_success or not isinstance(payload, dict):
        raise ServerRefused(f"{url} refused the request: {message}",
                            api_base=endpoint.api_base, status_code=status)
    return payload
