"""LangGraph Studio: ``langgraph dev`` serves every graph of ``langgraph.json``, offline.

One test starts the dev server on a free loopback port (tracing and analytics off, no reload,
no browser), lists the assistants and their xray drawings with ``langgraph-sdk``, streams a
Dynasor-CoT run against the real local vLLM, then stops the server's process group and checks
that it left nothing in the repository but the gitignored ``.langgraph_api/``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynasor_graph import Endpoint
from dynasor_graph.local._server import free_port

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent


def repo_files() -> set[str]:
    """Every untracked or ignored path git sees, one per file."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line[3:] for line in out.splitlines() if line.startswith(("??", "!!"))}


def left_behind(before: set[str], after: set[str]) -> list[str]:
    return sorted(p for p in after - before
                  if not p.startswith((".langgraph_api/", ".venv/")) and "__pycache__" not in p)


@contextlib.contextmanager
def langgraph_dev(endpoint: Endpoint, log: Path) -> Iterator[str]:
    """``langgraph dev`` on a free loopback port in its own process group; yields its URL."""
    port = free_port()
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1",
           "DYNASOR_API_BASE": endpoint.api_base, "DYNASOR_MODEL": endpoint.model}
    command = [str(Path(sys.executable).parent / "langgraph"), "dev", "--no-browser",
               "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"langgraph dev exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not answer in 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def edges(drawing: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(e["source"], e["target"], e.get("data")) for e in drawing["edges"]}


async def test_langgraph_dev_serves_every_graph_and_runs_dynasor_cot(
    local_vllm: Endpoint, tmp_path: Path
) -> None:
    from langgraph_sdk import get_client

    before = repo_files()
    with langgraph_dev(local_vllm, tmp_path / "langgraph-dev.log") as url:
        async with get_client(url=url) as client:
            assistants = {a["graph_id"]: a["assistant_id"]
                          for a in await client.assistants.search(limit=50)}
            assert set(assistants) == {"dynasor_cot", "dynasor_sc", "dynasor_mcts",
                                       "dynasor_rebase", "agent", "agent_graph"}
            drawings = {graph: await client.assistants.get_graph(assistant, xray=True)
                        for graph, assistant in assistants.items()}
            assert {("reason", "probe", "continue"), ("reason", "finish", "exit"),
                    ("probe", "reason", "continue"), ("probe", "finish", "exit")} <= edges(
                drawings["dynasor_cot"])
            assert {("score", "add_paths", "widen"), ("score", "step:reason", "continue"),
                    ("score", "finish", "exit")} <= edges(drawings["dynasor_sc"])
            assert {("backpropagate", "expand", "widen"), ("backpropagate", "select", "continue"),
                    ("backpropagate", "finish", "exit")} <= edges(drawings["dynasor_mcts"])
            assert {("rescore", "widen_beam", "widen"), ("rescore", "expand", "continue"),
                    ("rescore", "finish", "exit")} <= edges(drawings["dynasor_rebase"])
            assert {("early_stop", "tools", "continue"), ("early_stop", "__end__", "exit"),
                    ("tools", "agent", None)} <= edges(drawings["agent_graph"])
            assert {("model", "EarlyStopMiddleware.after_model", None),
                    ("EarlyStopMiddleware.after_model", "__end__", None),
                    ("EarlyStopMiddleware.after_model", "tools", None)} <= edges(
                drawings["agent"])

            thread = await client.threads.create()
            config = {"configurable": {"max_tokens": 32, "chunk_size": 16,
                                       "certainty_threshold": 2, "seed": 0}}
            parts = [part async for part in client.runs.stream(
                thread["thread_id"], "dynasor_cot", input={"question": "Why is 17 prime?"},
                config=config, stream_mode=["updates", "custom", "values"])]
    assert not [p.data for p in parts if p.event == "error"]
    final = [p.data for p in parts if p.event == "values"][-1]
    assert final["stop_reason"] in {"certain", "finished", "budget"}
    assert final["decision"] == "exit"
    assert 0 < final["usage"]["reasoning_tokens"] <= 32
    probe_events = [p.data for p in parts if p.event == "custom" and p.data["event"] == "probe"]
    assert [e["certaindex"] for e in probe_events] == [
        u["probe"]["certaindex"] for p in parts if p.event == "updates"
        for u in [p.data] if "probe" in u]
    assert len(probe_events) == len(final["probes"])
    assert [u for p in parts if p.event == "updates" for u in p.data][-1] == "finish"
    assert left_behind(before, repo_files()) == []
