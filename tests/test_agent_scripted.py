"""Early stop for tool agents against a scripted loopback server that returns tool calls.

The server (``ScriptedServer`` serving an ``AgentScript``) scripts the agent's turns, each a
list of tool calls or a final text, and the probes' replies; ``usage`` counts whitespace
tokens. Every test runs the real example tools and compares the early-stop report with the
server's own log.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import with_fields
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import ValidationError
from scripted_server import ScriptedServer, tokens

from dynasor_graph import Endpoint
from dynasor_graph._thinking import PROBE
from dynasor_graph.agents import DEFAULT_AGENT_PROBE_SUFFIX, EarlyStopConfig

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

from agent import SYSTEM_PROMPT, build_agent, build_graph, evaluate, search_docs

Turn = str | list[tuple[str, dict[str, Any]]]  # a final answer, or tool calls (name, args)


@dataclass
class AgentScript:
    """The agent's turns in order, the probes' replies in order, and a log of every request."""

    turns: list[Turn] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    """Per model turn, the thinking a ``--reasoning-parser`` returns in ``message.reasoning``."""

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        messages = body["messages"]
        prompt_tokens = sum(len(tokens(str(m.get("content") or ""))) + 4 for m in messages)
        last = str(messages[-1].get("content") or "")
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if body.get("continue_final_message") and last.endswith(DEFAULT_AGENT_PROBE_SUFFIX):
            kind = "probe"
            calls = sum(1 for e in self.log if e["kind"] == "probe")
            text = self.probes[min(calls, len(self.probes) - 1)] if self.probes else ""
            message["content"], completion, finish = text, len(tokens(text)), "stop"
        else:
            kind = "model"
            step = sum(1 for e in self.log if e["kind"] == "model")
            turn = self.turns[min(step, len(self.turns) - 1)]
            if step < len(self.thinking):
                message["reasoning"] = self.thinking[step]
            if isinstance(turn, str):
                message["content"], completion, finish = turn, len(tokens(turn)), "stop"
            else:
                message["tool_calls"] = [
                    {"id": f"call_{step}_{i}", "type": "function",
                     "function": {"name": name, "arguments": json.dumps(args)}}
                    for i, (name, args) in enumerate(turn)]
                completion, finish = 10 * len(turn), "tool_calls"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        self.log.append({"kind": kind, "body": body, "usage": usage})
        return 200, {"id": f"cmpl-{len(self.log)}", "object": "chat.completion",
                     "created": int(time.time()), "model": body.get("model", "scripted"),
                     "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                     "usage": usage}

    def total(self, kind: str, name: str) -> int:
        return sum(e["usage"][name] for e in self.log if e["kind"] == kind)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.log if e["kind"] == kind)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(AgentScript()) as running:
        yield running


@pytest.fixture
def endpoint(server: ScriptedServer) -> Endpoint:
    return Endpoint(model="hosted_vllm/scripted", api_base=server.api_base, timeout_s=10)


# The lamps question: look the warehouse up, multiply, multiply again, look up again, answer.
LAMPS: list[Turn] = [
    [("lookup", {"query": "Harbor Street warehouse"})],
    [("calculate", {"expression": "240 * 12"})],
    [("calculate", {"expression": "12 * 240"})],
    [("lookup", {"query": "Harbor Street lamps"})],
    "2880",
]


async def run_agent(endpoint: Endpoint, settings: EarlyStopConfig | None = None,
                    early_stop: bool = True) -> dict[str, Any]:
    agent = build_agent(endpoint, settings, early_stop=early_stop)
    return dict(await agent.ainvoke({"messages": [HumanMessage("How many lamps?")]}))


def model_tokens(script: AgentScript) -> int:
    return script.total("model", "prompt_tokens") + script.total("model", "completion_tokens")


async def test_stops_at_the_step_where_the_probes_agree(server: ScriptedServer,
                                                       endpoint: Endpoint) -> None:
    # probes after steps 1, 2, 3: a guess, then 2880 twice → Certaindex 1.0 at step 3
    server.script.turns, server.script.probes = LAMPS, ["100}", "2880}", "2880} \\]"]
    result = await run_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    report = result["early_stop"]
    assert (report["stop_reason"], report["decision"], report["certaindex"]) == (
        "certain", "exit", 1.0)
    assert [(p["step"], p["answer"]) for p in report["probes"]] == [
        (1, "100"), (2, "2880"), (3, "2880")]
    assert [e["kind"] for e in server.script.log] == ["model", "probe"] * 3
    final = result["messages"][-1]
    assert isinstance(final, AIMessage) and final.content == "2880"
    assert final.tool_calls == [] and final.response_metadata["early_stop"]["step"] == 3
    # every tool call left in the history ran: each has its ToolMessage, none dangles
    called = [c["id"] for m in result["messages"] if isinstance(m, AIMessage)
              for c in m.tool_calls]
    answered = [m.tool_call_id for m in result["messages"] if isinstance(m, ToolMessage)]
    assert called == answered == ["call_0_0", "call_1_0"]
    assert "240 crates" in result["messages"][2].content  # the real lookup tool ran
    assert result["messages"][4].content == "2880"  # the real calculator ran
    assert report["usage"] == {
        "model_calls": 3, "tool_calls": 2,
        "model_prompt_tokens": server.script.total("model", "prompt_tokens"),
        "model_completion_tokens": server.script.total("model", "completion_tokens"),
        "probe_prompt_tokens": server.script.total("probe", "prompt_tokens"),
        "probe_completion_tokens": server.script.total("probe", "completion_tokens"),
    }
    assert report["saved"] is None and report["would_stop"] is None


async def test_probe_repeats_the_step_prompt_with_the_same_tools(server: ScriptedServer,
                                                                endpoint: Endpoint) -> None:
    server.script.turns, server.script.probes = LAMPS, ["7}"]
    await run_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    log = server.script.log
    step_2, probe_2 = log[2]["body"], log[3]["body"]
    assert probe_2["messages"][:-1] == step_2["messages"]
    assert probe_2["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert probe_2["messages"][-1] == {"role": "assistant", "content": DEFAULT_AGENT_PROBE_SUFFIX}
    assert [m["role"] for m in step_2["messages"]] == ["system", "user", "assistant", "tool"]
    assert probe_2["tools"] == step_2["tools"] and probe_2["tool_choice"] == "none"
    assert probe_2["continue_final_message"] is True
    assert probe_2["add_generation_prompt"] is False
    assert probe_2["max_tokens"] == 20


async def test_dry_run_measures_what_stopping_saves_against_both_real_runs(
    server: ScriptedServer, endpoint: Endpoint
) -> None:
    probes = ["100}", "2880}", "2880}", "2880}"]
    settings = EarlyStopConfig(certainty_threshold=2)
    server.script.turns, server.script.probes = LAMPS, probes
    baseline = await run_agent(endpoint, early_stop=False)
    base_calls, base_tokens = server.script.count("model"), model_tokens(server.script)
    assert "early_stop" not in baseline and server.script.count("probe") == 0
    server.script.log.clear()
    stopped = (await run_agent(endpoint, settings))["early_stop"]["usage"]
    server.script.log.clear()
    dry = await run_agent(endpoint, with_fields(settings, dry_run=True))
    report = dry["early_stop"]
    assert dry["messages"][-1].content == "2880" and report["stop_reason"] == "finished"
    assert report["would_stop"] == {"step": 3, "stop_reason": "certain", "answer": "2880",
                                    "usage": stopped}
    assert report["usage"]["model_calls"] == base_calls == 5
    assert report["usage"]["tool_calls"] == 4
    stopped_model = stopped["model_prompt_tokens"] + stopped["model_completion_tokens"]
    stopped_probes = stopped["probe_prompt_tokens"] + stopped["probe_completion_tokens"]
    assert report["saved"] == {
        "model_calls": 5 - 3, "tool_calls": 4 - 2, "model_tokens": base_tokens - stopped_model,
        "probe_tokens": stopped_probes, "net_tokens": base_tokens - stopped_model - stopped_probes,
    }
    assert report["saved"]["model_tokens"] > 0 and stopped_probes > 0


async def test_repeated_identical_tool_call_ends_the_run(server: ScriptedServer,
                                                        endpoint: Endpoint) -> None:
    server.script.turns = [[("calculate", {"expression": "2 + 2"})],
                           [("calculate", {"expression": "2 + 2"})], "4"]
    server.script.probes = ["4}", "hmm 4}"]  # the second probe hesitates: no certainty
    result = await run_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    report = result["early_stop"]
    assert (report["stop_reason"], report["answer"], report["certaindex"]) == (
        "repeated_tool_call", "4", 0.0)
    assert result["messages"][-1].content == "4" and result["messages"][-1].tool_calls == []
    assert report["usage"]["tool_calls"] == 1  # the repeat never ran
    server.script.log.clear()
    no_repeat = EarlyStopConfig(certainty_threshold=2, stop_on_repeated_tool_calls=False)
    result = await run_agent(endpoint, no_repeat)
    assert result["early_stop"]["stop_reason"] == "finished"
    assert result["early_stop"]["usage"]["tool_calls"] == 2


async def test_min_steps_delays_the_stop(server: ScriptedServer, endpoint: Endpoint) -> None:
    server.script.turns, server.script.probes = LAMPS, ["2880}"]
    result = await run_agent(endpoint, EarlyStopConfig(certainty_threshold=1, min_steps=4))
    report = result["early_stop"]
    assert report["stop_reason"] == "certain"
    assert report["usage"]["model_calls"] == 4 and report["usage"]["tool_calls"] == 3


async def test_unsettled_answers_run_to_the_natural_end(server: ScriptedServer,
                                                       endpoint: Endpoint) -> None:
    server.script.turns, server.script.probes = LAMPS, ["1}", "2}", "wait 3}", "4}"]
    result = await run_agent(endpoint)
    report = result["early_stop"]
    assert report["stop_reason"] == "finished" and report["answer"] == "2880"
    assert len(report["probes"]) == 4 and report["usage"]["model_calls"] == 5
    assert report["certaindex"] == 0.5  # the last probe's value, before the final step


async def test_probe_events_stream_as_custom_events(server: ScriptedServer,
                                                   endpoint: Endpoint) -> None:
    server.script.turns, server.script.probes = LAMPS, ["100}", "2880}", "2880}"]
    agent = build_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    events = [chunk async for mode, chunk in agent.astream(
        {"messages": [HumanMessage("q")]}, stream_mode=["custom", "updates"]) if mode == "custom"]
    assert [(e["step"], e["answer"], e["certaindex"], e["decision"]) for e in events] == [
        (1, "100", 0.5, "continue"), (2, "2880", 0.5, "continue"), (3, "2880", 1.0, "exit")]


async def test_a_second_turn_on_the_thread_starts_a_fresh_report(
    server: ScriptedServer, endpoint: Endpoint
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    server.script.turns, server.script.probes = LAMPS, ["2880}"]
    agent = build_agent(endpoint, EarlyStopConfig(certainty_threshold=2),
                        checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    first = await agent.ainvoke({"messages": [HumanMessage("q1")]}, thread)
    assert first["early_stop"]["usage"]["model_calls"] == 2
    server.script.log.clear()
    second = await agent.ainvoke({"messages": [HumanMessage("q2")]}, thread)
    assert second["early_stop"]["usage"]["model_calls"] == 2
    assert [p["step"] for p in second["early_stop"]["probes"]] == [1, 2]


async def test_hand_built_graph_stops_the_same_way(server: ScriptedServer,
                                                  endpoint: Endpoint) -> None:
    server.script.turns, server.script.probes = LAMPS, ["100}", "2880}", "2880}"]
    graph = build_graph(endpoint, EarlyStopConfig(certainty_threshold=2))
    result = await graph.ainvoke({"messages": [HumanMessage("How many lamps?")]})
    report = result["early_stop"]
    assert (report["stop_reason"], report["answer"]) == ("certain", "2880")
    assert result["messages"][-1].content == "2880" and not result["messages"][-1].tool_calls
    assert report["usage"]["model_calls"] == 3 and report["usage"]["tool_calls"] == 2
    assert report["usage"]["probe_prompt_tokens"] == server.script.total("probe", "prompt_tokens")
    log = server.script.log
    assert log[3]["body"]["messages"][:-1] == log[2]["body"]["messages"]
    drawing = graph.get_graph().draw_mermaid(with_styles=False)
    assert "early_stop -. &nbsp;continue&nbsp; .-> tools;" in drawing
    assert "early_stop -. &nbsp;exit&nbsp; .-> __end__;" in drawing


@pytest.mark.parametrize(
    "values",
    [{"certainty_threshold": 0}, {"min_steps": 0}, {"probe_suffix": ""},
     {"probe_max_tokens": 0}, {"unknown": 1}],
)
def test_settings_are_validated(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EarlyStopConfig.model_validate(values)


@pytest.mark.parametrize(
    ("expression", "value"),
    [("240 * 12", 2880), ("(18 * 35) * 40", 25200), ("5,400 / 6", 900), ("7 / 2", 3.5),
     ("-2 ** 3", -8), ("2^10", 1024), ("17 // 5 + 17 % 5", 5), ("1_000 - 1", 999)],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('true')", "open('x')", "x + 1", "[1, 2]", "2 ** 1000",
     "10 ** 64 * 10 ** 64", "1 / 0", "True + 1", "'a' * 3", "(-8) ** 0.5", "1e308 * 10",
     "", "1 +" , "9" * 300, "lambda: 1"],
)
def test_calculator_refuses_everything_else(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate(expression)


def test_lookup_finds_the_document() -> None:
    assert "240 crates" in search_docs("Harbor Street warehouse lamps")
    assert "5,400 books" in search_docs("how many books does the River library own")
    assert search_docs("zzz qqq").startswith("no document matches")


def test_public_names_exist() -> None:
    import dynasor_graph.agents as agents

    assert all(hasattr(agents, name) for name in agents.__all__)
    assert len(set(agents.__all__)) == len(agents.__all__)


# --- reasoning models: the step's thinking goes into the probe -------------------------------

THINKING = ["The warehouse holds crates of lamps; look it up first.",
            "240 crates of 12 lamps: 2880, but check the multiplication."]


async def test_text_mode_probe_carries_the_step_thinking_before_the_suffix(
    server: ScriptedServer, endpoint: Endpoint
) -> None:
    server.script.turns, server.script.probes = LAMPS, ["2880}"]
    server.script.thinking = THINKING
    await run_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    log = server.script.log
    assert [e["kind"] for e in log[:4]] == ["model", "probe", "model", "probe"]
    for step, probe in ((0, 1), (1, 3)):
        body = log[probe]["body"]
        assert body["messages"][:-1] == log[step * 2]["body"]["messages"]
        assert body["messages"][-1] == {
            "role": "assistant", "content": f"{THINKING[step]}\n\n{DEFAULT_AGENT_PROBE_SUFFIX}"}


@pytest.fixture(params=["qwq", "qwen3"], ids=["prompt-opens-thinking", "model-opens-thinking"])
def token_server(request: pytest.FixtureRequest) -> Iterator[tuple[Endpoint, ScriptedServer]]:
    """The scripted server's token route for an agent: chat completions script the steps
    (``AgentScript``), ``/tokenize`` renders messages and tools through a real template (QwQ's
    generation prompt opens the thinking; Qwen3's model writes it, and its ``enable_thinking``
    switch shows detection the markers), and ``/v1/completions`` answers the probes."""
    with ScriptedServer(AgentScript(), chat_template=request.param) as server:
        yield Endpoint(model="hosted_vllm/scripted", timeout_s=10, continuation="tokens",
                       api_base=server.api_base), server


async def test_token_mode_probe_extends_the_step_rendered_prompt_inside_the_thinking(
    token_server: tuple[Endpoint, ScriptedServer],
) -> None:
    endpoint, state = token_server
    state.script.turns, state.script.probes = LAMPS, ["2880}"]
    state.script.thinking = THINKING
    await run_agent(endpoint, EarlyStopConfig(certainty_threshold=2))
    steps = [r["body"] for r in state.requests_to("/chat/completions")]
    probes = [r["body"] for r in state.requests_to("/v1/completions")]
    assert len(probes) == 2 and len(steps) == 2
    for step, probe, thinking in zip(steps, probes, THINKING, strict=True):
        # the step's own prompt (messages and tools) as the template renders it, then the
        # thinking (opened by the probe when the model, not the prompt, opens it), the suffix
        opened = "" if state.rendered(step).endswith("<think>\n") else "<think>\n"
        expected = (state.vocab.encode(state.rendered(step))
                    + state.vocab.encode(f"{opened}{thinking}\n\n")
                    + state.vocab.encode(DEFAULT_AGENT_PROBE_SUFFIX))
        assert probe["prompt"] == [expected]
        # the probe stays inside this step's thinking (Qwen3's render of a later step holds
        # the earlier steps' thinking, closed: that is the template's, not the probe's)
        tail = probe["prompt"][0][len(state.vocab.encode(state.rendered(step))):]
        assert "</think>" not in state.vocab.decode(tail)
    renders = [r["body"] for r in state.requests_to("/tokenize")  # not the format's detection
               if "messages" in r["body"] and r["body"]["messages"][-1] != PROBE[-1]]
    assert [(r["messages"], r["tools"]) for r in renders] == [
        (s["messages"], s["tools"]) for s in steps]
