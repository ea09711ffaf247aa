"""Overlapped probing on the real local vLLM: vLLM's own counters equal the run's usage, the
tokens streamed past the exit included, and a greedy run probes as the sequential loop does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
