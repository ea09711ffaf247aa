"""Graph state: what a reasoning program knows, including its Certaindex and decision.

The state is plain ``TypedDict`` data (JSON-serialisable, checkpointer friendly). Lists and
usage are replaced whole by each node rather than merged by reducers, so a graph used as a
node of a parent never hands back an ``operator.add`` key twice; parents that sum usage over
several calls use :func:`add_usage` as their own reducer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypedDict, TypeVar, cast

from .certaindex import Decision

StopReason = Literal["certain", "finished", "budget", "width", "exhausted"]
"""Why a program stopped: its Certaindex reached the threshold, the model ended by itself, the
token budget ran out, every allowed path was spent (``width``), or a tree had nothing left to
expand (``exhausted``)."""


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
    reward_prompt_tokens: int
    reward_completion_tokens: int


def empty_usage() -> Usage:
    """A usage record with every count at zero."""
    return Usage(
        reasoning_tokens=0,
        reasoning_prompt_tokens=0,
        probe_prompt_tokens=0,
        probe_completion_tokens=0,
        reward_prompt_tokens=0,
        reward_completion_tokens=0,
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
    """Tokens the reasoning model generated (reasoning and probes): what budgets count."""
    return usage["reasoning_tokens"] + usage["probe_completion_tokens"]


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
    token_cap: int
    """Reasoning tokens the next chunk may reach, below ``max_tokens``: a multi-path parent
    sets it each round to share one total budget among its paths."""
    seed: int | None
    """This path's sampling seed, overriding the config's (parents give each path its own)."""


Item = TypeVar("Item", bound=Mapping[str, Any])


def merge_by_id(left: list[Item], right: list[Item]) -> list[Item]:
    """Reducer for lists of ``{"id": ...}`` records: an update replaces the record with its id
    and new ids are appended, so parallel ``Send`` branches each hand back their own record."""
    merged = {item["id"]: item for item in left}
    merged.update((item["id"], item) for item in right)
    return [merged[key] for key in sorted(merged)]


class PathState(CoTState, total=False):
    """One chain of thought of a multi-path program (without the shared ``chat``)."""

    id: int


class MultiPathOutput(TypedDict, total=False):
    """What every multi-path algorithm (SC, MCTS, Rebase) hands back."""

    answer: str
    certaindex: float
    decision: Decision
    stop_reason: StopReason | None
    usage: Usage
    budget_left: int


class SCOutput(MultiPathOutput, total=False):
    """Self-consistency's output: also every path, finished or cut short."""

    paths: Annotated[list[PathState], merge_by_id]


class SCState(CoTInput, SCOutput, total=False):
    """Self-consistency's state: the shared chat and the paths so far."""

    chat: list[dict[str, str]]


class TreeNode(TypedDict):
    """One step of a tree search: its text (the path is its ancestors' texts), its reward,
    and the visit statistics MCTS backpropagates."""

    id: int
    parent: int | None
    depth: int
    text: str
    terminal: bool
    answer: str
    reward: float | None
    visits: int
    value: float
    usage: Usage
    """What producing and scoring this step cost; the search's usage is the sum over nodes."""


class TreeOutput(MultiPathOutput, total=False):
    """A tree search's output: also the whole tree."""

    nodes: Annotated[list[TreeNode], merge_by_id]


class TreeState(CoTInput, TreeOutput, total=False):
    """A tree search's state: the chat, the tree, where to expand next and the beam width."""

    chat: list[dict[str, str]]
    focus: int
    frontier: list[int]
    width: int
