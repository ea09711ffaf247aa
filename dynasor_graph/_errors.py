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
"""

from __future__ import annotations


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
