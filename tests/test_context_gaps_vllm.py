"""The context window in ``record``, the LLM judge and the agent probe, on the real local vLLM
(SmolLM2, ``--max-model-len 2048``), where each used to meet the server's 400 (or, for
``record``, to write the window's end as a spent budget):

- ``record`` of a question that leaves ~80 reasoning tokens writes stop reason ``context``;
- a judge prompt whose solution would pass the window is cut to fit, as tight as it goes;
- an agent whose second step's probe cannot fit stops with ``context`` and the first probe's
  answer, instead of sending a probe vLLM refuses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from test_context_vllm import FILLER, TASK, question_for, window

from dynasor_graph import CoTConfig, Endpoint, ServerRefused
from dynasor_graph._agent_probe import openai_messages, openai_tools, probe_prefix, probe_tokens
from dynasor_graph._text_route import complete
from dynasor_graph._token_route import render_chat, tokenize
from dynasor_graph.agents import EarlyStopConfig
from dynasor_graph.eval import Problem, record_traces
from dynasor_graph.rewards import ELISION, JUDGE_PROMPT, JudgeReward

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

from agent import SYSTEM_PROMPT, build_agent

pytestmark = pytest.mark.vllm


async def test_record_reaching_the_window_writes_a_context_trace(
    local_vllm: Endpoint, tmp_path: Path
) -> None:
    question, room = question_for(local_vllm)
    config = CoTConfig(chunk_size=32, max_tokens=1024, seed=0, temperature=0,
                       probe_temperature=0)
    (trace,) = await record_traces(local_vllm, [Problem("w", question, "888")], config,
                                   tmp_path / "traces.jsonl")
    assert trace.stop_reason == "context"
    assert trace.reasoning_tokens == room  # to the window exactly, not to --max-tokens
    assert [p.tokens for p in trace.probes] == [*range(32, room, 32), room]
    assert trace.answer == trace.probes[-1].answer  # the last probe answers


def judge_length(endpoint: Endpoint, solution: str) -> int:
    content = JUDGE_PROMPT.format(question=TASK, solution=solution)
    body = {"model": endpoint.served_name, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": content}]}
    return len(httpx.post(endpoint.server_root + "/tokenize", json=body, timeout=30)
               .json()["tokens"])


async def test_a_judge_prompt_past_the_window_is_cut_to_fit(local_vllm: Endpoint) -> None:
    limit = window(local_vllm)
    solution = FILLER * 200 + "So 37 * 24 = 888, and the answer is \\boxed{888}."
    whole = JUDGE_PROMPT.format(question=TASK, solution=solution)
    assert judge_length(local_vllm, solution) >= limit
    with pytest.raises(ServerRefused, match="maximum context length"):  # what it used to be
        await complete(local_vllm, [{"role": "user", "content": whole}], "", max_tokens=1,
                       temperature=0.0, top_p=1.0)
    judge = JudgeReward(local_vllm)
    chat = [{"role": "user", "content": TASK}]
    reward = await judge.score(chat, solution)
    assert 0.0 <= reward.score <= 1.0 and reward.completion_tokens == 1
    # vLLM's count of the prompt sent: within the window with its verdict, and tight
    assert limit - 4 <= reward.prompt_tokens + 1 <= limit
    short = await judge.score(chat, "37 * 24 = 888")  # one that fits is sent whole
    assert short.prompt_tokens == judge_length(local_vllm, "37 * 24 = 888")
    assert judge_length(local_vllm, ELISION) < limit


REPORT = "The audit lists every shelf and crate in the building. " * 40


@tool
def read_audit(section: str) -> str:
    """Read a section of the warehouse audit."""
    return REPORT


class ToolCallingFake(GenericFakeChatModel):
    """Replays scripted AI messages (tool calls included); binding tools changes nothing."""

    def bind_tools(self, tools: object, **kwargs: object) -> ToolCallingFake:
        return self


DRAFT = "The answer is 888."  # SmolLM2 probes it as \\boxed{888}
PROBE = 8


async def probe_length(endpoint: Endpoint, question: str) -> int:
    """The first step's probe request, prompt and ``probe_max_tokens``, as the middleware
    sizes it (the step's rendered prompt and tools, its draft, the suffix)."""
    chat = openai_messages([SystemMessage(SYSTEM_PROMPT), HumanMessage(question)])
    ids = await render_chat(endpoint, chat, openai_tools([read_audit]))
    assert ids is not None
    draft = await probe_tokens(endpoint, ids, "", probe_prefix("", DRAFT))
    suffix = await tokenize(endpoint, EarlyStopConfig().probe_suffix)
    return len(ids) + len(draft) + len(suffix) + PROBE


async def test_an_agent_probe_past_the_window_ends_the_run_with_the_settled_answer(
    local_vllm: Endpoint,
) -> None:
    limit = window(local_vllm)
    low, high = 0, 200  # filler sentences: the most with which the first probe still fits
    while low < high:
        middle = (low + high + 1) // 2
        if await probe_length(local_vllm, FILLER * middle + TASK) <= limit:
            low = middle
        else:
            high = middle - 1
    question = FILLER * low + TASK
    first = await probe_length(local_vllm, question)
    call = {"name": "read_audit", "args": {"section": "lamps"}, "type": "tool_call"}
    turns = iter([AIMessage(DRAFT, tool_calls=[{**call, "id": "c1"}]),
                  AIMessage(DRAFT, tool_calls=[{**call, "id": "c2",
                                                "args": {"section": "crates"}}]),
                  AIMessage("888")])
    settings = EarlyStopConfig(certainty_threshold=2, probe_max_tokens=PROBE, seed=0,
                               probe_temperature=0)
    agent = build_agent(local_vllm, settings, model=ToolCallingFake(messages=turns),
                        tools=[read_audit])
    result = await agent.ainvoke({"messages": [HumanMessage(question)]})
    report = result["early_stop"]
    (probe,) = report["probes"]  # step 1's; step 2's (with the audit: ~400 more) not sent
    assert probe["step"] == 1 and probe["confident"] and probe["answer"]
    assert report["usage"]["probe_prompt_tokens"] == first - PROBE  # vLLM's count
    assert (report["stop_reason"], report["answer"]) == ("context", probe["answer"])
    final = result["messages"][-1]
    assert isinstance(final, AIMessage) and final.content == probe["answer"]
    assert not final.tool_calls and report["usage"]["tool_calls"] == 1
