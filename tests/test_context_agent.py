"""An agent's probe and the server's context window, on the scripted token server: a probe that
cannot fit (the step's rendered prompt, its thinking and draft, the suffix and
``probe_max_tokens`` past ``max_model_len``) is never sent; the run then ends with stop reason
``context`` and the latest confident probe's answer, or, without one, goes on unprobed. Both
the middleware and the hand-built node; a dry run only records where it would have stopped.

Each test first runs the agent on a server with room to spare to measure its requests, then
on a fresh one whose window holds every model call of the run but not the long step's probe.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import with_fields
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from scripted_server import ScriptedServer
from test_agent_scripted import LAMPS, AgentScript

from dynasor_graph import Endpoint
from dynasor_graph._context import _LIMITS
from dynasor_graph.agents import EarlyStopConfig

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

from agent import build_agent, build_graph

MODEL_MAX_TOKENS = 256  # the example agent's chat model asks for this much
PROBE = 20  # probe_max_tokens
SHORT = "Look the warehouse up first."
LONG = " ".join(f"t{i}" for i in range(1000))  # a step that thought at length


@pytest.fixture(autouse=True)
def fresh_limits() -> Iterator[None]:
    _LIMITS.clear()
    yield
    _LIMITS.clear()


async def run(kind: str, thinking: list[str], settings: EarlyStopConfig,
              window: int | None = None) -> tuple[dict[str, Any], ScriptedServer]:
    """The lamps run (probes all answer 2880) through the middleware or the hand-built loop,
    on the token route of a fresh scripted server; ``window``: its ``max_model_len``."""
    script = AgentScript(turns=LAMPS, probes=["2880}"], thinking=thinking)
    if window is not None:
        script.max_model_len = window  # type: ignore[attr-defined]
    with ScriptedServer(script, token_api=True) as server:
        endpoint = Endpoint(model="hosted_vllm/scripted", api_base=server.api_base,
                            timeout_s=10, continuation="tokens", max_retries=0)
        graph = (build_agent(endpoint, settings) if kind == "middleware"
                 else build_graph(endpoint, settings))
        result = dict(await graph.ainvoke({"messages": [HumanMessage("How many lamps?")]}))
    return result, server


def steps(server: ScriptedServer) -> list[int]:
    """Each model call's rendered prompt, in the server's ids."""
    return [len(server.vocab.encode(server.rendered(r["body"])))
            for r in server.requests_to("/chat/completions")]


def probes(server: ScriptedServer) -> list[tuple[int, int]]:
    """Each probe request's (prompt ids, max_tokens)."""
    return [(len(r["body"]["prompt"][0]), r["body"]["max_tokens"])
            for r in server.requests_to("/v1/completions")]


async def measured_window(kind: str, thinking: list[str]) -> int:
    """A window that holds every model call of the whole run (five steps) with its
    ``max_tokens``, measured on a dry run with room to spare; asserted not to hold the
    probe after the long-thinking step 2."""
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=PROBE, dry_run=True)
    _, roomy = await run(kind, thinking, settings)
    window = max(steps(roomy)) + MODEL_MAX_TOKENS
    sent = probes(roomy)
    assert len(sent) == 4 and sent[1][0] + PROBE > window  # step 2's probe cannot fit
    assert all(prompt + PROBE <= window for i, (prompt, _) in enumerate(sent) if i != 1)
    return window


@pytest.mark.parametrize("kind", ["middleware", "node"])
async def test_a_probe_past_the_window_ends_the_run_with_the_last_confident_answer(
    kind: str,
) -> None:
    thinking = [SHORT, LONG, SHORT, SHORT]
    window = await measured_window(kind, thinking)
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=PROBE)
    result, server = await run(kind, thinking, settings, window)
    sent = probes(server)
    assert len(sent) == 1  # step 1's probe; step 2's was never sent
    assert all(prompt + wanted <= window for prompt, wanted in sent)
    assert all(prompt + MODEL_MAX_TOKENS <= window for prompt in steps(server))
    report = result["early_stop"]
    assert (report["stop_reason"], report["decision"], report["answer"]) == (
        "context", "exit", "2880")
    assert [(p["step"], p["answer"]) for p in report["probes"]] == [(1, "2880")]
    assert report["certaindex"] == 0.5  # one probe of the two the window needs: not certain
    usage = report["usage"]
    assert (usage["model_calls"], usage["tool_calls"]) == (2, 1)
    assert usage["probe_prompt_tokens"] == sent[0][0]  # what was sent, counted by the server
    assert usage["probe_completion_tokens"] == server.script.total("probe", "completion_tokens")
    messages = result["messages"]
    final = messages[-1]
    assert isinstance(final, AIMessage) and final.content == "2880" and not final.tool_calls
    assert final.response_metadata["early_stop"]["stop_reason"] == "context"
    # step 2's tool call never ran: every tool call left in the history has its result
    called = [c["id"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert called == [m.tool_call_id for m in messages if isinstance(m, ToolMessage)] == [
        "call_0_0"]


async def test_a_dry_run_records_the_window_stop_and_goes_on() -> None:
    thinking = [SHORT, LONG, SHORT, SHORT]
    window = await measured_window("middleware", thinking)
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=PROBE, dry_run=True)
    result, server = await run("middleware", thinking, settings, window)
    report = result["early_stop"]
    assert report["stop_reason"] == "finished" and result["messages"][-1].content == "2880"
    would = report["would_stop"]
    assert would is not None
    assert (would["step"], would["stop_reason"], would["answer"]) == (2, "context", "2880")
    assert [p["step"] for p in report["probes"]] == [1, 3, 4]  # no probe after step 2
    assert len(probes(server)) == 3
    assert report["usage"]["model_calls"] == 5


async def test_without_a_confident_answer_the_run_goes_on_unprobed() -> None:
    # every step thinks at length: no probe fits, so there is no answer to stop with, and
    # the run ends by itself as without early stop
    thinking = [LONG] * 4
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=PROBE, dry_run=True)
    _, roomy = await run("middleware", thinking, settings)
    window = max(steps(roomy)) + MODEL_MAX_TOKENS
    assert all(prompt + PROBE > window for prompt, _ in probes(roomy))
    result, server = await run("middleware", thinking,
                               with_fields(settings, dry_run=False), window)
    report = result["early_stop"]
    assert probes(server) == []
    assert (report["stop_reason"], report["answer"], report["probes"]) == (
        "finished", "2880", [])
    assert report["usage"]["model_calls"] == 5 and report["usage"]["probe_prompt_tokens"] == 0
