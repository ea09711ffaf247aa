"""Reasoning families on the real local vLLM: detection, token-exact prompts, the closing.

One vLLM per verbatim chat template (``--chat-template``, files in ``tests/chat_templates``; started
two at a time, :class:`conftest.ServersAhead`), each serving SmolLM2 (a plumbing stand-in, not a
reasoning model). ``<think>`` families run on the stock model, where the markers are plain text;
Mistral's ``[THINK]`` and gpt-oss's harmony run on the special-token variant
(:func:`~dynasor_graph.local._variants.ensure_special_variant`), whose tokenizer holds them as
*special* tokens, so vLLM drops them from returned text unless a request asks otherwise. Every test
is one short CoT run (budget 32 tokens): the server's own prompt-token counter proves the prompts
token-exact under each template and switch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServersAhead
from test_thinking_vllm import counters, delta, suffix_length

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._answers import final_answer
from dynasor_graph._thinking import detect
from dynasor_graph.local import SERVED_MODEL_NAME, LocalServer
from dynasor_graph.local._variants import ensure_special_variant, think_token_ids

pytestmark = pytest.mark.vllm

TEMPLATES = Path(__file__).parent / "chat_templates"
QUESTION = "What is 2 + 3?"


@dataclass(frozen=True)
class Family:
    """A template, how it is served, and what detection must find."""

    template: str
    family: str
    open: str
    close: str
    prompt_opens: bool
    thinking: bool | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()  # the switch as the template reads it
    special: bool = False  # served on the special-token variant
    tokenizer_info: bool = False  # vLLM --enable-tokenizer-info-endpoint


FAMILIES = [
    Family("qwq", "think", "<think>", "</think>", True),
    Family("deepseek_v3_1", "think", "<think>", "</think>", True, thinking=True,
           kwargs=(("thinking", True),)),
    Family("nemotron_nano_v2", "think", "<think>", "</think>", True),
    Family("granite_3_3", "granite", "<think>", "</think>", False, thinking=True,
           kwargs=(("thinking", True),)),
    Family("ministral_3_reasoning", "mistral", "[THINK]", "[/THINK]", False, special=True,
           tokenizer_info=True),
    Family("gpt_oss", "harmony", "<|channel|>analysis<|message|>", "<|end|>", False,
           special=True),
]


@pytest.fixture(scope="module")
def family_servers() -> Iterator[ServersAhead]:
    """One server per family, in the order of ``FAMILIES``, started two at a time."""
    special = ensure_special_variant() if any(f.special for f in FAMILIES) else None

    def factory(family: Family) -> Callable[[], LocalServer]:
        flags = ("--chat-template", str(TEMPLATES / f"{family.template}.jinja"),
                 *(("--enable-tokenizer-info-endpoint",) if family.tokenizer_info else ()))
        return lambda: LocalServer(model_dir=special if family.special else None,
                                   extra_args=flags)

    servers = ServersAhead([factory(family) for family in FAMILIES])
    yield servers
    servers.close()


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.template for f in FAMILIES])
def served(request: pytest.FixtureRequest,
           family_servers: ServersAhead) -> Iterator[tuple[Family, Endpoint]]:
    family: Family = request.param
    server = family_servers.take(request.param_index)
    yield family, Endpoint(model=SERVED_MODEL_NAME, api_base=server.api_base,
                           timeout_s=300, thinking=family.thinking)
    family_servers.done(request.param_index)


def rendered_length(endpoint: Endpoint, kwargs: dict[str, Any]) -> int:
    body: dict[str, Any] = {"model": endpoint.served_name, "add_generation_prompt": True,
                            "messages": [{"role": "user", "content": QUESTION}]}
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    return len(httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30)
               .json()["tokens"])


def prompts(result: dict[str, Any], first: int, suffix: int, chunk: int) -> tuple[int, int]:
    """The prompt tokens a token-exact run sends: chunk k starts after k full chunks (every
    chunk but the last is full), probe j after its reasoning, plus the suffix. Unlike
    ``exact_prompts``, chunks after the model closed its thinking are not probed."""
    chunks = -(-result["usage"]["reasoning_tokens"] // chunk)
    reason = sum(first + k * chunk for k in range(chunks))
    return reason, sum(first + p["tokens"] + suffix for p in result["probes"])


async def test_detected_token_exact_and_closed_the_family_s_way(
    served: tuple[Family, Endpoint],
) -> None:
    family, endpoint = served
    fmt = await detect(endpoint)
    assert (fmt.family, fmt.open, fmt.close, fmt.prompt_opens, fmt.special) == (
        family.family, family.open, family.close, family.prompt_opens, family.special)
    if family.special:  # one id each, the variant's own
        ids = think_token_ids(ensure_special_variant())
        assert fmt.close_ids == (ids[family.close],)
    config = CoTConfig(chunk_size=16, max_tokens=32, certainty_threshold=64, seed=0)
    first, suffix = rendered_length(endpoint, dict(family.kwargs)), suffix_length(endpoint)
    before = counters(endpoint)
    result = await create_cot(endpoint, config).ainvoke({"question": QUESTION})
    seen = delta(before, counters(endpoint))
    usage = result["usage"]
    reason, probe = prompts(result, first, suffix, config.chunk_size)
    assert (usage["reasoning_prompt_tokens"], usage["probe_prompt_tokens"]) == (reason, probe)
    assert seen["vllm:prompt_tokens"] == reason + probe  # the server's own count
    assert seen["vllm:generation_tokens"] == (usage["reasoning_tokens"]
                                              + usage["probe_completion_tokens"])
    assert result["thinking_format"] == fmt.describe()
    response, answer = result["response"], result["answer"]
    if result["stop_reason"] == "budget" and answer:
        header = "**Final Answer**\n\n\\[ \\boxed{"
        closing = response[:response.rindex(header)]
        if family.prompt_opens:  # R1 style: the prompt opened it, the exit closes it
            assert closing.endswith(f"\n\n{family.close}\n\n")
        elif family.open not in closing:  # the model never opened it: nothing to close
            assert closing.endswith("\n\n") and family.close not in closing
        assert fmt.answer(response).startswith(header) or family.open not in closing


SEEDS = {"ministral_3_reasoning": 2, "gpt_oss": 0}
"""Per special family, a seed under which the variant closes its thinking within the budget
(its close marker's row copies the end-of-turn token's: found on this variant)."""


async def test_special_markers_are_dropped_by_vllm_and_found_on_ids(
    served: tuple[Family, Endpoint],
) -> None:
    family, endpoint = served
    if not family.special:
        pytest.skip("this family's markers are text")
    fmt = await detect(endpoint)
    (close_id,) = fmt.close_ids
    # vLLM really drops the special marker from the text unless asked to keep it
    prompt = httpx.post(endpoint.server_root + "/tokenize", timeout=30, json={
        "model": endpoint.served_name, "add_generation_prompt": True,
        "messages": [{"role": "user", "content": QUESTION}]}).json()["tokens"]
    texts: dict[bool, str] = {}
    for seed in range(8):
        replies = {keep: httpx.post(endpoint.api_base + "/completions", timeout=300, json={
            "model": endpoint.served_name, "prompt": prompt, "max_tokens": 48, "seed": seed,
            "temperature": 0.6, "return_token_ids": True,
            **({"skip_special_tokens": False} if keep else {})}).json()["choices"][0]
            for keep in (False, True)}
        if close_id in replies[True]["token_ids"]:
            assert replies[False]["token_ids"] == replies[True]["token_ids"]
            texts = {keep: reply["text"] for keep, reply in replies.items()}
            break
    assert texts, "the variant never sampled its close marker in 8 seeds"
    assert family.close in texts[True] and family.close not in texts[False]
    seed = SEEDS.get(family.template)
    if seed is None:
        return
    # the program finds the close on ids, keeps it in the text and reads the answer after it
    config = CoTConfig(chunk_size=16, max_tokens=64, certainty_threshold=64, seed=seed)
    result = await create_cot(endpoint, config).ainvoke({"question": QUESTION})
    assert result["stop_reason"] == "answered"
    assert family.close in result["response"]
    assert result["usage"]["answer_tokens"] > 0
    assert result["answer"] == final_answer(fmt.answer(result["response"]))
