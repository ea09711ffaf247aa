"""The reasoning log in a LangGraph store, on the real local vLLM: a seeded program gives the
same answer, response, probes and usage whether its log is kept in the state or in the store,
in sequential and in overlapped probing, and a stored program paused mid-run and resumed with
nothing cached (as a new process would) rebuilds its log from the store and ends the same."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from dynasor_graph import CoTConfig, Endpoint, _transcript, create_cot

QUESTION = {"question": "Tom has 3 boxes with 4 apples in each box. How many apples?"}
KEYS = ("answer", "response", "probes", "usage", "stop_reason", "certaindex")


@pytest.mark.parametrize("probing", ["sequential", "overlapped"])
async def test_a_stored_log_runs_as_a_state_kept_one(local_vllm: Endpoint,
                                                     probing: str) -> None:
    config = CoTConfig(chunk_size=16, max_tokens=64, certainty_threshold=2, seed=0,
                       temperature=0, probing=probing)  # type: ignore[arg-type]
    thread: RunnableConfig = {"configurable": {"thread_id": f"log-{probing}"}}
    plain = await create_cot(local_vllm, config).ainvoke(QUESTION)
    store = InMemoryStore()
    graph = create_cot(local_vllm, config, checkpointer=InMemorySaver(), store=store)
    stored = await graph.ainvoke(QUESTION, thread)
    for key in KEYS:
        if key == "usage" and probing == "overlapped":  # run-ahead past an exit varies
            continue
        assert stored[key] == plain[key], key
    state = (await graph.aget_state(thread)).values
    assert state["token_ids"] == [] and state["log"]["tokens"] == stored["usage"][
        "reasoning_tokens"]
    items = await store.asearch(("dynasor_graph", "log", state["session_id"]), limit=100)
    assert len(items) == _chunks(stored, config) + state["log"]["probes"]  # each once


def _chunks(result: dict[str, Any], config: CoTConfig) -> int:
    return -(-result["usage"]["reasoning_tokens"] // config.chunk_size)


async def test_a_paused_stored_program_resumes_from_the_store(local_vllm: Endpoint) -> None:
    config = CoTConfig(chunk_size=16, max_tokens=80, certainty_threshold=8, seed=0)
    reference = await create_cot(local_vllm, config).ainvoke(QUESTION)
    graph = create_cot(local_vllm, config, checkpointer=InMemorySaver(), store=InMemoryStore())
    thread: RunnableConfig = {"configurable": {"thread_id": "paused"}}
    paused = await graph.ainvoke(QUESTION, thread, interrupt_after=["probe"])
    assert "answer" not in paused or not paused.get("answer")
    state = (await graph.aget_state(thread)).values
    assert state["log"]["tokens"] == 16 and state["log"]["probes"] == 1
    for _ in range(2):  # two more rounds, each resumed with nothing cached
        _transcript._CACHE.clear()
        await graph.ainvoke(None, thread, interrupt_after=["probe"])
    _transcript._CACHE.clear()
    result = await graph.ainvoke(None, thread)
    for key in KEYS:
        assert result[key] == reference[key], key
