"""Durable runs across processes: a worker process runs Dynasor-CoT on the real local vLLM with
its checkpoints in a real PostgreSQL server, is SIGKILLed mid-run, and a *different* process
resumes the same thread to the end: with the reasoning log kept in the state, and kept in a
PostgreSQL store (``AsyncPostgresStore``: the resuming process rebuilds it from the store).

What is compared: vLLM's own ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``,
read before the first worker starts, after it is killed (once the server runs no request) and
after the second worker ends, summed over both lives, equal the final state's usage (reasoning +
probe completion tokens; reasoning + probe prompt tokens): nothing lost, nothing counted twice.
The kill comes between two requests — the worker stops pulling the graph's stream after its
second probe, so no next step starts — because the tokens of a request killed in flight are
spent on the server but never reported to any client. The resumed run also equals an
uninterrupted one (seeded sampling).

Run as a script, this file is the worker: ``python test_resume_postgres.py first|resume URI
API_BASE THREAD state|store``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.eval._metrics import server_counters

QUESTION = ("Explain step by step how to multiply 37 by 24, checking every step twice, "
            "then do the same for 48 times 19.")
CONFIG = CoTConfig(chunk_size=16, max_tokens=96, certainty_threshold=8, seed=0)
KILL_AFTER_PROBES = 2
PAUSED = "paused"


async def _worker(mode: str, uri: str, api_base: str, thread_id: str, log: str) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.store.postgres.aio import AsyncPostgresStore

    from dynasor_graph.local._server import SERVED_MODEL_NAME

    endpoint = Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}", api_base=api_base,
                        timeout_s=300, max_retries=1)
    thread: Any = {"configurable": {"thread_id": thread_id}}
    async with (AsyncPostgresSaver.from_conn_string(uri) as saver,
                AsyncPostgresStore.from_conn_string(uri) as store):
        await saver.setup()
        await store.setup()
        graph = create_cot(endpoint, CONFIG, checkpointer=saver,
                           store=store if log == "store" else None)
        if mode == "resume":
            result = await graph.ainvoke(None, thread)
            print(json.dumps({"pid": os.getpid(), **{key: result[key] for key in (
                "decision", "stop_reason", "usage", "response")}}), flush=True)
            return
        probes = 0
        async for update in graph.astream({"question": QUESTION}, thread,
                                          stream_mode="updates"):
            print(json.dumps({"pid": os.getpid(), "node": next(iter(update))}), flush=True)
            probes += "probe" in update
            if probes == KILL_AFTER_PROBES:
                # Stop pulling the stream: the graph runs in this task, so no next step (and no
                # request) starts; the probe's writes reach PostgreSQL in the background.
                print(json.dumps({"pid": os.getpid(), "node": PAUSED}), flush=True)
                await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(_worker(*sys.argv[1:6]))
    sys.exit(0)


from conftest import counters, spent  # noqa: E402
from pg_server import PostgresUnavailable, temp_postgres  # noqa: E402

pytestmark = pytest.mark.vllm


def worker(mode: str, uri: str, endpoint: Endpoint, thread_id: str,
           log: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, mode, uri, endpoint.api_base, thread_id, log],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent)


def running(endpoint: Endpoint) -> float:
    """``vllm:num_requests_running`` + ``vllm:num_requests_waiting`` of the server."""
    return sum(server_counters(endpoint.server_root, (
        "vllm:num_requests_running", "vllm:num_requests_waiting")).values())


def wait_idle(endpoint: Endpoint, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while running(endpoint) > 0:
        assert time.monotonic() < deadline, "the server still runs requests"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres() -> Any:
    try:
        with temp_postgres("dynasor") as uri:
            yield uri
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not available: {exc}")


def _drain(process: subprocess.Popen[str]) -> str:
    _, err = process.communicate(timeout=30)
    return err[-3000:]


@pytest.mark.parametrize("log", ["state", "store"])
async def test_a_killed_worker_process_resumes_in_another_process_through_postgres(
    local_vllm: Endpoint, postgres: str, log: str,
) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    thread_id = f"killed-worker-{log}"
    thread: Any = {"configurable": {"thread_id": thread_id}}
    wait_idle(local_vllm)
    start = counters(local_vllm)
    first = worker("first", postgres, local_vllm, thread_id, log)
    try:
        assert first.stdout is not None
        nodes: list[str] = []
        while not nodes or nodes[-1] != PAUSED:
            line = await asyncio.to_thread(first.stdout.readline)
            assert line, f"the first worker ended early: {_drain(first)}"
            nodes.append(json.loads(line)["node"])
        assert nodes.count("probe") == KILL_AFTER_PROBES
        # The probe's writes are on their way to PostgreSQL: wait until another process sees
        # them, then kill the worker without warning.
        async with AsyncPostgresSaver.from_conn_string(postgres) as saver:
            graph = create_cot(local_vllm, CONFIG, checkpointer=saver)
            deadline = time.monotonic() + 30
            while True:
                paused = await graph.aget_state(thread)
                probe_done = [task for task in paused.tasks
                              if task.name == "probe" and task.result is not None]
                if paused.next == ("reason",) or probe_done:
                    break
                assert time.monotonic() < deadline, f"probe writes never stored: {paused}"
                await asyncio.sleep(0.1)
        assert (paused.values.get("log") is not None) == (log == "store")  # where the log is
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
        _drain(first)
    wait_idle(local_vllm)
    middle = counters(local_vllm)
    first_life = spent(start, middle)
    assert first_life[0] > 0

    second = worker("resume", postgres, local_vllm, thread_id, log)
    out, err = await asyncio.to_thread(second.communicate, None, 600)
    assert second.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["pid"] != first.pid
    second_life = spent(middle, counters(local_vllm))
    assert second_life[0] > 0

    usage = result["usage"]
    assert result["decision"] == "exit"
    assert result["stop_reason"] in {"certain", "finished", "budget"}
    assert KILL_AFTER_PROBES * CONFIG.chunk_size < usage["reasoning_tokens"] <= CONFIG.max_tokens
    assert (first_life[0] + second_life[0], first_life[1] + second_life[1]) == (
        usage["reasoning_tokens"] + usage["probe_completion_tokens"],
        usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])
    # Seeded sampling is reproducible per request: an uninterrupted run says the same.
    reference = await create_cot(local_vllm, CONFIG).ainvoke({"question": QUESTION})
    assert reference["response"] == result["response"]
    assert reference["usage"] == usage
