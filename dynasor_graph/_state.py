"""Shared graph state: the input every algorithm reads, token usage, probes, and the
multi-path output; each algorithm's own state lives in its module.

The state is plain ``TypedDict`` data (JSON-serialisable, checkpointer friendly). Lists and
usage are replaced whole by each node rather than merged by reducers, so a graph used as a
node of a parent never hands back an ``operator.add`` key twice; parents that sum usage over
several calls use :func:`add_usage` as their own reducer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NotRequired, TypedDict, TypeVar, cast

from langchain_core.messages import BaseMessage, convert_to_openai_messages

from .certaindex import Decision, StopReason


class Probe(TypedDict):
    """One probe: the reasoning tokens at probe time, the answer it gave, and its confidence."""

    tokens: int
    answer: str
    confident: bool
    text: str
    confidence: NotRequired[float | None]
    """The answer tokens' geometric-mean probability (``None``: no log-probabilities)."""


class Usage(TypedDict):
    """Token counts from the server's ``usage``; never estimated."""

    reasoning_tokens: int
    reasoning_prompt_tokens: int
    probe_prompt_tokens: int
    probe_completion_tokens: int
    reward_prompt_tokens: int
    reward_completion_tokens: int
    answer_tokens: int
    """Of ``reasoning_tokens``, those generated after the model closed its thinking (its
    answer); the rest is thinking. Exact in token mode; 0 in text mode."""
    discarded_tokens: int
    """Tokens the server streamed past the point where the program stopped (overlapped
    probing: the stream keeps decoding while a probe decides; an exit closes it): generated
    and received, never used. 0 in sequential probing."""


def empty_usage() -> Usage:
    """A usage record with every count at zero."""
    return Usage(
        reasoning_tokens=0,
        reasoning_prompt_tokens=0,
        probe_prompt_tokens=0,
        probe_completion_tokens=0,
        reward_prompt_tokens=0,
        reward_completion_tokens=0,
        answer_tokens=0,
        discarded_tokens=0,
    )


def add_usage(left: Usage | None, right: Usage | None) -> Usage:
    """Reducer for a parent graph's ``usage`` key: sums two usage records field by field."""
    a = cast(dict[str, int], left or {})
    b = cast(dict[str, int], right or {})
    return cast(Usage, {key: a.get(key, 0) + b.get(key, 0) for key in empty_usage()})


def sum_usage(usages: Iterable[Usage]) -> Usage:
    """The total of several usage records (the paths or nodes of a multi-path program)."""
    total = empty_usage()
    for usage in usages:
        total = add_usage(total, usage)
    return total


def generated_tokens(usage: Usage) -> int:
    """Tokens the reasoning model generated (reasoning, probes, and streamed tokens past an
    exit): what budgets count."""
    return (usage["reasoning_tokens"] + usage["probe_completion_tokens"]
            + usage.get("discarded_tokens", 0))


class CoTInput(TypedDict, total=False):
    """What every algorithm reads: a question, or chat messages (dicts or LangChain messages)."""

    question: str
    messages: list[Any]


def chat_messages(state: CoTInput, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation to reason about, as OpenAI-style dicts; rejects empty input."""
    raw = state.get("messages") or []
    question = (state.get("question") or "").strip()
    if not raw and not question:
        raise ValueError("question must not be empty (give 'question' or 'messages')")
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if raw:
        converted = convert_to_openai_messages(
            [m if isinstance(m, BaseMessage | dict) else {"role": "user", "content": str(m)}
             for m in raw]
        )
        for message in converted:
            content = message.get("content")
            text = content if isinstance(content, str) else str(content or "")
            messages.append({"role": str(message.get("role", "user")), "content": text})
    if question:
        messages.append({"role": "user", "content": question})
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise ValueError("question must not be empty (no user message has text)")
    return messages


Item = TypeVar("Item", bound=Mapping[str, Any])


def merge_by_id(left: list[Item], right: list[Item]) -> list[Item]:
    """Reducer for lists of ``{"id": ...}`` records: an update replaces the record with its id
    and new ids are appended, so parallel ``Send`` branches each hand back their own record."""
    merged = {item["id"]: item for item in left}
    merged.update((item["id"], item) for item in right)
    return [merged[key] for key in sorted(merged)]


class MultiPathOutput(TypedDict, total=False):
    """What every multi-path algorithm (SC, MCTS, Rebase) hands back."""

    answer: str
    certaindex: float
    decision: Decision
    stop_reason: StopReason | None
    usage: Usage
    budget_left: int
    thinking_format: str
    """The thinking format the run used, and how it was found (or why it is plain)."""
