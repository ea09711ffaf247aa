"""SC, MCTS and Rebase against the real local vLLM (SmolLM2-135M-Instruct on the CPU): each
run completes within its bounds and its usage equals the server's own token counters."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import QUESTION, counters

from dynasor_graph import CoTConfig, Endpoint, MCTSConfig, RebaseConfig, SCConfig, create_graph
from dynasor_graph.rewards import JudgeReward

pytestmark = pytest.mark.vllm


async def run_and_count(
    endpoint: Endpoint, algorithm: Any, config: Any
) -> tuple[dict[str, Any], float, float]:
    """The run's output and how far the server's generation / prompt counters moved."""
    reward = None if algorithm == "sc" else JudgeReward(endpoint)
    before = counters(endpoint)
    result = dict(await create_graph(algorithm, endpoint, config, reward=reward).ainvoke(
        {"question": QUESTION}))
    after = counters(endpoint)
    return (result,
            after["vllm:generation_tokens"] - before["vllm:generation_tokens"],
            after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"])


def generated(usage: dict[str, int]) -> int:
    return (usage["reasoning_tokens"] + usage["probe_completion_tokens"]
            + usage["reward_completion_tokens"])


def prompted(usage: dict[str, int]) -> int:
    return (usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"]
            + usage["reward_prompt_tokens"])


async def test_sc_on_vllm_accounts_every_token(local_vllm: Endpoint) -> None:
    path = CoTConfig(chunk_size=32, certainty_threshold=2, max_tokens=96, seed=0)
    config = SCConfig(path=path, width=2, max_width=3, token_budget=400)
    result, gen, prompt = await run_and_count(local_vllm, "sc", config)
    usage = result["usage"]
    assert result["stop_reason"] in {"certain", "width", "budget"}
    assert 2 <= len(result["paths"]) <= 3
    assert usage["reasoning_tokens"] + usage["probe_completion_tokens"] <= 400
    assert result["budget_left"] == 400 - usage["reasoning_tokens"] - usage[
        "probe_completion_tokens"]
    assert (gen, prompt) == (generated(usage), prompted(usage))
    seeds = sorted(p["seed"] for p in result["paths"])
    assert seeds == list(range(len(seeds)))  # every path sampled with its own seed


async def test_mcts_on_vllm_with_an_llm_judge_accounts_every_token(local_vllm: Endpoint) -> None:
    config = MCTSConfig(chunk_size=32, width=2, max_width=2, max_depth=3,
                        token_budget=160, seed=0)
    result, gen, prompt = await run_and_count(local_vllm, "mcts", config)
    usage = result["usage"]
    assert result["stop_reason"] in {"certain", "budget", "exhausted"}
    assert 0 < usage["reasoning_tokens"] <= 160
    scored = [n for n in result["nodes"] if n["parent"] is not None]
    assert scored and all(0.0 <= (n["reward"] or 0.0) <= 1.0 for n in scored)
    assert usage["reward_completion_tokens"] == len(scored)  # one verdict token per step
    assert max(n["depth"] for n in result["nodes"]) <= 3
    assert (gen, prompt) == (generated(usage), prompted(usage))


async def test_rebase_on_vllm_with_an_llm_judge_accounts_every_token(
    local_vllm: Endpoint,
) -> None:
    config = RebaseConfig(chunk_size=32, width=2, max_width=4, widen_by=2, max_depth=3,
                          token_budget=200, seed=0)
    result, gen, prompt = await run_and_count(local_vllm, "rebase", config)
    usage = result["usage"]
    assert result["stop_reason"] in {"certain", "budget", "exhausted", "width"}
    assert 0 < usage["reasoning_tokens"] <= 200
    for depth in range(1, 4):  # the beam never exceeds its maximum width
        assert sum(1 for n in result["nodes"] if n["depth"] == depth) <= 4
    assert (gen, prompt) == (generated(usage), prompted(usage))
