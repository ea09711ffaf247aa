"""Pick a reasoning algorithm by name: ``cot``, ``sc``, ``mcts`` or ``rebase``.

All four are LangGraph graphs that read a question (or messages) and hand back ``answer``,
``certaindex``, ``decision``, ``stop_reason`` and ``usage``; the tree searches also take a
:class:`~dynasor_graph.rewards.RewardModel` (default: an LLM judge on the same endpoint).
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args, overload

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer
from pydantic import BaseModel

from ._endpoint import Endpoint
from ._state import CoTInput
from ._tree import TreeOutput, TreeState
from .cot import CoTConfig, CoTOutput, CoTState, create_cot
from .mcts import MCTSConfig, create_mcts
from .rebase import RebaseConfig, create_rebase
from .rewards import JudgeReward, RewardModel
from .sc import SCConfig, SCOutput, SCState, create_sc

Algorithm = Literal["cot", "sc", "mcts", "rebase"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
CONFIGS: dict[Algorithm, type[BaseModel]] = {
    "cot": CoTConfig, "sc": SCConfig, "mcts": MCTSConfig, "rebase": RebaseConfig,
}


@overload
def create_graph(
    algorithm: Literal["cot"], endpoint: Endpoint, config: CoTConfig | None = None, *,
    reward: None = None, checkpointer: Checkpointer = None, store: BaseStore | None = None,
) -> CompiledStateGraph[CoTState, None, CoTInput, CoTOutput]: ...
@overload
def create_graph(
    algorithm: Literal["sc"], endpoint: Endpoint, config: SCConfig | None = None, *,
    reward: None = None, checkpointer: Checkpointer = None, store: BaseStore | None = None,
) -> CompiledStateGraph[SCState, None, CoTInput, SCOutput]: ...
@overload
def create_graph(
    algorithm: Literal["mcts"], endpoint: Endpoint, config: MCTSConfig | None = None, *,
    reward: RewardModel | None = None, checkpointer: Checkpointer = None,
) -> CompiledStateGraph[TreeState, None, CoTInput, TreeOutput]: ...
@overload
def create_graph(
    algorithm: Literal["rebase"], endpoint: Endpoint, config: RebaseConfig | None = None, *,
    reward: RewardModel | None = None, checkpointer: Checkpointer = None,
) -> CompiledStateGraph[TreeState, None, CoTInput, TreeOutput]: ...
@overload
def create_graph(
    algorithm: Algorithm, endpoint: Endpoint, config: BaseModel | None = None, *,
    reward: RewardModel | None = None, checkpointer: Checkpointer = None,
    store: BaseStore | None = None,
) -> CompiledStateGraph[Any, None, CoTInput, Any]: ...
def create_graph(
    algorithm: Algorithm,
    endpoint: Endpoint,
    config: BaseModel | None = None,
    *,
    reward: RewardModel | None = None,
    checkpointer: Checkpointer = None,
    store: BaseStore | None = None,
) -> CompiledStateGraph[Any, None, CoTInput, Any]:
    """The graph of ``algorithm``.

    Args:
        algorithm: ``cot``, ``sc``, ``mcts`` or ``rebase``.
        endpoint: the vLLM server every request goes to.
        config: that algorithm's own config class (``CoTConfig``, ``SCConfig``, ``MCTSConfig``,
            ``RebaseConfig``); default settings if ``None``.
        reward: the tree searches' reward model (default: an LLM judge on ``endpoint``).
        checkpointer: LangGraph checkpointer for durable runs.
        store: LangGraph store for the reasoning log of ``cot`` and ``sc`` (checkpoint bytes
            linear in the reasoning's length); the tree searches take none.

    Returns:
        The compiled graph; a wrong config class or a reward for CoT/SC is a ``ValueError``.

    Example:
        >>> graph = create_graph("sc", endpoint, SCConfig(width=4))  # doctest: +SKIP
    """
    if algorithm not in CONFIGS:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, not {algorithm!r}")
    wanted = CONFIGS[algorithm]
    if config is not None and type(config) is not wanted:
        raise ValueError(f"{algorithm} takes a {wanted.__name__}, not {type(config).__name__}")
    if reward is not None and algorithm in ("cot", "sc"):
        raise ValueError(f"{algorithm} takes no reward model")
    if store is not None and algorithm not in ("cot", "sc"):
        raise ValueError(f"{algorithm} takes no store (the reasoning log is cot's and sc's)")
    if isinstance(config, CoTConfig) or (config is None and algorithm == "cot"):
        return create_cot(endpoint, config, checkpointer=checkpointer, store=store)
    if isinstance(config, SCConfig) or (config is None and algorithm == "sc"):
        return create_sc(endpoint, config, checkpointer=checkpointer, store=store)
    judge = reward or JudgeReward(endpoint)
    if isinstance(config, MCTSConfig) or (config is None and algorithm == "mcts"):
        return create_mcts(endpoint, judge, config, checkpointer=checkpointer)
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
