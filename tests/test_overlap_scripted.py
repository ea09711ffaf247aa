"""Overlapped probing on the scripted server's streamed token route: the exact requests, the
abort on exit, the tokens streamed past the exit counted, token events, and resume mid-stream.

The server renders through DeepSeek-R1-Distill's template (its generation prompt opens the
thinking, so an early exit closes it) and streams ``stream=True`` completions one token an
event; ``Script.hold_after`` makes a stream hold after that many tokens (a model still
decoding), and ``ScriptedServer.streams`` records what each sent and whether the client left.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import with_fields
from langgraph.checkpoint.memory import InMemorySaver
from scripted_model import pieces
from scripted_server import Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    SCConfig,
    Scheduler,
    SchedulerConfig,
    ServerRefused,
    create_cot,
    create_sc,
)
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX
from dynasor_graph._state import generated_tokens
from dynasor_graph._stream import _LIVE

PROMPT = 6
"""The question ``q`` as R1-Distill's template renders it, in ids: DeepSeek's begin-of-sentence,
user and assistant markers around ``q``, then the generation prompt's ``<think>`` and ``\\n``."""
SUFFIX = len(pieces(DEFAULT_PROBE_SUFFIX))
OVERLAPPED = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=200,
                       probing="overlapped")


@contextmanager
def streaming(script: Script) -> Iterator[tuple[Endpoint, ScriptedServer]]:
    """The scripted server on R1-Distill's template, and a token-route endpoint without
    retries."""
    with ScriptedServer(script, chat_template="deepseek_r1_distill") as server:
        yield Endpoint(model="m", api_base=server.api_base, timeout_s=10,
                       continuation="tokens", max_retries=0), server


def kinds(server: ScriptedServer) -> list[str]:
    """The script's answers in order: ``stream`` for a streamed one, else reason or probe."""
    return ["stream" if e["body"].get("stream") else e["kind"] for e in server.script.log]


def probe_prompts(server: ScriptedServer) -> list[int]:
    return [e["usage"]["prompt_tokens"] for e in server.script.log if e["kind"] == "probe"]


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


async def test_one_stream_probes_forked_at_boundaries_and_an_exit_aborts_it() -> None:
    # The server streams 14 tokens at once, then holds (a model still decoding). The probes
    # agree at the second boundary (8 tokens): the run exits there, closes the stream (the
    # server sees the disconnect) and counts the 6 tokens received past the exit.
    with streaming(Script(hold_after=14, probes=["12}"], probe_delay_s=0.1)) as (
            endpoint, server):
        result = await create_cot(endpoint, OVERLAPPED).ainvoke({"question": "q"})
        wait_for(lambda: server.streams[0].disconnected)
    assert kinds(server) == ["stream", "probe", "probe"]
    [stream] = server.streams
    assert (stream.prompt, stream.body["max_tokens"]) == (PROMPT, 200)
    # Each probe is forked from the prompt plus the tokens received up to its boundary.
    assert probe_prompts(server) == [PROMPT + 4 + SUFFIX, PROMPT + 8 + SUFFIX]
    assert stream.disconnected and stream.sent == 14
    assert (result["answer"], result["stop_reason"]) == ("12", "certain")
    usage = result["usage"]
    assert usage["reasoning_tokens"] == 8
    assert usage["discarded_tokens"] == 6
    assert usage["reasoning_prompt_tokens"] == PROMPT  # the stream's prompt, processed once
    assert usage["probe_prompt_tokens"] == 2 * PROMPT + 4 + 8 + 2 * SUFFIX
    assert result["response"].startswith("r0 r1 r2 r3 r4 r5 r6 r7 \n\n</think>")
    assert not _LIVE


async def test_a_stream_read_to_the_model_end_discards_nothing_and_streams_tokens() -> None:
    # The model ends its turn (closing its thinking) inside the third chunk: no probe after
    # it, nothing discarded; every token reaches a stream_mode="custom" consumer in order.
    script = Script(reasoning=["a ", "b ", "c ", "d ", "e ", "</think>", "x ", "\\boxed{5}"],
                    probes=["1}", "2}"], token_delay_s=0.002)
    with streaming(script) as (endpoint, server):
        graph = create_cot(endpoint, OVERLAPPED)
        tokens: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        async for mode, chunk in graph.astream({"question": "q"},
                                               stream_mode=["custom", "values"]):
            if mode == "custom" and chunk["event"] == "token":
                tokens.append(chunk)
            elif mode == "values":
                final = chunk
    assert kinds(server) == ["stream", "probe"]
    assert (final["stop_reason"], final["answer"]) == ("answered", "5")
    assert "".join(t["text"] for t in tokens) == "".join(script.reasoning)
    assert sum(t["tokens"] for t in tokens) == 8 == final["usage"]["reasoning_tokens"]
    assert final["usage"]["discarded_tokens"] == 0
    assert server.streams[0].sent == 8 and not server.streams[0].disconnected


