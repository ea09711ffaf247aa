"""Shared pieces of the tree searches (MCTS, Rebase): expand a step, score it, pick the answer.

A tree is a list of :class:`TreeNode` in the state (merged by id, so parallel ``Send``
expansions each add their own child). A step is one continuation of up to ``chunk_size``
tokens; a node is terminal when the model ended its turn there, at ``max_depth``, or where its
path fills the server's context window (token mode: a step is cut to what the window holds,
and a path no further step fits in ends there, as at ``max_depth``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._answers import final_answer
from ._compat import renamed_fields
from ._context import context_limit, no_room
from ._endpoint import Endpoint, keyed, new_session_id, retry_policy
from ._state import (
    CoTInput,
    MultiPathOutput,
    Usage,
    chat_messages,
    empty_usage,
    merge_by_id,
    sum_usage,
)
from ._thinking import detect
from ._token_route import extend, render_chat, room
from .certaindex import answer_entropy, combine, reward_certaindex, weighted_majority
from .rewards import RewardModel


class TreeConfig(BaseModel):
    """Settings shared by the tree searches (MCTS, Rebase): steps, bounds and exit thresholds.

    A step is up to ``chunk_size`` tokens of the model's own continuation; a path ends when the
    model ends its turn, at ``max_depth`` steps, or where it fills the server's context window.
    The Certaindex combines the reward measure (threshold ``reward_threshold``) and, if
    ``entropy_threshold`` is set, the answer entropy of the finished paths; it may end the run
    once ``detect_at`` paths have finished.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_size: int = Field(default=64, ge=1, le=8192, description="Tokens of one step at most")
    max_depth: int = Field(default=8, ge=1, le=256)
    width: int = Field(default=2, ge=1, le=256)
    max_width: int = Field(default=4, ge=1, le=256)
    token_budget: int = Field(
        default=8192, ge=1, le=10_000_000,
        description="Reasoning tokens of all steps together, never exceeded",
    )
    reward_threshold: float = Field(default=0.4, gt=0, le=1)
    entropy_threshold: float | None = Field(default=None, gt=0, le=1)
    detect_at: int = Field(default=3, ge=1, le=256)
    widen_below: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int | None = None
    system_prompt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_fields(data, {"step_tokens": "chunk_size",
                                     "max_total_tokens": "token_budget"}, cls.__name__)

    @model_validator(mode="after")
    def _widths(self) -> TreeConfig:
        if self.width > self.max_width:
            raise ValueError("width must not exceed max_width")
        return self


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
    token_ids: list[int]
    """The step's generated token ids (token-exact mode; empty in text mode)."""
    context_full: NotRequired[bool]
    """The path fills the server's context window here: no further step fits (terminal)."""


class TreeOutput(MultiPathOutput, total=False):
    """A tree search's output: also the whole tree."""

    nodes: Annotated[list[TreeNode], merge_by_id]


class TreeState(CoTInput, TreeOutput, total=False):
    """A tree search's state: the chat, the tree, where to expand next and the beam width."""

    chat: list[dict[str, str]]
    prompt_ids: list[int] | None
    """The chat rendered once through the chat template (``None`` in text mode)."""
    focus: int
    frontier: list[int]
    width: int
    session_id: str
    """The program's key (a uuid4 hex made in ``prepare``): the ``X-Session-ID`` of every
    step and reward request when the run has no thread."""


def new_node(node_id: int, parent: TreeNode | None, text: str = "") -> TreeNode:
    """A node below ``parent`` (the root when ``None``), not yet scored or visited."""
    return TreeNode(id=node_id, parent=None if parent is None else parent["id"],
                    depth=0 if parent is None else parent["depth"] + 1, text=text,
                    terminal=False, answer="", reward=None, visits=0, value=0.0,
                    usage=empty_usage(), token_ids=[])


async def start(state: TreeState, endpoint: Endpoint, config: TreeConfig) -> dict[str, Any]:
    """The state of a fresh search: the chat (rendered once), a root node, zero usage, the
    whole budget, and the program's key (``prepare``'s :func:`~._endpoint.keyed` made it)."""
    fmt = await detect(endpoint)
    chat = fmt.chat(endpoint, chat_messages(state, config.system_prompt))
    return {"chat": chat, "prompt_ids": await render_chat(endpoint, chat),
            "thinking_format": fmt.describe(),
            "nodes": [new_node(0, None)],
            "usage": empty_usage(), "certaindex": 0.0, "decision": "continue",
            "stop_reason": None, "answer": "", "budget_left": config.token_budget,
            "focus": 0, "frontier": [0], "width": config.width,
            "session_id": state.get("session_id") or new_session_id()}


