"""Kill the real local vLLM mid-run, start it again on the same port, resume the checkpointed
thread: vLLM's own token counters, summed over both lives of the server, equal the run's final
usage (nothing lost, nothing counted twice), and the run equals an uninterrupted one (seeded).

The test starts its own server (``dynasor-graph serve-local --port P``, twice: ~1 min each),
so the session's shared server is not disturbed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import counters, interrupt, spent
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from dynasor_graph import CoTConfig, Endpoint, EndpointUnreachable, create_cot

pytestmark = pytest.mark.vllm

QUESTION = ("Explain step by step how to multiply 37 by 24, checking every step twice, "
            "then do the same for 48 times 19.")
CONFIG = CoTConfig(chunk_size=16, max_tokens=96, certainty_threshold=8, seed=0)


def serve(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dynasor_graph", "serve-local", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # blocks until the server answers
    if line != f"http://127.0.0.1:{port}/v1":
        interrupt(process)
        pytest.fail(f"serve-local did not start: {line!r}")
    return process


async def test_killing_the_local_vllm_mid_run_and_resuming_counts_every_token_once(
    tmp_path: Path,
) -> None:
    from dynasor_graph.local._server import SERVED_MODEL_NAME, free_port

    port = free_port()
    endpoint = Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}",
                        api_base=f"http://127.0.0.1:{port}/v1", timeout_s=300, max_retries=1)
    thread = {"configurable": {"thread_id": "killed"}}
    server = await asyncio.to_thread(serve, port)
    try:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "runs.sqlite")) as saver:
            graph = create_cot(endpoint, CONFIG, checkpointer=saver)
            start, probes = counters(endpoint), 0
            with pytest.raises(EndpointUnreachable, match=f"cannot reach {endpoint.api_base}"):
                async for update in graph.astream({"question": QUESTION}, thread,
                                                  stream_mode="updates"):
                    probes += "probe" in update
                    if probes == 2 and server.poll() is None:
                        first_life = spent(start, counters(endpoint))
                        await asyncio.to_thread(interrupt, server)  # dies between two chunks
            paused = await graph.aget_state(thread)
            assert paused.next == ("reason",)
            usage = paused.values["usage"]
            assert usage["reasoning_tokens"] == 2 * CONFIG.chunk_size
            assert first_life == (
                usage["reasoning_tokens"] + usage["probe_completion_tokens"],
                usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])

            server = await asyncio.to_thread(serve, port)  # back on the same port
            start = counters(endpoint)
            result = await graph.ainvoke(None, thread)
            second_life = spent(start, counters(endpoint))
        usage = result["usage"]
        assert result["stop_reason"] in {"finished", "budget"}
        assert 2 * CONFIG.chunk_size < usage["reasoning_tokens"] <= CONFIG.max_tokens
        assert (first_life[0] + second_life[0], first_life[1] + second_life[1]) == (
            usage["reasoning_tokens"] + usage["probe_completion_tokens"],
            usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])
        # Seeded sampling is reproducible per request: an uninterrupted run says the same.
        reference = await create_cot(endpoint, CONFIG).ainvoke({"question": QUESTION})
        assert reference["response"] == result["response"]
        assert reference["usage"] == result["usage"]
    finally:
        await asyncio.to_thread(interrupt, server)
