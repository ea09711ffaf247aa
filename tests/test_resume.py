"""Faults and resume on the scripted server: the server dies mid-run, the run fails with a clear
error, a new server comes up on the same port, and the checkpointed thread resumes from its
last completed chunk with exactly the accounting of an uninterrupted run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    EndpointUnreachable,
    Scheduler,
    SchedulerConfig,
    create_cot,
)

CONFIG = CoTConfig(chunk_size=10, max_tokens=80, certainty_threshold=3)
PROBES = ["5} wait", "5}", "6}", "5}", "5}", "5}"]  # settles at the 6th probe (60 tokens)
KILL_AFTER_PROBES = 3


def endpoint(server: ScriptedServer) -> Endpoint:
    return Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=server.api_base, timeout_s=10,
                    max_retries=1)


def counted(usage: dict[str, int], script: Script) -> bool:
    """Whether ``usage`` counts what the server reported, summed over what it answered."""
    reported = server_usage(script)
    return {key: usage[key] for key in reported} == reported


def server_usage(script: Script) -> dict[str, int]:
    return {"reasoning_tokens": script.total("reason", "completion_tokens"),
            "reasoning_prompt_tokens": script.total("reason", "prompt_tokens"),
            "probe_prompt_tokens": script.total("probe", "prompt_tokens"),
            "probe_completion_tokens": script.total("probe", "completion_tokens")}


async def test_a_run_killed_mid_way_resumes_from_its_last_chunk(tmp_path: Path) -> None:
    with ScriptedServer(Script(probes=list(PROBES))) as server:
        reference = await create_cot(endpoint(server), CONFIG).ainvoke(
            {"question": "What is 2 + 3?"})
        reference_log = len(server.script.log)
    assert (reference["stop_reason"], reference["usage"]["reasoning_tokens"]) == ("certain", 60)

    script = Script(probes=list(PROBES))  # one script state for both lives of the server
    thread = {"configurable": {"thread_id": "homework-1"}}
    async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "runs.sqlite")) as saver:
        server = ScriptedServer(script).__enter__()
        port, graph = server.port, create_cot(endpoint(server), CONFIG,
                                                       checkpointer=saver)
        probes_seen = 0
        with pytest.raises(EndpointUnreachable) as failure:
            async for update in graph.astream({"question": "What is 2 + 3?"}, thread,
                                              stream_mode="updates"):
                probes_seen += "probe" in update
                if probes_seen == KILL_AFTER_PROBES and server is not None:
                    await asyncio.to_thread(server.__exit__)  # the server dies between steps
                    server = None
        assert f"cannot reach http://127.0.0.1:{port}/v1" in str(failure.value)
        answered = len(script.log)
        assert answered == 2 * KILL_AFTER_PROBES  # the requests after the kill never arrived
        paused = await graph.aget_state(thread)
        assert paused.next == ("reason",)  # the checkpoint is the last completed probe
        assert counted(paused.values["usage"], script)

        with ScriptedServer(script, port=port):  # back on the same port
            scheduler = Scheduler(SchedulerConfig(max_in_flight=1))
            resumed = await scheduler.run(graph, None, thread)  # resume the same thread
        result: dict[str, Any] = resumed.output

    for key in ("answer", "response", "probes", "usage", "stop_reason", "certaindex"):
        assert result[key] == reference[key], key
    # No chunk re-sent: the server answered exactly the requests of an uninterrupted run, and
    # the final usage is their sum (counted once).
    assert len(script.log) == reference_log
    assert [e["kind"] for e in script.log] == ["reason", "probe"] * 6
    assert counted(result["usage"], script)
    assert resumed.tokens == sum(e["usage"]["completion_tokens"] for e in script.log[answered:])
