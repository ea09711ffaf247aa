"""Fixtures and helpers shared by the tests: the scripted loopback server (on either route),
the real local vLLM (once per session), and small helpers the test files import from here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent))

from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, Scheduler, create_cot
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX
from dynasor_graph.local import LocalServer
from dynasor_graph.scheduler import ProgramResult

M = TypeVar("M", bound=BaseModel)

# The routes a model call can take: (continuation, client). The client only matters on the
# token route; the text route always goes through litellm.acompletion.
ROUTES = [("text", "litellm"), ("tokens", "litellm"), ("tokens", "openai")]
ROUTE_IDS = [f"{continuation}-{client}" for continuation, client in ROUTES]


def with_fields(model: M, **changes: Any) -> M:
    """A copy of a pydantic model with ``changes``, validated again (``model_copy(update=)``
    would skip validation). A ``SecretStr`` survives: ``model_dump`` keeps the object."""
    return type(model).model_validate({**model.model_dump(), **changes})


def counters(endpoint: Endpoint) -> dict[str, float]:
    """The server's token, prefix-cache and request counters (the library's one ``/metrics``
    reader, :func:`dynasor_graph.eval._metrics.server_counters`)."""
    from dynasor_graph.eval._metrics import server_counters

    return server_counters(endpoint.server_root)


QUESTION = "Tom has 3 boxes with 4 apples in each box. How many apples does Tom have?"
"""The question the real-vLLM tests ask."""


def spent(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """Generation and prompt tokens the server counted between two :func:`counters`."""
    return (after["vllm:generation_tokens"] - before["vllm:generation_tokens"],
            after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m dynasor_graph ARGS`` in a subprocess, without the caller's ``DYNASOR_*``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASOR_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "dynasor_graph", *args], capture_output=True,
                          text=True, timeout=120, env=full_env)


async def run_all(scheduler: Scheduler, endpoint: Endpoint, config: CoTConfig,
                  questions: list[str]) -> dict[str, ProgramResult]:
    """One Dynasor-CoT program per question through ``scheduler``, concurrently; by id."""
    graph = create_cot(endpoint, config)
    results = await asyncio.gather(*(scheduler.run(graph, {"question": q}, program_id=q)
                                     for q in questions))
    return {r.program_id: r for r in results}


def assert_usage_matches(result: dict[str, Any], script: Script) -> None:
    """A run's ``usage`` is exactly what the scripted server answered (no reward model)."""
    assert result["usage"] == script.usage()


def rendered_length(endpoint: Endpoint, question: str = QUESTION) -> int:
    """The question's rendered first prompt, in tokens, from the server's ``/tokenize``."""
    body = {"model": endpoint.served_name, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": question}]}
    return len(httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30)
               .json()["tokens"])


def suffix_length(endpoint: Endpoint) -> int:
    """The default probe suffix, in tokens, from the server's ``/tokenize``."""
    body = {"model": endpoint.served_name, "prompt": DEFAULT_PROBE_SUFFIX,
            "add_special_tokens": False}
    return len(httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30)
               .json()["tokens"])


def exact_prompts(path: dict[str, Any], first: int, suffix: int) -> tuple[int, int]:
    """The prompt tokens a token-exact path sends: reason chunk k starts where probe k-1 was
    taken; probe j sends the first prompt, the reasoning so far and the suffix."""
    probes = [p["tokens"] for p in path["probes"]]
    chunk_starts = [0, *probes] if path["stop_reason"] in ("finished", "answered") else [
        0, *probes[:-1]]
    reason = sum(first + start for start in chunk_starts)
    probe = sum(first + tokens + suffix for tokens in probes)
    return reason, probe


SETTINGS = {"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "chunk_size": 10,
            "max_tokens": 60, "seed": None}
"""The run settings of the hand-made trace lines (:func:`trace`)."""


def trace(id: str, gold: str, answer: str, stop: str, tokens: int,
          probes: list[tuple[str, bool, int]], sample: int = 0) -> dict[str, Any]:
    """A trace line; probes are (answer, confident, completion tokens) at 10, 20, 30 … tokens."""
    return {
        "id": id, "sample": sample, "gold": gold, "answer": answer, "correct": answer == gold,
        "stop_reason": stop, "reasoning_tokens": tokens, "reasoning_prompt_tokens": 50,
        "probes": [{"tokens": 10 * (i + 1),
                    "text": (f"{a}}}" if confident else f"wait {a}}}"), "answer": a,
                    "confident": confident, "prompt_tokens": 100 + 10 * i,
                    "completion_tokens": n}
                   for i, (a, confident, n) in enumerate(probes)],
        "settings": SETTINGS, "question": f"question {id}", "reasoning": "",
    }


