"""Graph state: what a reasoning program knows, including its Certaindex and decision.

The state is plain ``TypedDict`` data (JSON-serialisable, checkpointer friendly). Lists and
usage are replaced whole by each node rather than merged by reducers, so a graph used as a
node of a parent never hands back an ``operator.add`` key twice; parents that sum usage over
several calls use :func:`add_usage` as their own reducer.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from .certaindex import Decision

StopReason = Literal["certain", "finished", "budget"]


class Probe(TypedDict):
    """One probe: the reasoning tokens at probe time, the answer it gave, and its confidence."""

    tokens: int
    answer: str
    confident: bool
    text: str


class Usage(TypedDict):
    """Token counts from the server's ``usage``; never estimated."""

    reasoning_tokens: int
    reasoning_prompt_tokens: int
    probe_prompt_tokens: int
    probe_completion_tokens: int


def empty_usage() -> Usage:
    """A usage record with every count at zero."""
    return Usage(
        reasoning_tokens=0,
        reasoning_prompt_tokens=0,
        probe_prompt_tokens=0,
        probe_completion_tokens=0,
    )


def add_usage(left: Usage | None, right: Usage | None) -> Usage:
    """Reducer for a parent graph's ``usage`` key: sums two usage records field by field."""
    a, b = left or empty_usage(), right or empty_usage()
    return Usage(
        reasoning_tokens=a["reasoning_tokens"] + b["reasoning_tokens"],
        reasoning_prompt_tokens=a["reasoning_prompt_tokens"] + b["reasoning_prompt_tokens"],
        probe_prompt_tokens=a["probe_prompt_tokens"] + b["probe_prompt_tokens"],
        probe_completion_tokens=a["probe_completion_tokens"] + b["probe_completion_tokens"],
    )


class CoTInput(TypedDict, total=False):
    """What Dynasor-CoT reads: a question, or chat messages (dicts or LangChain messages)."""

    question: str
    messages: list[Any]


class CoTOutput(TypedDict, total=False):
    """What Dynasor-CoT hands back, to the caller or to a parent graph."""

    answer: str
    response: str
    certaindex: float
    decision: Decision
    stop_reason: StopReason | None
    probes: list[Probe]
    usage: Usage


class CoTState(CoTInput, CoTOutput, total=False):
    """The full Dynasor-CoT state: input, output, and the chat and reasoning so far."""

    chat: list[dict[str, str]]
    reasoning: str
