"""Token-exact continuation under the real chat templates of reasoning-model families.

The real local vLLM serves SmolLM2 with the verbatim DeepSeek-R1-Distill and Qwen3 chat
templates (``--chat-template``, files in ``tests/chat_templates``). Under those templates a
chat-level continuation is not what the model wrote (R1 drops the ``<think>\\n`` opener from
every continued request, Qwen3 inserts an empty think block); token-exact continuation renders
the chat once and then sends ids. The server's own counters prove it: every request's prompt is
the first prompt's tokens plus the tokens generated before it (plus the probe suffix's), and
the prefix cache serves the probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    QUESTION,
    ServersAhead,
    counters,
    exact_prompts,
    rendered_length,
    suffix_length,
)

from dynasor_graph import CoTConfig, Endpoint, SCConfig, create_cot, create_sc
from dynasor_graph.eval import Problem
from dynasor_graph.eval._metrics import counter_delta as delta
from dynasor_graph.eval._traces import record_trace
from dynasor_graph.local import SERVED_MODEL_NAME, LocalServer

pytestmark = pytest.mark.vllm

TEMPLATES = Path(__file__).parent / "chat_templates"


TEMPLATE_NAMES = ["deepseek_r1_distill", "qwen3"]


@pytest.fixture(scope="module")
def template_servers() -> Iterator[ServersAhead]:
    """One server per template, both started at once."""
    servers = ServersAhead([
        lambda name=name: LocalServer(extra_args=("--chat-template",
                                                  str(TEMPLATES / f"{name}.jinja")))
        for name in TEMPLATE_NAMES])
    yield servers
    servers.close()


@pytest.fixture(scope="module", params=TEMPLATE_NAMES)
def templated(request: pytest.FixtureRequest,
              template_servers: ServersAhead) -> Iterator[Endpoint]:
    """SmolLM2 on the real local vLLM, rendering chats with a reasoning family's template."""
    server = template_servers.take(request.param_index)
    yield Endpoint(model=SERVED_MODEL_NAME, api_base=server.api_base, timeout_s=300)
    template_servers.done(request.param_index)


