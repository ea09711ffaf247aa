"""Reasoning at reasoning-model scale on the scripted token server: a 32K-token program whose
checkpoints grow linearly with a LangGraph store (one store item per chunk and probe), the same
answer, response, probes and usage as the state-kept log, and exact resumes from the store
(the process's cached log gone, as in a new process; a fork from an earlier checkpoint)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    EndpointUnreachable,
    SCConfig,
    _transcript,
    create_cot,
    create_sc,
)

NEVER_AGREE = [f"{i}}} " for i in range(2000)]  # every probe a new answer: no early exit
QUESTION = {"question": "What is 2 + 3?"}


def endpoint(server: ScriptedServer) -> Endpoint:
    return Endpoint(model=SERVED_NAME, api_base=server.api_base, continuation="tokens",
                    timeout_s=30, max_retries=0)


async def stored_run(tmp_path: Path, server: ScriptedServer, tokens: int,
                     chunk: int) -> tuple[dict[str, Any], int]:
    """One program of ``tokens`` reasoning tokens checkpointed to SQLite with a SQLite store:
    its result and the bytes both databases hold."""
    folder = tmp_path / f"run-{tokens}"
    folder.mkdir()
    config = CoTConfig(chunk_size=chunk, max_tokens=tokens, certainty_threshold=3)
    async with (AsyncSqliteSaver.from_conn_string(str(folder / "checkpoints.db")) as saver,
                AsyncSqliteStore.from_conn_string(str(folder / "store.db")) as store):
        await store.setup()
        graph = create_cot(endpoint(server), config, checkpointer=saver, store=store)
        result = await graph.ainvoke(QUESTION, {"configurable": {"thread_id": "long"}})
    size = sum(os.path.getsize(path) for path in folder.glob("*.db"))
    return result, size


async def test_checkpoint_bytes_grow_linearly_to_32k_tokens(tmp_path: Path) -> None:
    script = Script(probes=list(NEVER_AGREE), max_model_len=40_000)
    sizes: dict[int, int] = {}
    with ScriptedServer(script, token_api=True) as server:
        for tokens in (8192, 16384, 32768):
            result, sizes[tokens] = await stored_run(tmp_path, server, tokens, chunk=512)
            assert result["usage"]["reasoning_tokens"] == tokens
            assert result["stop_reason"] == "budget"
            assert len(result["probes"]) == tokens // 512  # every probe, once, at the end
    # Linear: doubling the reasoning at most doubles the bytes (plus a page of slack); a
    # state-kept log quadruples them (each superstep stores the whole history again).
    assert sizes[32768] <= 2.2 * sizes[16384]
    assert sizes[16384] <= 2.2 * sizes[8192]
    held = 4 * 32768 + len(result["response"].encode())  # the ids (int32) and the text
    assert sizes[32768] <= 10 * held


async def test_a_stored_log_gives_the_same_run_as_a_state_kept_one() -> None:
    config = CoTConfig(chunk_size=16, max_tokens=96, certainty_threshold=2)
    probes = ["4}", "5}", "6}", "7}", "7}", "8}"]
    results = []
    for store in (None, InMemoryStore()):
        with ScriptedServer(Script(probes=list(probes)), token_api=True) as server:
            graph = create_cot(endpoint(server), config, checkpointer=InMemorySaver(),
                               store=store)
            thread = {"configurable": {"thread_id": "same"}}
            results.append(await graph.ainvoke(QUESTION, thread))
            state = (await graph.aget_state(thread)).values
            if store is not None:  # the log is in the store: the state holds its head
                assert state["token_ids"] == [] and state["reasoning"] == ""
                assert state["log"]["tokens"] == 80 and state["log"]["probes"] == 5
                items = await store.asearch(("dynasor_graph", "log", state["session_id"]),
                                            limit=100)
                assert len(items) == 10  # 5 chunks and 5 probes, each once
    plain, stored = results
    for key in ("answer", "response", "probes", "usage", "stop_reason", "certaindex"):
        assert stored[key] == plain[key], key
    assert (plain["answer"], plain["stop_reason"]) == ("7", "certain")


async def test_a_resume_without_the_cached_log_rebuilds_it_from_the_store(
        tmp_path: Path) -> None:
    config = CoTConfig(chunk_size=8, max_tokens=64, certainty_threshold=3)
    probes = ["1}", "2}", "3}", "4}", "4}", "4}"]
    with ScriptedServer(Script(probes=list(probes)), token_api=True) as server:
        reference = await create_cot(endpoint(server), config).ainvoke(QUESTION)
    script = Script(probes=list(probes))  # one script state for both lives of the server
    thread = {"configurable": {"thread_id": "resumed"}}
    async with (AsyncSqliteSaver.from_conn_string(str(tmp_path / "c.db")) as saver,
                AsyncSqliteStore.from_conn_string(str(tmp_path / "s.db")) as store):
        await store.setup()
        server: ScriptedServer | None = ScriptedServer(script, token_api=True).__enter__()
        assert server is not None
        port, graph = server.port, create_cot(endpoint(server), config, checkpointer=saver,
                                              store=store)
        seen = 0
        with pytest.raises(EndpointUnreachable):
            async for update in graph.astream(QUESTION, thread, stream_mode="updates"):
                seen += "probe" in update
                if seen == 3 and server is not None:
                    await asyncio.to_thread(server.__exit__)  # the server dies between steps
                    server = None
        assert len(script.log) == 6
        paused = await graph.aget_state(thread)
        assert paused.next == ("reason",) and paused.values["log"]["tokens"] == 24
        _transcript._CACHE.clear()  # what a new process has: nothing cached
        with ScriptedServer(script, port=port, token_api=True):
            result = await graph.ainvoke(None, thread)
    for key in ("answer", "response", "probes", "usage", "stop_reason"):
        assert result[key] == reference[key], key
    reported = {"reasoning_tokens": script.total("reason", "completion_tokens"),
                "probe_completion_tokens": script.total("probe", "completion_tokens")}
    assert {k: result["usage"][k] for k in reported} == reported  # nothing counted twice


async def test_a_fork_from_an_earlier_checkpoint_continues_its_own_history() -> None:
    config = CoTConfig(chunk_size=8, max_tokens=48, certainty_threshold=6)
    store, saver = InMemoryStore(), InMemorySaver()
    with ScriptedServer(Script(probes=list(NEVER_AGREE)), token_api=True) as server:
        graph = create_cot(endpoint(server), config, checkpointer=saver, store=store)
        thread = {"configurable": {"thread_id": "fork"}}
        full = await graph.ainvoke(QUESTION, thread)
        history = [s async for s in graph.aget_state_history(thread)]
        # the checkpoint after the second probe: 16 tokens reasoned, 2 probes
        earlier = next(s for s in history if s.next == ("reason",)
                       and s.values["log"]["probes"] == 2)
        _transcript._CACHE.clear()
        forked = await graph.ainvoke(None, earlier.config)
    assert forked["usage"]["reasoning_tokens"] == 48
    # the fork's reasoning continues token-exactly from the earlier point (same script)
    reasoning = full["response"].split("**Final Answer**")[0]
    assert forked["response"].split("**Final Answer**")[0] == reasoning
    assert [p["tokens"] for p in forked["probes"]] == [8, 16, 24, 32, 40, 48]
    # and its first two probes are the earlier ones, the rest its own new requests
    assert forked["probes"][:2] == full["probes"][:2]
    assert forked["probes"][2]["answer"] != full["probes"][2]["answer"]


async def test_self_consistency_paths_keep_their_logs_in_the_store() -> None:
    config = SCConfig(path=CoTConfig(chunk_size=8, max_tokens=32, certainty_threshold=2,
                                     seed=0), width=2, max_width=2, token_budget=400)
    results = []
    for store in (None, InMemoryStore()):
        script = Script(seeds={0: Script(probes=["3}", "3}"]), 1: Script(probes=["3}", "3}"])})
        with ScriptedServer(script, token_api=True) as server:
            graph = create_sc(endpoint(server), config, checkpointer=InMemorySaver(),
                              store=store)
            results.append(await graph.ainvoke(QUESTION, {"configurable": {"thread_id": "sc"}}))
    plain, stored = results
    assert stored["answer"] == plain["answer"] == "3"
    assert stored["usage"] == plain["usage"]
    for a, b in zip(plain["paths"], stored["paths"], strict=True):
        assert (a["response"], a["probes"], a["usage"]) == (b["response"], b["probes"],
                                                             b["usage"])
        assert b["log"]["tokens"] == 16 and b["token_ids"] == []


async def test_a_stored_program_resumed_without_its_store_fails_clearly() -> None:
    config = CoTConfig(chunk_size=8, max_tokens=32, certainty_threshold=9)
    saver = InMemorySaver()
    thread = {"configurable": {"thread_id": "lost-store"}}
    with ScriptedServer(Script(probes=list(NEVER_AGREE)), token_api=True) as server:
        graph = create_cot(endpoint(server), config, checkpointer=saver, store=InMemoryStore())
        async for update in graph.astream(QUESTION, thread, stream_mode="updates"):
            if "probe" in update:
                break
        _transcript._CACHE.clear()
        without = create_cot(endpoint(server), config, checkpointer=saver)
        with pytest.raises(RuntimeError, match="compile it with the same store"):
            await without.ainvoke(None, thread)


async def test_an_overlapped_program_keeps_its_stream_and_its_log_in_the_store() -> None:
    # The stream runs ahead (hold after 14 tokens); the probes agree at the second boundary.
    config = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=200,
                       probing="overlapped")
    results = []
    for store in (None, InMemoryStore()):
        script = Script(hold_after=14, probes=["12}"], probe_delay_s=0.1)
        with ScriptedServer(script, token_api=True) as server:
            graph = create_cot(endpoint(server), config, checkpointer=InMemorySaver(),
                               store=store)
            thread: RunnableConfig = {"configurable": {"thread_id": "overlapped"}}
            results.append(await graph.ainvoke(QUESTION, thread))
            state = (await graph.aget_state(thread)).values
            assert (state.get("log") is not None) == (store is not None)
    plain, stored = results
    for key in ("answer", "response", "probes", "usage", "stop_reason"):
        assert stored[key] == plain[key], key
    assert stored["usage"]["reasoning_tokens"] == 8
    assert stored["usage"]["discarded_tokens"] == 6  # received past the exit, counted
