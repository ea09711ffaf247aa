"""Exceptions raised by dynasor-graph.

Hierarchy::

    DynasorError
     ├── EndpointError              a model call failed; the message names the endpoint URL
     │    ├── EndpointUnreachable   no answer: connection refused, DNS failure or timeout
     │    ├── ServerBusy            the server answered 429 or 5xx: overloaded or failing
     │    └── ServerRefused         the server answered 4xx: the request itself is wrong
     ├── DataFormatError            a dataset or traces file is malformed
     └── LocalServerError           the embedded local vLLM could not be prepared or started

``EndpointUnreachable`` and ``ServerBusy`` are transient: graph nodes retry them with
LangGraph's ``RetryPolicy`` (``Endpoint.max_retries`` times); ``ServerRefused`` is never
retried. Invalid configuration raises :class:`pydantic.ValidationError`, which names the field.

:func:`endpoint_error` turns whatever a failed call raised (LiteLLM's, the OpenAI SDK's or
httpx's exceptions) into this hierarchy, reading the server's status and error body.
"""

from __future__ import annotations

import json
import re
from typing import Any


class DynasorError(Exception):
    """Base class of every error this package raises on purpose."""


class EndpointError(DynasorError):
    """A model call failed. ``status_code`` is the server's HTTP status, if it answered."""

    def __init__(self, message: str, *, api_base: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.api_base = api_base
        self.status_code = status_code


class EndpointUnreachable(EndpointError):
    """The server could not be reached in time; transient, so nodes retry it."""


class ServerBusy(EndpointError):
    """The server answered 429 (rate limit) or 5xx (overloaded, failing); nodes retry it."""


class ServerRefused(EndpointError):
    """The server answered with a 4xx error; retrying the same request would not help."""


class DataFormatError(DynasorError, ValueError):
    """A dataset or traces file is malformed; the message names the file and line."""


class LocalServerError(DynasorError):
    """The embedded local vLLM (SmolLM2 on the CPU) could not be prepared or started."""


TRANSIENT: tuple[type[EndpointError], ...] = (EndpointUnreachable, ServerBusy)
"""The endpoint errors worth retrying."""


def endpoint_error(exc: Exception, api_base: str) -> EndpointError:
    """The :class:`EndpointError` for a failed call to ``api_base``, read from the HTTP status
    and error body of the server's answer (LiteLLM's and the OpenAI SDK's errors alike).

    An exception that is no server failure (a bug) is raised again as it is.
    """
    import litellm
    import openai

    if isinstance(exc, EndpointError):
        return exc
    status = getattr(exc, "status_code", None)
    unanswered = _unanswered(exc) or isinstance(
        exc, litellm.exceptions.APIConnectionError | litellm.exceptions.Timeout)
    if unanswered or not isinstance(status, int):
        if not unanswered and not isinstance(exc, openai.OpenAIError):
            raise exc
        return EndpointUnreachable(f"cannot reach {api_base}: {server_message(exc)}",
                                   api_base=api_base)
    if status == 429 or status >= 500:
        return ServerBusy(f"{api_base} failed ({status}): {server_message(exc)}",
                          api_base=api_base, status_code=status)
    return ServerRefused(f"{api_base} refused the request: {server_message(exc)}",
                         api_base=api_base, status_code=status)


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


def server_message(exc: BaseException) -> str:
    """The server's own error text: the ``message`` of the error body it sent (``{"error":
    {"message": ...}}`` or vLLM's ``{"message": ...}``), read from the HTTP response found in
    the exception's cause chain (LiteLLM keeps the real one there); else the exception's."""
    seen: BaseException | None = exc
    while seen is not None:
        message = body_message(getattr(seen, "body", None)) or _response_message(seen)
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
        return body_message(json.loads(content))
    except ValueError:
        return None


def body_message(body: Any) -> str | None:
    """The ``message`` of an error body (OpenAI's ``{"error": {...}}`` or vLLM's own)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:500] if message else None
