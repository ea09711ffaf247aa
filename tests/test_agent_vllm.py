"""Early stop for tool agents against the real local vLLM (SmolLM2-135M-Instruct on the CPU).

The local server has no tool-call parser (and the model is too small to call tools), so the
real agent runs with ``tool_choice="none"`` and answers directly; the probe path is exercised
by a scripted chat model that asks for the real tools while every probe goes to the real vLLM.
Both check the report's token counts against the server's own ``/metrics`` counters.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import counters
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from dynasor_graph import Endpoint
from dynasor_graph.agents import EarlyStopConfig

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

from agent import build_agent, chat_model

pytestmark = pytest.mark.vllm

QUESTION = "How many lamps are in the Harbor Street warehouse?"


class ToolCallingFake(GenericFakeChatModel):
    """Replays scripted AI messages (tool calls included); binding tools changes nothing."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self


async def test_agent_run_completes_with_the_middleware_and_counts_tokens(
    local_vllm: Endpoint,
) -> None:
    agent = build_agent(local_vllm, EarlyStopConfig(seed=0), tool_choice="none",
                        model=chat_model(local_vllm, max_tokens=12))
    before = counters(local_vllm)
    result = await agent.ainvoke({"messages": [HumanMessage(QUESTION)]})
    after = counters(local_vllm)
    report = result["early_stop"]
    final = result["messages"][-1]
    assert isinstance(final, AIMessage) and final.text and not final.tool_calls
    assert (report["stop_reason"], report["answer"]) == ("finished", final.text)
    usage = report["usage"]
    assert (usage["model_calls"], usage["tool_calls"]) == (1, 0)
    assert 0 < usage["model_completion_tokens"] <= 12
    assert after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"] == (
        usage["model_prompt_tokens"])
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == (
        usage["model_completion_tokens"])


async def test_probes_with_tool_history_are_served_and_counted(local_vllm: Endpoint) -> None:
    turns = iter([
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"query": "Harbor Street"},
                                   "id": "c1", "type": "tool_call"}]),
        AIMessage("", tool_calls=[{"name": "calculate", "args": {"expression": "240 * 12"},
                                   "id": "c2", "type": "tool_call"}]),
        AIMessage("2880"),
    ])
    settings = EarlyStopConfig(certainty_threshold=2, min_steps=1, probe_max_tokens=8, seed=0)
    agent = build_agent(local_vllm, settings, model=ToolCallingFake(messages=turns))
    before = counters(local_vllm)
    result = await agent.ainvoke({"messages": [HumanMessage(QUESTION)]})
    after = counters(local_vllm)
    report = result["early_stop"]
    assert report["stop_reason"] in {"certain", "repeated_tool_call", "finished"}
    assert not result["messages"][-1].tool_calls
    assert 1 <= len(report["probes"]) <= 2
    assert isinstance(result["messages"][2], ToolMessage)
    assert "240 crates" in result["messages"][2].content  # the real lookup ran
    usage = report["usage"]
    assert usage["probe_prompt_tokens"] > 0
    assert 0 < usage["probe_completion_tokens"] <= 8 * len(report["probes"])
    assert after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"] == (
        usage["probe_prompt_tokens"])
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == (
        usage["probe_completion_tokens"])
