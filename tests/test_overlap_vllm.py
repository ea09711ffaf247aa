"""Overlapped probing on the real local vLLM: vLLM's own counters equal the run's usage, the
tokens streamed past the exit included, and a greedy run probes as the sequential loop does;
and the scripted server's stream (``tests/test_overlap_scripted.py``) has the shape of vLLM's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from scripted_server import ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.eval._metrics import counter_delta, server_counters

pytestmark = pytest.mark.vllm

QUESTION = ("Explain step by step how to multiply 37 by 24, checking every step twice, "
            "then do the same for 48 times 19.")


async def test_overlapped_usage_is_the_servers_count_and_probes_match_sequential(
    local_vllm: Endpoint,
) -> None:
    runs = {}
    for probing in ("sequential", "overlapped"):
        config = CoTConfig(chunk_size=16, certainty_threshold=2, max_tokens=128, seed=0,
                           temperature=0, probe_temperature=0, probing=probing)
        before = server_counters(local_vllm.server_root)
        result = await create_cot(local_vllm, config).ainvoke({"question": QUESTION})
        await asyncio.sleep(1.0)  # the aborted stream's last engine step lands in /metrics
        runs[probing] = result, counter_delta(before, server_counters(local_vllm.server_root))
    (sequential, _), (overlapped, spent) = runs["sequential"], runs["overlapped"]
    usage = overlapped["usage"]
    # Every token vLLM generated is in the usage: reasoning, probes, and the discarded tail.
    assert spent["vllm:generation_tokens"] == (
        usage["reasoning_tokens"] + usage["probe_completion_tokens"] + usage["discarded_tokens"])
    assert spent["vllm:prompt_tokens"] == (
        usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])
    # Greedy: the one stream makes the chunks' tokens, so the probes see the same prefixes.
    # Probes equal but for the confidence's last digits (logprobs of another batch shape).
    def exact(probes: list[Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in p.items() if k != "confidence"} for p in probes]

    assert exact(overlapped["probes"]) == exact(sequential["probes"])
    for mine, theirs in zip(overlapped["probes"], sequential["probes"], strict=True):
        assert mine.get("confidence") == pytest.approx(theirs.get("confidence"), abs=1e-3)
    assert (overlapped["answer"], overlapped["stop_reason"]) == (
        sequential["answer"], sequential["stop_reason"])
    assert overlapped["response"] == sequential["response"]
    assert usage["reasoning_tokens"] == sequential["usage"]["reasoning_tokens"]
    assert usage["reasoning_prompt_tokens"] < sequential["usage"]["reasoning_prompt_tokens"]


def streamed(endpoint: Endpoint, max_tokens: int) -> list[Any]:
    """A chat rendered by the server's ``/tokenize``, then streamed from its
    ``/v1/completions`` as the overlapped route asks: every ``data:`` event, parsed."""
    ids = httpx.post(f"{endpoint.server_root}/tokenize", timeout=60, json={
        "model": endpoint.served_name, "add_generation_prompt": True,
        "messages": [{"role": "user", "content": "Count to ten."}]}).json()["tokens"]
    body = {"model": endpoint.served_name, "prompt": [ids], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "return_token_ids": True, "logprobs": 0}
    with httpx.stream("POST", f"{endpoint.api_base}/completions", json=body,
                      timeout=120) as response:
        return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
                for line in response.iter_lines() if line.startswith("data: ")]


def shapes(events: list[Any]) -> list[Any]:
    """Each event's keys (the event's but vLLM's build stamp, its choices', their logprobs',
    the usage's), consecutive repeats folded: a token event, the usage event, ``[DONE]``."""
    folded: list[Any] = []
    for event in events:
        shape = event if event == "[DONE]" else (
            sorted(set(event) - {"system_fingerprint"}),
            [sorted(choice) for choice in event["choices"]],
            [sorted(choice["logprobs"]) for choice in event["choices"]],
            sorted(event.get("usage") or {}))
        if not folded or folded[-1] != shape:
            folded.append(shape)
    return folded


def test_the_scripted_stream_has_the_shape_of_vllm_s(local_vllm: Endpoint) -> None:
    with ScriptedServer(token_api=True) as server:
        scripted = Endpoint(model="m", api_base=server.api_base)
        both = {"vllm": streamed(local_vllm, 6), "scripted": streamed(scripted, 6)}
    assert shapes(both["scripted"]) == shapes(both["vllm"])
    for events in both.values():
        tokens = events[:-2]  # then the usage event and [DONE]
        assert [e["choices"] for e in events[-2:-1]] == [[]] and events[-1] == "[DONE]"
        # the prompt's ids on the first event only; per event as many ids as tokens, their
        # offsets counted from the stream's start; the usage counts every id
        assert [e["choices"][0]["prompt_token_ids"] is not None for e in tokens] == [
            True] + [False] * (len(tokens) - 1)
        text, count = "", 0
        for event in tokens:
            choice = event["choices"][0]
            assert len(choice["token_ids"]) == len(choice["logprobs"]["tokens"])
            assert choice["logprobs"]["text_offset"][0] == len(text)
            text, count = text + choice["text"], count + len(choice["token_ids"])
        assert events[-2]["usage"]["completion_tokens"] == count == 6
        assert tokens[-1]["choices"][0]["finish_reason"] == "length"
