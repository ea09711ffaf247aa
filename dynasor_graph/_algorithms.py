"""Pick a reasoning algorithm by name: ``cot``, ``sc``, ``mcts`` or ``rebase``.

All four are LangGraph graphs that read a question (or messages) and hand back ``answer``,
``certaindex``, ``decision``, ``stop_reason`` and ``usage``; the tree searches also take a
:class:`~dynasor_graph.rewards.RewardModel` (default: an LLM judge on the same endpoint).
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import BaseModel

from ._config import CoTConfig, Endpoint, MCTSConfig, RebaseConfig, SCConfig
from .cot import create_dynasor_cot
from .mcts import create_mcts
from .rebase import create_rebase
from .rewards import JudgeReward, RewardModel
from .sc import create_sc

Algorithm = Literal["cot", "sc", "mcts", "rebase"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
CONFIGS: dict[Algorithm, type[BaseModel]] = {
    "cot": CoTConfig, "sc": SCConfig, "mcts": MCTSConfig, "rebase": RebaseConfig,
}


def create_graph(
    algorithm: Algorithm,
    endpoint: Endpoint,
    config: BaseModel | None = None,
    *,
    reward: RewardModel | None = None,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph of ``algorithm`` with ``config`` (its own config class, default settings if
    ``None``); a wrong config class or a reward for CoT/SC is a ``ValueError``."""
    if algorithm not in CONFIGS:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, not {algorithm!r}")
    wanted = CONFIGS[algorithm]
    if config is not None and type(config) is not wanted:
        raise ValueError(f"{algorithm} takes a {wanted.__name__}, not {type(config).__name__}")
    if reward is not None and algorithm in ("cot", "sc"):
        raise ValueError(f"{algorithm} takes no reward model")
    if algorithm == "cot":
        return create_dynasor_cot(endpoint, cast(CoTConfig | None, config),
                                  checkpointer=checkpointer)
    if algorithm == "sc":
        return create_sc(endpoint, cast(SCConfig | None, config), checkpointer=checkpointer)
    judge = reward or JudgeReward(endpoint)
    if algorithm == "mcts":
        return create_mcts(endpoint, judge, cast(MCTSConfig | None, config),
                           checkpointer=checkpointer)
    return create_rebase(endpoint, judge, cast(RebaseConfig | None, config),
                         checkpointer=checkpointer)


async def solve(
    question: str,
    endpoint: Endpoint,
    config: BaseModel | None = None,
    *,
    algorithm: Algorithm = "cot",
    reward: RewardModel | None = None,
    **invoke_config: Any,
) -> dict[str, Any]:
    """Run ``algorithm`` on one question and return its output state."""
    graph = create_graph(algorithm, endpoint, config, reward=reward)
    result = await graph.ainvoke({"question": question}, cast(RunnableConfig, invoke_config))
    return cast(dict[str, Any], result)
