"""Fixtures: the scripted loopback server, and the real local vLLM (once per session)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import Endpoint


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    """A fresh scripted server; set ``scripted.script`` fields to choose the replies."""
    with ScriptedServer(Script()) as server:
        yield server


@pytest.fixture
def scripted_endpoint(scripted: ScriptedServer) -> Endpoint:
    return Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=scripted.api_base,
                    timeout_s=10, max_retries=2)


@pytest.fixture(scope="session")
def local_vllm() -> Iterator[Endpoint]:
    """The real local vLLM serving SmolLM2: ``$DYNASOR_TEST_API_BASE`` if set, else started
    here once for the session and stopped at its end."""
    reuse = os.environ.get("DYNASOR_TEST_API_BASE")
    if reuse:
        from dynasor_graph._local import SERVED_MODEL_NAME

        yield Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}", api_base=reuse, timeout_s=300)
        return
    from dynasor_graph._local import LocalServer, ensure_model

    ensure_model()
    with LocalServer() as server:
        yield server.endpoint().model_copy(update={"timeout_s": 300})
