"""Dynasor-CoT: chain-of-thought that stops once its probed answer has settled.

The graph reasons in chunks of ``chunk_size`` tokens; after each chunk ``probe`` forces an
immediate answer and scores the recent probes into the state's ``certaindex``; the router exits
when it reaches 1.0 (the last ``certainty_threshold`` probes confident and equivalent), when
the model finishes by itself, or when ``max_tokens`` is spent::

    START → prepare → reason ─continue→ probe ─continue→ reason …
                         └─exit→ finish ←exit─┘ → END

Usage::

    graph = create_dynasor_cot(Endpoint(model="hosted_vllm/my-model",
                                        api_base="http://127.0.0.1:8000/v1"))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
    result["answer"], result["certaindex"], result["usage"]
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from ._config import CoTConfig, Effort, Endpoint
from ._nodes import finish_node, prepare_node, probe_node, reason_node, retry_policy, route
from ._state import CoTInput, CoTOutput, CoTState


def create_dynasor_cot(
    endpoint: Endpoint,
    config: CoTConfig | None = None,
    *,
    effort: Effort | None = None,
    checkpointer: Checkpointer = None,
    name: str = "dynasor_cot",
) -> CompiledStateGraph[CoTState, None, CoTInput, CoTOutput]:
    """Build the Dynasor-CoT graph for ``endpoint``.

    ``config`` defaults to the reference settings; ``effort`` picks a preset instead. The graph
    reads :class:`CoTInput` and returns :class:`CoTOutput`, so as a node of a parent graph it
    hands back only its answer, Certaindex, decision, probes and usage.
    """
    if config is None:
        config = CoTConfig.from_effort(effort) if effort else CoTConfig()
    elif effort is not None:
        raise ValueError("give either config or effort, not both")
    retry = retry_policy(endpoint)
    builder = StateGraph(CoTState, input_schema=CoTInput, output_schema=CoTOutput)
    builder.add_node("prepare", prepare_node(config))
    builder.add_node("reason", reason_node(endpoint, config), retry_policy=retry)
    builder.add_node("probe", probe_node(endpoint, config), retry_policy=retry)
    builder.add_node("finish", finish_node())
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "reason")
    builder.add_conditional_edges("reason", route, {"continue": "probe", "exit": "finish"})
    builder.add_conditional_edges("probe", route, {"continue": "reason", "exit": "finish"})
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    # A full-budget run takes two supersteps a chunk: more than LangGraph's default limit of 25.
    return graph.with_config(recursion_limit=recursion_limit(config))


def recursion_limit(config: CoTConfig) -> int:
    """A LangGraph recursion limit large enough for a run that spends the whole budget."""
    chunks = -(-config.max_tokens // config.chunk_size)
    return 2 * chunks + 10

