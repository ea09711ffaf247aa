"""Dynasor-CoT against the real local vLLM (SmolLM2-135M-Instruct on the CPU).

The server is started once per session (or reused from ``$DYNASOR_TEST_API_BASE``); these tests
run one at a time against it, so its ``/metrics`` counters move only by what each test sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTION, counters

from dynasor_graph import CoTConfig, Endpoint, ServerRefused, create_cot

pytestmark = pytest.mark.vllm

async def run(endpoint: Endpoint, config: CoTConfig, question: str = QUESTION) -> dict[str, Any]:
    return dict(await create_cot(endpoint, config).ainvoke({"question": question}))


async def test_usage_equals_the_servers_own_counters(local_vllm: Endpoint) -> None:
    config = CoTConfig(chunk_size=32, certainty_threshold=2, max_tokens=160, seed=0)
    before = counters(local_vllm)
    result = await run(local_vllm, config)
    after = counters(local_vllm)
    usage = result["usage"]
    assert result["stop_reason"] in {"certain", "finished", "budget"}
    assert 0 < usage["reasoning_tokens"] <= config.max_tokens
    assert len(result["probes"]) >= 1 or result["stop_reason"] == "finished"
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == (
        usage["reasoning_tokens"] + usage["probe_completion_tokens"])
    assert after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"] == (
        usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])


async def test_probe_prompts_are_served_from_the_prefix_cache(local_vllm: Endpoint) -> None:
    # A fixed budget with no chance to exit early, so there are several probes to measure.
    config = CoTConfig(chunk_size=64, certainty_threshold=64, max_tokens=256, seed=1,
                       system_prompt="Think step by step at length before answering.")
    before = counters(local_vllm)
    result = await run(local_vllm, config, "Explain in detail why 17 is a prime number.")
    after = counters(local_vllm)
    usage = result["usage"]
    hits = after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]
    queries = after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"]
    assert queries == usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"]
    assert usage["probe_prompt_tokens"] > 0
    # every probe's prompt is a chunk request's prompt + its output + the suffix: the cache
    # serves at least half of all prompt tokens (block size 32; measured ~0.8 here)
    assert hits / queries >= 0.5, (hits, queries, usage)


async def test_prompt_longer_than_the_context_is_refused_before_any_generation(
    local_vllm: Endpoint,
) -> None:
    # The window vLLM reports (max_model_len 2048) holds no reasoning after this prompt: the
    # program refuses it itself, naming the window, rather than sending what vLLM would refuse.
    with pytest.raises(ServerRefused) as info:
        await run(local_vllm, CoTConfig(max_tokens=64), "seven " * 5000)
    message = str(info.value)
    assert message.startswith(local_vllm.api_base)
    assert "maximum context length (max_model_len 2048)" in message
    assert info.value.status_code is None
    assert "Traceback" not in message


def test_cli_solve_json_on_the_local_vllm(local_vllm: Endpoint) -> None:
    env = {**os.environ, "DYNASOR_API_BASE": local_vllm.api_base,
           "DYNASOR_MODEL": local_vllm.model}
    out = subprocess.run([sys.executable, "-m", "dynasor_graph", "solve", QUESTION, "--json",
                          "--effort", "high", "--max-tokens", "128", "--seed", "0"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["stop_reason"] in {"certain", "finished", "budget"}
    assert result["usage"]["reasoning_tokens"] <= 128
    assert all(set(p) == {"tokens", "answer", "confident"} for p in result["probes"])


async def test_parent_graph_example_on_the_local_vllm(local_vllm: Endpoint) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    from parent_graph import build_homework_graph

    graph = build_homework_graph(local_vllm, CoTConfig(max_tokens=96, chunk_size=32, seed=0))
    result = await graph.ainvoke({"questions": ["What is 7 + 5?", "What is 3 * 4?"]})
    assert [a["question"] for a in result["answers"]] == ["What is 7 + 5?", "What is 3 * 4?"]
    assert 0 < result["usage"]["reasoning_tokens"] <= 2 * 96
