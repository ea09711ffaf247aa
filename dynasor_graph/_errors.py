"""Exceptions raised by dynasor-graph.

Hierarchy::

    DynasorError
     ├── EndpointError             a model call failed; the message names the endpoint URL
     │    ├── EndpointUnreachable  connection refused, DNS failure or timeout, after retries
     │    └── ServerRefused        the server answered with an error (e.g. prompt too long)
     └── LocalServerError          the embedded local vLLM could not be prepared or started

Invalid configuration raises :class:`pydantic.ValidationError`, which names the field.
"""

from __future__ import annotations


class DynasorError(Exception):
    """Base class of every error this package raises on purpose."""


class EndpointError(DynasorError):
    """A model call through LiteLLM failed."""

    def __init__(self, message: str, *, api_base: str) -> None:
        super().__init__(message)
        self.api_base = api_base


class EndpointUnreachable(EndpointError):
    """The server could not be reached in time; transient, so nodes retry it."""


class ServerRefused(EndpointError):
    """The server answered with an error; retrying the same request would not help."""


class LocalServerError(DynasorError):
    """The embedded local vLLM (SmolLM2 on the CPU) could not be prepared or started."""
