"""Fixtures and helpers shared by the tests: the scripted loopback server (on either route),
the real local vLLM (once per session), and small helpers the test files import from here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import Endpoint

M = TypeVar("M", bound=BaseModel)

# The routes a model call can take: (continuation, client). The client only matters on the
# token route; the text route always goes through litellm.acompletion.
ROUTES = [("text", "litellm"), ("tokens", "litellm"), ("tokens", "openai")]
ROUTE_IDS = [f"{continuation}-{client}" for continuation, client in ROUTES]


def with_fields(model: M, **changes: Any) -> M:
    """A copy of a pydantic model with ``changes``, validated again (``model_copy(update=)``
    would skip validation). A ``SecretStr`` survives: ``model_dump`` keeps the object."""
    return type(model).model_validate({**model.model_dump(), **changes})


def authorizations(requests: list[dict[str, Any]]) -> set[str | None]:
    """The ``Authorization`` headers the logged requests of a scripted server carried."""
    return {r["headers"].get("authorization") for r in requests}


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    """A fresh scripted server; set ``scripted.script`` fields to choose the replies."""
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
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert code == 0, f"serve-local exited with {code} on SIGINT"
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more: nothing left behind
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
