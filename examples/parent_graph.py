"""Dynasor-CoT as a node of a parent graph: a homework helper that answers several questions.

The compiled CoT graph is added with ``add_node`` like any node. It reads ``question`` from the
parent state and hands back ``answer``, ``certaindex``, ``stop_reason`` and ``usage``; the parent
sums ``usage`` over the questions with the :func:`dynasor_graph.add_usage` reducer. Because the
CoT graph's input schema has no ``usage`` key, each run starts its count at zero and the parent
adds it exactly once.

    python examples/parent_graph.py            # the embedded local vLLM (started if needed)
    DYNASOR_API_BASE=http://gpu:8000/v1 DYNASOR_MODEL=my-model python examples/parent_graph.py
"""

from __future__ import annotations

import asyncio
import json
import operator
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from dynasor_graph import CoTConfig, Endpoint, Usage, add_usage, create_cot
from dynasor_graph.local import default_endpoint


class Homework(TypedDict, total=False):
    questions: list[str]
    question: str
    answer: str
    certaindex: float
    stop_reason: str | None
    answers: Annotated[list[dict[str, Any]], operator.add]
    usage: Annotated[Usage, add_usage]


def next_question(state: Homework) -> dict[str, Any]:
    """Put the first unanswered question where the reasoning node reads it."""
    return {"question": state["questions"][len(state.get("answers", []))]}


def record(state: Homework) -> dict[str, Any]:
    """Keep the reasoning node's answer and how settled it was."""
    return {"answers": [{"question": state["question"], "answer": state["answer"],
                         "certaindex": state["certaindex"], "stop_reason": state["stop_reason"]}]}


def more(state: Homework) -> Literal["next_question", "__end__"]:
    return "next_question" if len(state["answers"]) < len(state["questions"]) else "__end__"


def build_homework_graph(
    endpoint: Endpoint, config: CoTConfig | None = None
) -> CompiledStateGraph:  # type: ignore[type-arg]
    """The parent graph: next_question → reason (Dynasor-CoT) → record, once per question."""
    builder = StateGraph(Homework)
    builder.add_node("next_question", next_question)
    builder.add_node("reason", create_cot(endpoint, config))
    builder.add_node("record", record)
    builder.add_edge(START, "next_question")
    builder.add_edge("next_question", "reason")
    builder.add_edge("reason", "record")
    builder.add_conditional_edges("record", more, ["next_question", END])
    return builder.compile()


async def main() -> None:
    questions = ["What is 7 + 5?", "What is 3 * 4?"]
    with default_endpoint() as endpoint:
        graph = build_homework_graph(endpoint, CoTConfig(max_tokens=256, certainty_threshold=2))
        result = await graph.ainvoke({"questions": questions}, {"recursion_limit": 200})
    print(json.dumps({"answers": result["answers"], "usage": result["usage"]}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