async def test_cot_continues_token_exactly_and_probes_hit_the_cache(
    templated: Endpoint,
) -> None:
    config = CoTConfig(chunk_size=32, max_tokens=192, certainty_threshold=64, seed=0)
    first, suffix = rendered_length(templated), suffix_length(templated)
    before = counters(templated)
    result = await create_cot(templated, config).ainvoke({"question": QUESTION})
    seen = delta(before, counters(templated))
    usage = result["usage"]
    assert result["stop_reason"] in ("budget", "finished", "answered")
    assert result["probes"]
    reason, probe = exact_prompts(result, first, suffix)
    assert (usage["reasoning_prompt_tokens"], usage["probe_prompt_tokens"]) == (reason, probe)
    assert seen["vllm:prompt_tokens"] == reason + probe  # the server's own count
    assert seen["vllm:generation_tokens"] == (usage["reasoning_tokens"]
                                              + usage["probe_completion_tokens"])
    # Every request continues the previous one's tokens, so the cache serves at least every
    # full 32-token block (the server's --block-size) of what an earlier request computed: a
    # probe shares its chunk's prompt and output (but the last sampled token), a chunk shares
    # the previous probe's prompt without the suffix.
    block = 32
    probes = [p["tokens"] for p in result["probes"]]
    shared = [first + tokens - 1 for tokens in probes] + [first + t for t in probes[:-1]]
    if result["stop_reason"] in ("finished", "answered"):
        shared.append(first + probes[-1])
    assert seen["vllm:prefix_cache_hits"] >= sum(block * (n // block) for n in shared)


async def test_sc_paths_share_one_rendered_prompt(templated: Endpoint) -> None:
    path = CoTConfig(chunk_size=24, max_tokens=72, certainty_threshold=64, seed=1)
    config = SCConfig(path=path, width=2, max_width=2, detect_at=2, token_budget=400)
    first, suffix = rendered_length(templated), suffix_length(templated)
    before = counters(templated)
    result = await create_sc(templated, config).ainvoke({"question": QUESTION})
    seen = delta(before, counters(templated))
    expected = [exact_prompts(p, first, suffix) for p in result["paths"]]
    usage = result["usage"]
    assert usage["reasoning_prompt_tokens"] == sum(r for r, _ in expected)
    assert usage["probe_prompt_tokens"] == sum(p for _, p in expected)
    assert seen["vllm:prompt_tokens"] == sum(r + p for r, p in expected)


async def test_record_probes_are_token_exact(templated: Endpoint) -> None:
    config = CoTConfig(chunk_size=32, max_tokens=96, seed=2)
    first, suffix = rendered_length(templated), suffix_length(templated)
    trace = await record_trace(templated, Problem(id="apples", question=QUESTION, gold="12"),
                               config)
    assert trace.probes
    assert [p.prompt_tokens for p in trace.probes] == [
        first + p.tokens + suffix for p in trace.probes]


async def test_detection_reads_the_template(templated: Endpoint) -> None:
    from dynasor_graph._thinking import detect

    fmt = await detect(templated)
    r1 = _is_r1(templated)
    assert (fmt.family, fmt.open, fmt.close, fmt.special) == ("think", "<think>", "</think>",
                                                              False)
    assert fmt.prompt_opens == r1  # R1-Distill's prompt opens <think>; Qwen3's model does
    assert fmt.switch.name == ("" if r1 else "enable_thinking")
    assert fmt.close_ids == tuple(httpx.post(templated.server_root + "/tokenize", timeout=30,
                                             json={"model": templated.served_name,
                                                   "prompt": "</think>",
                                                   "add_special_tokens": False}).json()["tokens"])


def _is_r1(endpoint: Endpoint) -> bool:
    body = {"model": endpoint.served_name, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": "hi"}]}
    ids = httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30).json()["tokens"]
    text = httpx.post(endpoint.server_root + "/detokenize", timeout=30, json={
        "model": endpoint.served_name, "tokens": ids}).json()["prompt"]
    return "<|im_start|>assistant" not in text  # R1-Distill has its own role tokens


def _ids(endpoint: Endpoint, body: dict[str, object]) -> list[int]:
    tokens = httpx.post(endpoint.server_root + "/tokenize", timeout=30,
                        json={"model": endpoint.served_name, **body}).json()["tokens"]
    assert isinstance(tokens, list)
    return tokens


async def test_a_judge_reads_its_verdict_after_the_closed_thinking(templated: Endpoint) -> None:
    # Under a reasoning template the judge's one token would be the thinking's first word: it
    # closes the thinking the family's way first (R1: after the prompt's own <think>; Qwen3:
    # the whole empty block), sent as ids, and reads the alternatives of the token after it.
    from dynasor_graph.rewards import JUDGE_PROMPT, JudgeReward

    question, solution = "What is 2 + 3?", "2 + 3 = 5, so the answer is \\boxed{5}."
    prompt = _ids(templated, {"add_generation_prompt": True, "messages": [
        {"role": "user", "content": JUDGE_PROMPT.format(question=question, solution=solution)}]})
    closing = _ids(templated, {"add_special_tokens": False, "prompt": (
        "" if _is_r1(templated) else "<think>") + "\n\n</think>\n\n"})
    before = counters(templated)
    reward = await JudgeReward(templated).score([{"role": "user", "content": question}],
                                                solution)
    seen = delta(before, counters(templated))
    assert (reward.prompt_tokens, reward.completion_tokens) == (len(prompt) + len(closing), 1)
    assert (seen["vllm:prompt_tokens"], seen["vllm:generation_tokens"]) == (
        len(prompt) + len(closing), 1)  # one request: the server's own count
    assert 0.0 <= reward.score <= 1.0


async def test_an_agent_probe_renders_the_step_with_the_family_s_template(
    templated: Endpoint,
) -> None:
    # An agent step with a tool call under the reasoning template: its probe is the step's
    # prompt as the template renders it (messages and tools, /tokenize), then its draft and the
    # probe suffix, one /v1/completions request; vLLM's own counters are its usage.
    import sys

    from langchain_core.messages import AIMessage, HumanMessage
    from test_context_gaps_vllm import DRAFT, ToolCallingFake, read_audit

    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    from agent import SYSTEM_PROMPT, build_agent

    from dynasor_graph._agent_probe import openai_tools
    from dynasor_graph.agents import EarlyStopConfig

    question = "How many lamps does the warehouse hold?"
    step = _ids(templated, {"add_generation_prompt": True, "tools": openai_tools([read_audit]),
                            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": question}]})
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=8, seed=0,
                               probe_temperature=0)
    probe_text = _ids(templated, {"add_special_tokens": False, "prompt": f"{DRAFT}\n\n"})
    suffix = _ids(templated, {"add_special_tokens": False, "prompt": settings.probe_suffix})
    call = {"name": "read_audit", "args": {"section": "lamps"}, "type": "tool_call", "id": "c1"}
    turns = iter([AIMessage(DRAFT, tool_calls=[call]), AIMessage("888")])
    agent = build_agent(templated, settings, model=ToolCallingFake(messages=turns),
                        tools=[read_audit])
    before = counters(templated)
    result = await agent.ainvoke({"messages": [HumanMessage(question)]})
    seen = delta(before, counters(templated))
    report = result["early_stop"]
    (probe,) = report["probes"]  # the step with the tool call; the final answer is not probed
    usage = report["usage"]
    assert probe["step"] == 1 and usage["tool_calls"] == 1
    assert usage["probe_prompt_tokens"] == len(step) + len(probe_text) + len(suffix)
    assert (seen["vllm:prompt_tokens"], seen["vllm:generation_tokens"]) == (
        usage["probe_prompt_tokens"], usage["probe_completion_tokens"])
    assert 1 <= usage["probe_completion_tokens"] <= 8
