"""Dynasor-CoT against the scripted loopback server: exact stops, answers and accounting."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import assert_usage_matches, authorizations
from scripted_server import ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot


async def run(endpoint: Endpoint, config: CoTConfig, **inputs: Any) -> dict[str, Any]:
    graph = create_cot(endpoint, config)
    return dict(await graph.ainvoke(inputs or {"question": "What is 3 * 4?"}))


async def test_exits_at_the_first_chunk_where_threshold_probes_agree(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    # probes 1..6: 12, 12, hesitant, 12, 12, 12 → the window of 3 agrees first at probe 6
    scripted.script.probes = ["12} \\]", "12} \\]", "wait, 12} \\]", "12} \\]", "12} \\]", "12}"]
    result = await run(route_endpoint, CoTConfig(chunk_size=10, max_tokens=1000))
    assert result["stop_reason"] == "certain"
    assert result["decision"] == "exit"
    assert result["certaindex"] == 1.0
    assert result["answer"] == "12"
    assert [p["tokens"] for p in result["probes"]] == [10, 20, 30, 40, 50, 60]
    assert [p["confident"] for p in result["probes"]] == [True, True, False, True, True, True]
    assert [e["kind"] for e in scripted.script.log] == ["reason", "probe"] * 6
    assert result["usage"]["reasoning_tokens"] == 60
    assert result["usage"]["probe_completion_tokens"] == 2 + 2 + 3 + 2 + 2 + 1
    assert_usage_matches(result, scripted.script)
    reasoning = "".join(f"r{i} " for i in range(60))
    # the scripted template has no thinking format (detected through /tokenize): plain
    # reasoning, so the early exit closes no thinking block, and the result says why
    assert result["thinking_format"].startswith("plain reasoning")
    assert result["response"] == (
        reasoning + "\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"
    )


async def test_probe_shares_the_reasoning_prefix_byte_for_byte(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["3}"]
    config = CoTConfig(chunk_size=5, max_tokens=100, certainty_threshold=2)
    await run(scripted_endpoint, config)
    log = scripted.script.log
    reason_2, probe_2 = log[2]["body"], log[3]["body"]
    assert probe_2["messages"][:-1] == reason_2["messages"][:-1]
    assert probe_2["messages"][-1]["content"] == (
        reason_2["messages"][-1]["content"] + log[2]["text"] + config.probe_suffix
    )
    assert probe_2["continue_final_message"] is True
    assert probe_2["add_generation_prompt"] is False
    assert (probe_2["max_tokens"], probe_2["temperature"], probe_2["top_p"]) == (20, 0.6, 0.95)
    first = log[0]["body"]
    assert first["add_generation_prompt"] is True and first["continue_final_message"] is False


async def test_threshold_changes_the_stopping_chunk(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["7}"]
    for threshold, chunks in ((1, 1), (2, 2), (5, 5)):
        scripted.script.log.clear()
        scripted.script._probe_calls = 0
        result = await run(scripted_endpoint,
                           CoTConfig(chunk_size=8, certainty_threshold=threshold, max_tokens=999))
        assert len(result["probes"]) == chunks
        assert result["usage"]["reasoning_tokens"] == 8 * chunks


async def test_budget_is_never_exceeded(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["1}", "2}", "3}", "4}", "5}"]  # never settles
    result = await run(route_endpoint, CoTConfig(chunk_size=16, max_tokens=40))
    assert result["stop_reason"] == "budget"
    assert result["usage"]["reasoning_tokens"] == 40
    assert [e["body"]["max_tokens"] for e in scripted.script.log if e["kind"] == "reason"] == [
        16, 16, 8]
    assert result["answer"] == "3"  # the last probe's answer
    assert result["certaindex"] == pytest.approx(1 / 3)
    assert_usage_matches(result, scripted.script)


async def test_natural_finish_stops_without_probing(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.reasoning = ["3 ", "times ", "4 ", "is ", "\\boxed{12}."]
    scripted.script.probes = ["9}"]
    result = await run(route_endpoint, CoTConfig(chunk_size=3, max_tokens=100))
    assert result["stop_reason"] == "finished"
    assert result["answer"] == "12"
    assert result["response"] == "3 times 4 is \\boxed{12}."
    assert [e["kind"] for e in scripted.script.log] == ["reason", "probe", "reason"]
    assert result["usage"]["reasoning_tokens"] == 5
    assert_usage_matches(result, scripted.script)


async def test_probe_events_stream_as_custom_events(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["1}", "hmm 2}", "2}", "2}"]
    graph = create_cot(scripted_endpoint, CoTConfig(chunk_size=4, certainty_threshold=2))
    custom, updated = [], []
    async for mode, chunk in graph.astream({"question": "q"}, stream_mode=["updates", "custom"]):
        (custom if mode == "custom" else updated).append(chunk)
    assert [(e["tokens"], e["answer"], e["confident"], e["certaindex"], e["decision"])
            for e in custom] == [
        (4, "1", True, 0.5, "continue"),
        (8, "hmm 2", False, 0.0, "continue"),
        (12, "2", True, 0.5, "continue"),
        (16, "2", True, 1.0, "exit"),
    ]
    assert [next(iter(u)) for u in updated] == ["prepare"] + ["reason", "probe"] * 4 + ["finish"]


@pytest.mark.parametrize(
    "junk",
    ["", "no brace here", "{{{{", "\x00\xff\x01binary", "}" * 50, "x" * 5000],
)
async def test_malformed_probe_output_is_an_empty_answer(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, junk: str
) -> None:
    scripted.script.probes = [junk]
    result = await run(scripted_endpoint, CoTConfig(chunk_size=10, max_tokens=30))
    assert result["stop_reason"] == "budget"
    assert {p["answer"] for p in result["probes"]} == {""}
    assert result["certaindex"] == 0.0
    assert result["answer"] == ""


async def test_chat_messages_input_and_system_prompt(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    scripted.script.probes = ["5}"]
    messages = [HumanMessage("hi"), AIMessage("hello"), HumanMessage("2 + 3?")]
    config = CoTConfig(chunk_size=4, certainty_threshold=1, system_prompt="Be brief.")
    result = await run(scripted_endpoint, config, messages=messages)
    assert result["answer"] == "5"
    sent = scripted.script.log[0]["body"]["messages"]
    assert sent == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "2 + 3?"}]


@pytest.mark.parametrize("inputs", [{"question": ""}, {"question": "   "}, {"messages": []}, {}])
async def test_empty_question_is_rejected(scripted_endpoint: Endpoint,
                                          inputs: dict[str, Any]) -> None:
    graph = create_cot(scripted_endpoint)
    with pytest.raises(ValueError, match="question must not be empty"):
        await graph.ainvoke(inputs)


async def test_transient_server_errors_are_retried(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["4}"]
    scripted.script.fail_next = [503, 500]
    result = await run(route_endpoint, CoTConfig(chunk_size=4, certainty_threshold=1))
    assert result["answer"] == "4"
    assert scripted.script.fail_next == []
    assert_usage_matches(result, scripted.script)  # failed attempts produced no tokens


async def test_api_key_stays_secret_and_arrives_on_every_request(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    secret = "sk-very-secret"
    endpoint = Endpoint.model_validate({**route_endpoint.model_dump(), "api_key": secret})
    assert secret not in repr(endpoint)
    assert secret not in str(endpoint.model_dump())
    scripted.script.probes = ["4}"]
    graph = create_cot(endpoint, CoTConfig(chunk_size=4, certainty_threshold=1),
                       checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "k"}}
    result = await graph.ainvoke({"question": "q"}, thread)
    assert result["answer"] == "4"
    # it arrives where it must: every request (/tokenize too on the token route) ...
    assert scripted.requests and authorizations(scripted.requests) == {f"Bearer {secret}"}
    if endpoint.continuation == "tokens":
        assert scripted.requests_to("/tokenize") and scripted.requests_to("/v1/completions")
    # ... and nowhere else: not in the output, the checkpointed state or its history
    assert secret not in repr(result)
    assert secret not in repr(await graph.aget_state(thread))
    assert all([secret not in repr(s) async for s in graph.aget_state_history(thread)])


async def test_checkpointed_state_shows_certaindex_and_decision(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    scripted.script.probes = ["8}"]
    graph = create_cot(scripted_endpoint, CoTConfig(chunk_size=4, certainty_threshold=2),
                               checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t1"}}
    await graph.ainvoke({"question": "q"}, thread)
    state = await graph.aget_state(thread)
    assert state.values["certaindex"] == 1.0
    assert state.values["decision"] == "exit"
    assert state.values["reasoning"] == "r0 r1 r2 r3 r4 r5 r6 r7 "
    assert "api_key" not in str(state.values) and "EMPTY" not in str(state.values)
    history = [s.values.get("certaindex") async for s in graph.aget_state_history(thread)]
    assert 0.5 in history  # the first probe's value, before the second agreed


async def test_solve_helper(scripted: ScriptedServer, scripted_endpoint: Endpoint) -> None:
    from dynasor_graph import solve

    scripted.script.probes = ["6}"]
    result = await solve("q", scripted_endpoint, CoTConfig(chunk_size=3, certainty_threshold=1))
    assert (result["answer"], result["stop_reason"]) == ("6", "certain")
