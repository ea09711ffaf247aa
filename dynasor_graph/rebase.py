"""Rebase with Certaindex: a reward-guided step-wise beam that widens while its rewards are
spread out and stops once a finished solution scores high.

Each step, the ``width`` paths not yet finished are shared among the frontier nodes in
proportion to ``softmax(reward / softmax_temperature)`` and ``expand`` adds those children, one
``Send`` each; ``evaluate`` scores them; ``rescore`` makes the unfinished children the new
frontier and routes on the Certaindex (max reward of the finished paths, AND their answer
entropy if ``entropy_threshold`` is set): **exit** once ``detect_at`` paths have finished and it
passes, or when nothing is left to expand; **widen** the beam by ``widen_by`` (up to
``max_width``) when the frontier's reward concentration is below ``widen_below`` or the beam is
spent; else **continue** with the next step::

    START → prepare ─Send→ expand … → evaluate → rescore ─continue─Send→ expand
                                                    ├─widen→ widen_beam ─Send→ expand
                                                    └─exit→ finish → END

Usage::

    graph = create_rebase(endpoint, FunctionReward(my_verifier), RebaseConfig(width=4))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, Send
from pydantic import Field

from ._endpoint import Endpoint
from ._state import CoTInput
from ._tree import (
    TreeConfig,
    TreeOutput,
    TreeState,
    expansions,
    finished_paths,
    search_builder,
    tree_certaindex,
    walled,
)
from .certaindex import reward_concentration, route_on, softmax_weights
from .rewards import RewardModel

__all__ = [
    "RebaseConfig",
    "TreeOutput",
    "TreeState",
    "beam_counts",
    "create_rebase",
]


class RebaseConfig(TreeConfig):
    """Rebase: a beam of ``width`` paths (widened up to ``max_width``) shared among frontier
    nodes by ``softmax(reward / softmax_temperature)``. Reward Certaindex = max reward."""

    width: int = Field(default=4, ge=1, le=256)
    max_width: int = Field(default=8, ge=1, le=256)
    reward_threshold: float = Field(default=0.99, gt=0, le=1)
    softmax_temperature: float = Field(default=0.2, gt=0, le=10)
    widen_by: int = Field(default=4, ge=1, le=256)


def create_rebase(
    endpoint: Endpoint,
    reward: RewardModel,
    config: RebaseConfig | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str = "dynasor_rebase",
) -> CompiledStateGraph[TreeState, None, CoTInput, TreeOutput]:
    """Build the Rebase graph.

    Args:
        endpoint: the vLLM server that generates the steps.
        reward: scores a (partial) solution in [0, 1] (:mod:`dynasor_graph.rewards`).
        config: step size, beam widths, softmax temperature, exit thresholds and the token
            budget; default :class:`RebaseConfig`.
        checkpointer: LangGraph checkpointer for durable, resumable runs.
        name: the graph's name (in Studio and as a subgraph).

    Returns:
        A compiled graph reading ``question`` or ``messages`` and returning
        :class:`~dynasor_graph.TreeOutput` (answer, Certaindex, decision, stop reason, usage,
        the tree, the budget left).

    Example:
        >>> graph = create_rebase(endpoint, FunctionReward(verify))  # doctest: +SKIP
    """
    config = config or RebaseConfig()

    def expand_frontier(state: TreeState) -> list[Send]:
        nodes = {n["id"]: n for n in state["nodes"]}
        frontier = state["frontier"]
        remaining = state["width"] - len(finished_paths(state["nodes"]))
        rewards = [nodes[i]["reward"] or 0.0 for i in frontier]
        counts = beam_counts(softmax_weights(rewards, config.softmax_temperature), remaining)
        return expansions(state, list(zip(frontier, counts, strict=True)), config)

    async def rescore(state: TreeState) -> dict[str, Any]:
        nodes = state["nodes"]
        step = [n for n in nodes if n["parent"] in state["frontier"]]
        frontier = [n["id"] for n in step if not n["terminal"]]
        finished = finished_paths(nodes)
        certaindex = tree_certaindex(finished, config, "max")
        spent = len(finished) >= state["width"]
        spread = reward_concentration([n["reward"] or 0.0 for n in step if not n["terminal"]],
                                      config.softmax_temperature) < config.widen_below
        can_widen = (spent or spread) and state["width"] < config.max_width
        ready = len(finished) >= config.detect_at
        ended = not frontier or (spent and not can_widen)
        decision, stop_reason = route_on(
            certaindex if ready else 0.0, can_widen=can_widen,
            stops=[("context", ended and walled(nodes)), ("exhausted", not frontier),
                   ("width", spent and not can_widen), ("budget", state["budget_left"] < 1)])
        return {"frontier": frontier, "certaindex": certaindex, "decision": decision,
                "stop_reason": stop_reason}

    async def widen_beam(state: TreeState) -> dict[str, Any]:
        return {"width": min(config.max_width, state["width"] + config.widen_by)}

    def after_rescore(state: TreeState) -> Literal["exit", "widen"] | list[Send]:
        decision = state["decision"]
        return decision if decision in ("exit", "widen") else expand_frontier(state)

    builder = search_builder(endpoint, reward, config, expand_frontier, ("rescore", rescore))
    builder.add_node("widen_beam", widen_beam)
    builder.add_conditional_edges(
        "rescore", after_rescore, {"exit": "finish", "widen": "widen_beam", "continue": "expand"}
    )
    builder.add_conditional_edges("widen_beam", expand_frontier, ["expand"])
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(recursion_limit=4 * config.max_depth + 10)


def beam_counts(weights: list[float], width: int) -> list[int]:
    """Children per frontier node: ``width · w_i`` rounded by largest remainder, so they add
    up to exactly ``width`` (Rebase's proportional share, never over the beam)."""
    if width <= 0 or not weights:
        return [0] * len(weights)
    exact = [width * w for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: width - sum(counts)]:
        counts[i] += 1
    return counts
