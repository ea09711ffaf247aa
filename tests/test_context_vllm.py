"""The context window as a budget on the real local vLLM (``--max-model-len 2048``): a question
long enough that the reasoning reaches the window ends with an answer, stop reason
``context`` and usage equal to vLLM's own ``/metrics`` counters, in Dynasor-CoT, in SC and in
``solve``, where it used to end in the server's 400 and no result.

The counter tests assume nothing else uses the server meanwhile: run them with the session's
own server (without ``$DYNASOR_TEST_API_BASE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from typing import Any

import httpx
import pytest
from conftest import counters, spent, suffix_length

from dynasor_graph import CoTConfig, Endpoint, SCConfig, create_cot, create_sc

pytestmark = pytest.mark.vllm

TASK = "Explain step by step how to multiply 37 by 24, checking every step twice."
FILLER = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
ROOM = 80  # reasoning tokens the window leaves after the question and the probe (at least)
PROBE = 20  # the default probe_max_tokens


def window(endpoint: Endpoint) -> int:
    body = {"model": endpoint.served_name, "prompt": "x", "add_special_tokens": False}
    limit = httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30).json()[
        "max_model_len"]
    assert isinstance(limit, int)
    return limit


def rendered(endpoint: Endpoint, question: str) -> int:
    body = {"model": endpoint.served_name, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": question}]}
    return len(httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30)
               .json()["tokens"])


@cache
def long_question(api_base: str, model: str) -> tuple[str, int]:
    """The task after as much filler as leaves at least ``ROOM`` tokens of reasoning before
    the window (with the probe after it), and the room it leaves exactly."""
    endpoint = Endpoint(model=model, api_base=api_base)
    free = window(endpoint) - suffix_length(endpoint) - PROBE
    low, high = 0, 400  # filler sentences: the most that leaves ROOM
    while low < high:
        middle = (low + high + 1) // 2
        if free - rendered(endpoint, FILLER * middle + TASK) >= ROOM:
            low = middle
        else:
            high = middle - 1
    question = FILLER * low + TASK
    return question, free - rendered(endpoint, question)


def question_for(endpoint: Endpoint) -> tuple[str, int]:
    return long_question(endpoint.api_base, endpoint.model)


def assert_counted(usage: dict[str, int], moved: tuple[float, float]) -> None:
    """The run's usage is what vLLM counted: every generated and every prompt token."""
    assert moved == (usage["reasoning_tokens"] + usage["probe_completion_tokens"],
                     usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])


async def test_cot_reaching_the_window_ends_with_the_last_probe_and_exact_usage(
    local_vllm: Endpoint,
) -> None:
    question, room = question_for(local_vllm)
    first = rendered(local_vllm, question)
    config = CoTConfig(chunk_size=32, certainty_threshold=64, max_tokens=1024, seed=0,
                       temperature=0, probe_temperature=0)
    before = counters(local_vllm)
    result = await create_cot(local_vllm, config).ainvoke({"question": question})
    moved = spent(before, counters(local_vllm))
    assert (result["stop_reason"], result["decision"]) == ("context", "exit")
    usage = result["usage"]
    assert usage["reasoning_tokens"] == room  # to the window exactly: chunks 32, 32, … rest
    probes = result["probes"]
    assert [p["tokens"] for p in probes] == [*range(32, room, 32), room]
    assert result["answer"] and result["answer"] == probes[-1]["answer"]
    # the last probe's prompt: the question, all the reasoning and the suffix, 20 short of 2048
    assert usage["probe_prompt_tokens"] == sum(
        first + p["tokens"] + suffix_length(local_vllm) for p in probes)
    assert first + room + suffix_length(local_vllm) + PROBE == window(local_vllm)
    assert_counted(usage, moved)


async def test_sc_paths_reaching_the_window_end_with_their_probes_and_exact_usage(
    local_vllm: Endpoint,
) -> None:
    question, room = question_for(local_vllm)
    path = CoTConfig(chunk_size=32, certainty_threshold=64, max_tokens=1024, seed=0)
    config = SCConfig(path=path, width=2, max_width=2, token_budget=4000)
    before = counters(local_vllm)
    result: dict[str, Any] = dict(await create_sc(local_vllm, config).ainvoke(
        {"question": question}))
    moved = spent(before, counters(local_vllm))
    paths = result["paths"]
    assert [p["stop_reason"] for p in paths] == ["context", "context"]
    assert [p["usage"]["reasoning_tokens"] for p in paths] == [room, room]
    assert all(p["answer"] == p["probes"][-1]["answer"] for p in paths)
    # every path ended at the window: the vote answers, certain if the paths agree enough
    assert result["answer"]
    assert result["stop_reason"] == ("certain" if result["certaindex"] >= 0.7 else "context")
    assert_counted(result["usage"], moved)


def test_solve_reaching_the_window_prints_its_result(local_vllm: Endpoint) -> None:
    # The case: --max-tokens 1024 behind a question that leaves the window ~80 tokens.
    question, room = question_for(local_vllm)
    env = {**os.environ, "DYNASOR_API_BASE": local_vllm.api_base,
           "DYNASOR_MODEL": local_vllm.model}
    out = subprocess.run([sys.executable, "-m", "dynasor_graph", "solve", question, "--json",
                          "--max-tokens", "1024", "--chunk-size", "32", "--threshold", "64",
                          "--temperature", "0", "--seed", "0"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["stop_reason"] == "context"
    assert result["usage"]["reasoning_tokens"] == room
    assert result["answer"] and result["answer"] == result["probes"][-1]["answer"]