@pytest.mark.parametrize("client", ["litellm", "openai"])
async def test_the_stream_sends_the_token_route_s_body_with_stream_added(client: str) -> None:
    # A sequential run whose first chunk is the whole budget asks what the stream asks.
    sequential = CoTConfig(chunk_size=200, max_tokens=200, seed=3)
    overlapped = with_fields(OVERLAPPED, seed=3)
    run = {"configurable": {"thread_id": "t-2"}}
    with streaming(Script(probes=["12}"])) as (endpoint, server):
        tokens_endpoint = with_fields(endpoint, client=client)
        await create_cot(tokens_endpoint, sequential).ainvoke({"question": "q"}, run)
        asked = len(server.generations())
        await create_cot(tokens_endpoint, overlapped).ainvoke({"question": "q"}, run)
    plain, streamed = server.generations()[0], server.generations()[asked]
    assert streamed["body"].pop("stream") is True
    assert streamed["body"].pop("stream_options") == {"include_usage": True}
    assert streamed["body"] == plain["body"]
    assert streamed["headers"]["x-session-id"] == plain["headers"]["x-session-id"] == "t-2"


async def test_every_request_of_the_program_carries_one_session_key() -> None:
    with streaming(Script(hold_after=20, probes=["3}"])) as (endpoint, server):
        await create_cot(endpoint, OVERLAPPED).ainvoke(
            {"question": "q"}, {"configurable": {"thread_id": "t-1"}})
    assert {r["headers"].get("x-session-id") for r in server.generations()} == {"t-1"}


async def test_resubmitting_every_n_chunks_reopens_the_stream_token_exactly() -> None:
    config = CoTConfig(chunk_size=4, certainty_threshold=3, max_tokens=200, probing="overlapped",
                       resubmit_every=2)
    script = Script(probes=["1}", "2}", "3}", "4}", "4}", "4}"], token_delay_s=0.03)
    with streaming(script) as (endpoint, server):
        result = await create_cot(endpoint, config).ainvoke({"question": "q"})
        wait_for(lambda: all(s.disconnected or s.sent == s.tokens for s in server.streams))
    assert kinds(server) == ["stream", "probe", "probe", "stream", "probe", "probe", "stream",
                             "probe", "probe"]
    streams = server.streams
    # Each re-submission continues the prompt, the 8 more tokens taken since the last, and
    # what the closed stream had run ahead (kept, not discarded): the budget stays 200.
    assert streams[0].prompt == PROMPT
    assert [s.prompt - PROMPT >= 8 * k for k, s in enumerate(streams)] == [True] * 3
    assert [s.prompt + s.body["max_tokens"] for s in streams] == [PROMPT + 200] * 3
    # Each was closed (the server saw it) or had already sent all it was asked for.
    assert all(s.disconnected or s.sent == s.tokens == s.body["max_tokens"] for s in streams)
    usage = result["usage"]
    assert usage["reasoning_tokens"] == 24
    assert usage["reasoning_prompt_tokens"] == sum(s.prompt for s in streams)
    assert result["response"].startswith("".join(script.reasoning[:24]) + "\n\n</think>")
    # What ran past the exit (the kept run-ahead included) is discarded once: never more than
    # the server sent beyond the 24 tokens used.
    assert 0 <= usage["discarded_tokens"] <= sum(s.sent for s in streams) - 24


def _first_part(endpoint: Endpoint, saver: InMemorySaver, config: dict[str, Any]) -> None:
    """Run until after the first probe in a loop of its own, which then dies (a killed
    process: its live stream dies with it)."""
    async def run() -> None:
        graph = create_cot(endpoint, OVERLAPPED, checkpointer=saver)
        await graph.ainvoke({"question": "q"}, config, interrupt_after=["probe"])

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join()