def authorizations(requests: list[dict[str, Any]]) -> set[str | None]:
    """The ``Authorization`` headers the logged requests of a scripted server carried."""
    return {r["headers"].get("authorization") for r in requests}


def interrupt(process: subprocess.Popen[str], timeout_s: float = 90) -> int:
    """Stop a ``serve-local`` process as a user does, with SIGINT, close its pipes and return
    its exit code; one still running after ``timeout_s`` is killed and the timeout raised."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    finally:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the real vLLM (the ``local_vllm`` fixture) is a ``vllm`` test, marked
    or not, so ``-m "not vllm"`` (``make test-fast``) never starts one."""
    for item in items:
        if "local_vllm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    """A fresh scripted server; set ``scripted.script`` fields to choose the replies. It speaks
    chat completions only unless a test takes ``route_endpoint`` (then the token API too)."""
    with ScriptedServer(Script()) as server:
        yield server


@pytest.fixture
def scripted_endpoint(scripted: ScriptedServer) -> Endpoint:
    """The scripted server speaks chat completions only: text-mode continuation."""
    return Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=scripted.api_base,
                    timeout_s=10, max_retries=2, continuation="text")


@pytest.fixture(params=ROUTES, ids=ROUTE_IDS)
def route_endpoint(request: pytest.FixtureRequest, scripted: ScriptedServer) -> Endpoint:
    """The scripted server on each route in turn (:data:`ROUTES`): for behaviour both routes
    share (retries, refusals, usage, the key on the wire)."""
    continuation, client = request.param
    scripted.token_api = True  # /tokenize and token-id /v1/completions too
    return Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=scripted.api_base,
                    timeout_s=10, max_retries=2, continuation=continuation, client=client)


@pytest.fixture(scope="session")
def local_vllm() -> Iterator[Endpoint]:
    """The real local vLLM serving SmolLM2, once per session.

    ``$DYNASOR_TEST_API_BASE`` reuses a running server; otherwise the server is started the way
    a user starts it, ``dynasor-graph serve-local --port P``, which must print its base URL once
    it answers, and is stopped at the end with SIGINT, which must end it cleanly.
    """
    from dynasor_graph.local._server import SERVED_MODEL_NAME, free_port

    reuse = os.environ.get("DYNASOR_TEST_API_BASE")
    if reuse:
        yield Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}", api_base=reuse, timeout_s=300)
        return
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dynasor_graph", "serve-local", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().strip()  # blocks until ready, or EOF on failure
        if not first_line:
            process.wait(timeout=60)
            pytest.fail(f"serve-local failed: {process.stderr.read() if process.stderr else ''}")
        assert first_line == f"http://127.0.0.1:{port}/v1"
        yield Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}", api_base=first_line,
                       timeout_s=300)
    finally:
        code = interrupt(process)
    assert code == 0, f"serve-local exited with {code} on SIGINT"
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more: nothing left behind
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


class ServersAhead:
    """The real vLLM servers a test module takes one after another (one per parameter of a
    module-scoped fixture), started ``ahead`` at a time in the background.

    A vLLM start is ~30 s of mostly single-threaded imports in three processes, so two starts
    share the machine's two cores, and one server's tests run while the next ones start. The
    servers are made by ``factories`` when their start is due (a port is taken then), and
    :meth:`close` stops any left. The pool's threads live until :meth:`close` on purpose: a
    server gets SIGTERM when the *thread* that started it ends (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, factories: list[Callable[[], LocalServer]], ahead: int = 2) -> None:
        self._factories = factories
        self._ahead = ahead
        self._pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="vllm-start")
        self._starts: dict[int, Future[LocalServer]] = {}

    def _start_through(self, index: int) -> None:
        for i in range(index, min(index + self._ahead, len(self._factories))):
            if i not in self._starts:
                self._starts[i] = self._pool.submit(lambda i=i: self._factories[i]().start())

    def take(self, index: int) -> LocalServer:
        """Server ``index``, once it answers (its start raises here if it failed)."""
        self._start_through(index)
        return self._starts[index].result()

    def done(self, index: int) -> None:
        """Stop server ``index``; the next ones start."""
        self._starts[index].result().stop()
        self._start_through(index + 1)

    def close(self) -> None:
        for start in self._starts.values():
            with contextlib.suppress(Exception):
                start.result().stop()
        self._pool.shutdown()