def path_text(nodes: list[TreeNode], node_id: int) -> str:
    """The reasoning from the root to ``node_id``: its ancestors' step texts in order."""
    by_id = {n["id"]: n for n in nodes}
    texts: list[str] = []
    current: int | None = node_id
    while current is not None:
        texts.append(by_id[current]["text"])
        current = by_id[current]["parent"]
    return "".join(reversed(texts))


def path_ids(nodes: list[TreeNode], node_id: int) -> list[int]:
    """The token ids from the root to ``node_id``: its ancestors' step ids in order."""
    by_id = {n["id"]: n for n in nodes}
    steps: list[list[int]] = []
    current: int | None = node_id
    while current is not None:
        steps.append(by_id[current].get("token_ids", []))
        current = by_id[current]["parent"]
    return [token for step in reversed(steps) for token in step]


def children(nodes: list[TreeNode], node_id: int) -> list[TreeNode]:
    """The children of ``node_id``, oldest first."""
    return [n for n in nodes if n["parent"] == node_id]


def expansions(state: TreeState, plan: list[tuple[int, int]], config: TreeConfig) -> list[Send]:
    """``Send`` one ``expand`` task per new child in ``plan`` (parent id, children), each with
    an equal share of the budget left, at most ``chunk_size``; the plan is trimmed so every
    child gets at least one token, so the total budget is never exceeded."""
    affordable = state["budget_left"]
    trimmed: list[tuple[int, int]] = []
    for parent_id, count in plan:
        count = max(0, min(count, affordable))
        affordable -= count
        trimmed.append((parent_id, count))
    wanted = sum(count for _, count in trimmed)
    if wanted == 0:
        return []
    share = min(config.chunk_size, state["budget_left"] // wanted)
    by_id = {n["id"]: n for n in state["nodes"]}
    next_id = max(by_id) + 1
    sends: list[Send] = []
    for parent_id, count in trimmed:
        prefix = path_text(state["nodes"], parent_id)
        prefix_ids = path_ids(state["nodes"], parent_id)
        for _ in range(count):
            sends.append(Send("expand", {"chat": state["chat"], "parent": by_id[parent_id],
                                         "prompt_ids": state.get("prompt_ids"),
                                         "prefix": prefix, "prefix_ids": prefix_ids,
                                         "id": next_id, "max_tokens": share,
                                         "session_id": state.get("session_id", "")}))
            next_id += 1
    return sends


def expand_node(endpoint: Endpoint, config: TreeConfig) -> Any:
    """Generate one step below a parent (a ``Send`` task) and add it to the tree."""

    async def expand(task: dict[str, Any]) -> dict[str, Any]:
        parent: TreeNode = task["parent"]
        prompt_ids, prefix_ids = task.get("prompt_ids"), task.get("prefix_ids", [])
        left = None if prompt_ids is None else await room(
            endpoint, len(prompt_ids) + len(prefix_ids))
        if left is not None and left < 1:  # only a prompt that fills the window (see below)
            raise no_room(endpoint, len(prompt_ids or ()) + len(prefix_ids), 0,
                          await context_limit(endpoint) or 0)
        step = await extend(
            endpoint, task["chat"], prompt_ids, prefix_ids, task["prefix"],
            max_tokens=task["max_tokens"] if left is None else min(task["max_tokens"], left),
            temperature=config.temperature, top_p=config.top_p,
            seed=None if config.seed is None else config.seed + task["id"],
        )
        node = new_node(task["id"], parent, step.text)
        node["token_ids"] = list(step.token_ids)
        if left is not None and step.finish_reason == "length" and (
                left - step.completion_tokens < 1):  # no further step fits below this node
            node["context_full"] = True
        if (step.finish_reason != "length" or node["depth"] >= config.max_depth
                or node.get("context_full")):
            node["terminal"] = True
            fmt = await detect(endpoint)  # the answer from the family's answer section
            node["answer"] = final_answer(fmt.answer(task["prefix"] + step.text))
        node["usage"]["reasoning_tokens"] = step.completion_tokens
        node["usage"]["reasoning_prompt_tokens"] = step.prompt_tokens
        return {"nodes": [node]}

    return keyed(expand)


def evaluate_node(reward: RewardModel, config: TreeConfig) -> Any:
    """Score every node added since the last evaluation, concurrently, with the reward model;
    refresh the usage totals and the budget left."""

    async def evaluate(state: TreeState) -> dict[str, Any]:
        nodes = state["nodes"]
        new = [n for n in nodes if n["reward"] is None and n["parent"] is not None]
        results = await asyncio.gather(
            *(reward.score(state["chat"], path_text(nodes, n["id"])) for n in new)
        )
        scored = []
        for node, result in zip(new, results, strict=True):
            usage = node["usage"].copy()
            usage["reward_prompt_tokens"] += result.prompt_tokens
            usage["reward_completion_tokens"] += result.completion_tokens
            scored.append(TreeNode(**{**node, "reward": result.score, "usage": usage}))
        by_id = {n["id"]: n for n in [*nodes, *scored]}
        usage = sum_usage(n["usage"] for n in by_id.values())
        return {"nodes": scored, "usage": usage,
                "budget_left": config.token_budget - usage["reasoning_tokens"]}

    return keyed(evaluate)


def tree_certaindex(
    finished: list[TreeNode], config: TreeConfig, how: Literal["mean", "max"]
) -> float:
    """The reward Certaindex of the finished paths, AND their answer entropy if configured."""
    rewards = [n["reward"] or 0.0 for n in finished]
    signals = [(reward_certaindex(rewards, how), config.reward_threshold)]
    if config.entropy_threshold is not None:
        signals.append((answer_entropy([n["answer"] for n in finished])[0],
                        config.entropy_threshold))
    return combine(*signals)


def finished_paths(nodes: list[TreeNode]) -> list[TreeNode]:
    """Terminal nodes that have been scored: the tree's finished solutions."""
    return [n for n in nodes if n["terminal"] and n["reward"] is not None]


def walled(nodes: list[TreeNode]) -> bool:
    """True when every path the tree ended, ended by filling the server's context window:
    a search that stops for want of anything to expand then stops for ``context``."""
    ended = [n for n in nodes if n["terminal"]]
    return bool(ended) and all(n.get("context_full", False) for n in ended)


async def finish(state: TreeState) -> dict[str, Any]:
    """Answer by reward-weighted vote over the finished paths (Rebase's weighted majority);
    with none finished, the best-scored path's last answer."""
    done = finished_paths(state["nodes"])
    answer = weighted_majority([n["answer"] for n in done], [n["reward"] or 0.0 for n in done])
    if not answer:
        scored = [n for n in state["nodes"] if n["reward"] is not None]
        best = max(scored, key=lambda n: n["reward"] or 0.0, default=None)
        answer = final_answer(path_text(state["nodes"], best["id"])) if best else ""
    return {"answer": answer, "decision": "exit"}


def search_builder(
    endpoint: Endpoint,
    reward: RewardModel,
    config: TreeConfig,
    first_expansion: Callable[[TreeState], list[Send]],
    decide_node: tuple[str, Any],
) -> StateGraph[TreeState, None, CoTInput, TreeOutput]:
    """The part every tree search shares: ``prepare ─Send→ expand → evaluate → <decide>`` and
    ``finish → END``; the algorithm adds its own routing from ``<decide>``."""

    async def prepare(state: TreeState) -> dict[str, Any]:
        return await start(state, endpoint, config)

    name, node = decide_node
    retry = retry_policy(endpoint)
    builder = StateGraph(TreeState, input_schema=CoTInput, output_schema=TreeOutput)
    builder.add_node("prepare", keyed(prepare, start=True), retry_policy=retry)
    builder.add_node("expand", expand_node(endpoint, config), retry_policy=retry)
    builder.add_node("evaluate", evaluate_node(reward, config), retry_policy=retry)
    builder.add_node(name, node)
    builder.add_node("finish", finish)
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", first_expansion, ["expand"])
    builder.add_edge("expand", "evaluate")
    builder.add_edge("evaluate", name)
    builder.add_edge("finish", END)
    return builder