async def test_resume_after_the_stream_died_continues_token_exactly() -> None:
    script = Script(probes=["1}", "2}", "7}", "7}"], token_delay_s=0.003)
    with streaming(script) as (endpoint, server):
        saver = InMemorySaver()
        config: dict[str, Any] = {"configurable": {"thread_id": "resume"}}
        _first_part(endpoint, saver, config)
        halfway = (await create_cot(endpoint, OVERLAPPED, checkpointer=saver).aget_state(
            config)).values
        assert halfway["usage"]["reasoning_tokens"] == 4
        first_stream_sent = server.streams[0].sent
        wait_for(lambda: server.streams[0].disconnected or server.streams[0].sent == 200)
        graph = create_cot(endpoint, OVERLAPPED, checkpointer=saver)
        result = await graph.ainvoke(None, config)
        ids = (await graph.aget_state(config)).values["token_ids"]
    streams = server.streams
    assert len(streams) == 2 and streams[0].disconnected
    assert (streams[1].prompt, streams[1].body["max_tokens"]) == (PROMPT + 4, 196)
    assert result["stop_reason"] == "certain" and result["answer"] == "7"
    assert result["usage"]["reasoning_tokens"] == 16
    assert ids == server.vocab.ids(script.reasoning[:16])
    assert result["response"].startswith("".join(script.reasoning[:16]) + "\n\n</think>")
    # What the dead stream had received past the checkpoint is counted, not hidden.
    assert 0 <= result["usage"]["discarded_tokens"] - (streams[1].sent - 12) <= (
        max(first_stream_sent, streams[0].sent))


async def test_sc_paths_each_stream_and_every_live_stream_closes_at_the_exit() -> None:
    config = SCConfig(path=CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=64,
                                     probing="overlapped"),
                      width=2, max_width=2, detect_at=2, token_budget=400)
    with streaming(Script(hold_after=10, probes=["5}"], probe_delay_s=0.05)) as (
            endpoint, server):
        result = await create_sc(endpoint, config).ainvoke({"question": "q"})
        wait_for(lambda: all(s.disconnected for s in server.streams))
    streams = server.streams
    assert len(streams) == 2 and all(s.disconnected and s.sent == 10 for s in streams)
    assert result["answer"] == "5"
    for path in result["paths"]:
        assert path["usage"]["reasoning_tokens"] == 8
        assert path["usage"]["discarded_tokens"] == 2
    assert result["usage"]["discarded_tokens"] == 4
    assert not _LIVE


async def test_a_scheduler_tags_the_stream_and_counts_every_token_it_received() -> None:
    scheduler = Scheduler(SchedulerConfig(mode="both", max_in_flight=2))
    with streaming(Script(hold_after=14, probes=["12}"], probe_delay_s=0.1)) as (
            endpoint, server):
        result = await scheduler.run(create_cot(endpoint, OVERLAPPED), {"question": "q"})
        wait_for(lambda: server.streams[0].disconnected)
    assert kinds(server) == ["stream", "probe", "probe"]
    priorities = [r["body"].get("priority") for r in server.generations()]
    assert all(isinstance(p, int) for p in priorities)  # the stream's too
    usage = result.output["usage"]
    assert usage["discarded_tokens"] == 6
    # The admission hook saw the stream's received tokens (taken and discarded) and probes'.
    assert result.tokens == generated_tokens(usage) == 8 + 6 + 2
    assert scheduler.in_flight == 0


async def test_a_refused_stream_is_translated_and_a_busy_one_retried_from_the_state() -> None:
    with (streaming(Script(fail_next=[400])) as (endpoint, server),
          pytest.raises(ServerRefused, match="scripted failure 400")):
        await create_cot(endpoint, OVERLAPPED).ainvoke({"question": "q"})
    with streaming(Script(fail_next=[503], probes=["4}"])) as (endpoint, server):
        retried = Endpoint.model_validate({**endpoint.model_dump(), "max_retries": 1})
        result = await create_cot(retried, OVERLAPPED).ainvoke({"question": "q"})
    # the 503 answered before any event, then the retried stream and its two probes
    assert [bool(r["body"].get("stream")) for r in server.generations()] == [
        True, True, False, False]
    assert len(server.streams) == 1 and kinds(server) == ["stream", "probe", "probe"]
    assert result["answer"] == "4" and result["usage"]["reasoning_tokens"] == 8
