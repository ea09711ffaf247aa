"""MCTS with Certaindex: tree search that branches wider where rewards are uncertain, deeper
where they are good, and stops once the finished paths' rewards are high.

``select`` walks from the root by UCT to an open leaf (the focus); ``expand`` adds ``width``
children there, one ``Send`` each (a step of up to ``chunk_size`` tokens); ``evaluate`` scores
them with a :class:`~dynasor_graph.rewards.RewardModel`; ``backpropagate`` adds the rewards to
their ancestors and routes on the reward Certaindex (mean reward of the finished paths, AND
their answer entropy if ``entropy_threshold`` is set): **exit** once ``detect_at`` paths have
finished and it passes; **widen** (more children at the focus, up to ``max_width``) when the
new children all score below ``widen_below``; else **continue** deeper via ``select``::

    START → prepare ─Send→ expand … → evaluate → backpropagate ─continue→ select ─Send→ expand
                                                     ├─widen─Send→ expand         └─exit→ finish
                                                     └─exit→ finish → END

Usage::

    graph = create_mcts(endpoint, JudgeReward(endpoint), MCTSConfig(max_width=3))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
"""

from __future__ import annotations

import math
from typing import Any, Literal

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, Send
from pydantic import Field

from ._endpoint import Endpoint
from ._state import CoTInput
from ._tree import (
    TreeConfig,
    TreeNode,
    TreeOutput,
    TreeState,
    children,
    expansions,
    finished_paths,
    search_builder,
    tree_certaindex,
    walled,
)
from .certaindex import route_on
from .rewards import RewardModel

__all__ = [
    "MCTSConfig",
    "TreeNode",
    "TreeOutput",
    "TreeState",
    "create_mcts",
]


class MCTSConfig(TreeConfig):
    """MCTS: ``width`` children per expansion, at most ``max_width`` per node; UCT selection.
    Reward Certaindex = mean reward of finished paths (paper: threshold 0.4 on GSM8K)."""

    exploration: float = Field(default=1.0, ge=0, le=10, description="UCT constant c")


def create_mcts(
    endpoint: Endpoint,
    reward: RewardModel,
    config: MCTSConfig | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str = "dynasor_mcts",
) -> CompiledStateGraph[TreeState, None, CoTInput, TreeOutput]:
    """Build the MCTS graph.

    Args:
        endpoint: the vLLM server that generates the steps.
        reward: scores a (partial) solution in [0, 1] (:mod:`dynasor_graph.rewards`).
        config: step size, depth, widths, exit thresholds and the token budget; default
            :class:`MCTSConfig`.
        checkpointer: LangGraph checkpointer for durable, resumable runs.
        name: the graph's name (in Studio and as a subgraph).

    Returns:
        A compiled graph reading ``question`` or ``messages`` and returning
        :class:`~dynasor_graph.TreeOutput`: the reward-weighted answer, its Certaindex,
        decision, stop reason, summed usage, the whole tree and the budget left.

    Example:
        >>> graph = create_mcts(endpoint, JudgeReward(endpoint))  # doctest: +SKIP
    """
    config = config or MCTSConfig()

    def expand_focus(state: TreeState) -> list[Send]:
        room = config.max_width - len(children(state["nodes"], state["focus"]))
        return expansions(state, [(state["focus"], min(config.width, room))], config)

    async def backpropagate(state: TreeState) -> dict[str, Any]:
        nodes = {n["id"]: TreeNode(**n) for n in state["nodes"]}
        fresh = [n for n in nodes.values() if n["visits"] == 0 and n["parent"] is not None]
        for node in fresh:
            current: int | None = node["id"]
            while current is not None:
                nodes[current]["visits"] += 1
                nodes[current]["value"] += node["reward"] or 0.0
                current = nodes[current]["parent"]
        tree = list(nodes.values())
        finished = finished_paths(tree)
        certaindex = tree_certaindex(finished, config, "mean")
        at_focus = [n for n in fresh if n["parent"] == state["focus"]]
        uncertain = max((n["reward"] or 0.0 for n in at_focus), default=1.0) < config.widen_below
        can_widen = uncertain and len(children(tree, state["focus"])) < config.max_width
        ready = len(finished) >= config.detect_at
        decision, stop_reason = route_on(certaindex if ready else 0.0, can_widen=can_widen,
                                         stops=[("budget", state["budget_left"] < 1)])
        return {"nodes": tree, "certaindex": certaindex, "decision": decision,
                "stop_reason": stop_reason}

    async def select(state: TreeState) -> dict[str, Any]:
        focus = _uct_leaf(state["nodes"], config)
        if focus is None:  # nothing left to expand (every path at the window: context)
            return {"decision": "exit",
                    "stop_reason": "context" if walled(state["nodes"]) else "exhausted"}
        return {"focus": focus, "decision": "continue"}

    def after_backpropagate(state: TreeState) -> Literal["exit", "continue"] | list[Send]:
        decision = state["decision"]
        return expand_focus(state) if decision == "widen" else decision

    def after_select(state: TreeState) -> Literal["exit"] | list[Send]:
        return "exit" if state["decision"] == "exit" else expand_focus(state)

    builder = search_builder(endpoint, reward, config, expand_focus,
                             ("backpropagate", backpropagate))
    builder.add_node("select", select)
    builder.add_conditional_edges(
        "backpropagate", after_backpropagate,
        {"exit": "finish", "widen": "expand", "continue": "select"},
    )
    builder.add_conditional_edges("select", after_select, {"exit": "finish", "expand": "expand"})
    graph = builder.compile(checkpointer=checkpointer, name=name)
    expansions_max = config.token_budget  # each expansion spends at least one token
    return graph.with_config(recursion_limit=4 * expansions_max + 10)


def _uct_leaf(nodes: list[TreeNode], config: MCTSConfig) -> int | None:
    """Walk from the root by UCT to a node that can still grow: a leaf, or a node with room
    for more children whose children are all closed. ``None`` when the whole tree is closed."""
    node = next(n for n in nodes if n["parent"] is None)
    while True:
        kids = children(nodes, node["id"])
        if not kids:
            return None if node["terminal"] else node["id"]
        open_kids = [k for k in kids if _is_open(nodes, k, config)]
        if not open_kids:
            return node["id"] if len(kids) < config.max_width else None
        node = max(open_kids, key=lambda k: _uct(k, node, config.exploration))


def _is_open(nodes: list[TreeNode], node: TreeNode, config: MCTSConfig) -> bool:
    """Whether anything can still be expanded at or below ``node``."""
    if node["terminal"]:
        return False
    kids = children(nodes, node["id"])
    return len(kids) < config.max_width or any(_is_open(nodes, k, config) for k in kids)


def _uct(child: TreeNode, parent: TreeNode, exploration: float) -> float:
    visits = max(child["visits"], 1)
    mean = child["value"] / visits
    return mean + exploration * math.sqrt(math.log(max(parent["visits"], 1)) / visits)
