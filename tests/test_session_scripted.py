"""One session key per program, thread or not: every request of a program carries the same
``X-Session-ID`` (what vllm-router's ``consistent_hash`` keeps on one replica), read from the
scripted servers' own record of each request's headers.

Without a thread the key is the program's ``session_id`` (made once, in ``prepare``); with a
thread it is the thread's id.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    EndpointUnreachable,
    MCTSConfig,
    RebaseConfig,
    SCConfig,
    create_cot,
    create_mcts,
    create_rebase,
    create_sc,
)
from dynasor_graph._thinking import PROBE
from dynasor_graph.rewards import JudgeReward

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from agent import build_agent
from parent_graph import build_homework_graph

CONFIG = CoTConfig(chunk_size=5, max_tokens=100, certainty_threshold=2)
KEY = re.compile(r"[0-9a-f]{32}")


def keys(server: ScriptedServer, since: int = 0) -> list[str | None]:
    """The ``X-Session-ID`` of every POST the server received (from ``since`` on)."""
    return [r["headers"].get("x-session-id") for r in server.requests[since:]]


def generations(server: ScriptedServer, since: int = 0) -> int:
    return sum(1 for r in server.requests[since:] if r["path"].endswith("completions"))


async def test_a_cot_program_without_a_thread_has_one_key_and_two_programs_two(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["12}"]
    graph = create_cot(route_endpoint, CONFIG)
    first = await graph.ainvoke({"question": "What is 3 * 4?"})
    sent = len(scripted.requests)
    second = await graph.ainvoke({"question": "What is 3 * 4?"})
    assert first["stop_reason"] == second["stop_reason"] == "certain"
    # every request of a run (chunks, probes, and on the token route /tokenize too)
    assert generations(scripted, 0) - generations(scripted, sent) == 4
    one, two = set(keys(scripted)[:sent]), set(keys(scripted, sent))
    assert len(one) == len(two) == 1
    (a,), (b,) = one, two
    assert a is not None and b is not None and KEY.fullmatch(a) and KEY.fullmatch(b)
    assert a != b


async def test_a_thread_id_is_the_key_when_the_run_has_one(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["12}"]
    await create_cot(route_endpoint, CONFIG).ainvoke(
        {"question": "What is 3 * 4?"}, {"configurable": {"thread_id": "homework-7"}})
    assert generations(scripted) == 4 and set(keys(scripted)) == {"homework-7"}


async def test_sc_paths_share_their_programs_key(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["7}"]
    graph = create_sc(route_endpoint, SCConfig(path=CONFIG, width=3, max_width=3))
    first = await graph.ainvoke({"question": "q"})
    sent = len(scripted.requests)
    await graph.ainvoke({"question": "q"})
    assert len(first["paths"]) == 3 and generations(scripted, 0) - generations(
        scripted, sent) == 3 * 4  # three paths, two chunks and two probes each
    one, two = set(keys(scripted)[:sent]), set(keys(scripted, sent))
    assert len(one) == len(two) == 1 and None not in one | two and one != two


@pytest.mark.parametrize("algorithm", ["mcts", "rebase"])
async def test_tree_steps_and_judge_rewards_share_the_programs_key(
    scripted: ScriptedServer, route_endpoint: Endpoint, algorithm: str
) -> None:
    # The judge (same server, text route) answers with reasoning text: a 0.5 reward, so the
    # search runs to its budget over several rounds of steps and rewards.
    judge = JudgeReward(route_endpoint)
    graph = (create_mcts(route_endpoint, judge, MCTSConfig(
        width=2, max_width=2, chunk_size=3, max_depth=8, token_budget=12, seed=1))
             if algorithm == "mcts" else create_rebase(route_endpoint, judge, RebaseConfig(
                 width=2, max_width=2, chunk_size=3, max_depth=8, token_budget=12, seed=1)))
    first = await graph.ainvoke({"question": "q"})
    sent = len(scripted.requests)
    await graph.ainvoke({"question": "q"})
    steps = len(first["nodes"]) - 1
    assert first["stop_reason"] == "budget" and steps == 4
    judged = [r["path"] for r in scripted.requests[:sent] if "Is this solution correct" in str(
        r["body"].get("messages"))]
    # a verdict per step; on the token route each judge prompt is rendered first (/tokenize),
    # to be sized to the window, and that request carries the program's key too
    assert judged.count("/v1/chat/completions") == steps
    assert judged.count("/tokenize") == (steps if route_endpoint.continuation == "tokens" else 0)
    assert generations(scripted, 0) - generations(scripted, sent) == 2 * steps
    one, two = set(keys(scripted)[:sent]), set(keys(scripted, sent))
    assert len(one) == len(two) == 1 and None not in one | two and one != two


async def test_cot_programs_of_a_parent_graph_get_one_key_each(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["12}", "12}", "7}", "7}"]
    graph = build_homework_graph(scripted_endpoint, CoTConfig(chunk_size=5, certainty_threshold=2))
    await graph.ainvoke({"questions": ["q one", "q two"]})
    by_question: dict[str, set[str | None]] = {}
    for request in scripted.requests:  # the first program also learns the thinking format
        question = request["body"]["messages"][0]["content"]
        if request["body"]["messages"] != PROBE:
            by_question.setdefault(question, set()).add(request["headers"].get("x-session-id"))
    assert set(by_question) == {"q one", "q two"}
    assert all(len(k) == 1 and None not in k for k in by_question.values())
    assert by_question["q one"] != by_question["q two"]


async def test_the_live_stream_and_its_side_probes_share_the_programs_key() -> None:
    overlapped = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=200,
                           probing="overlapped", resubmit_every=1)
    script = Script(probes=["1}", "2}", "2}"], token_delay_s=0.005)
    with ScriptedServer(script, chat_template="deepseek_r1_distill") as server:
        endpoint = Endpoint(model="m", api_base=server.api_base, timeout_s=10,
                            continuation="tokens", max_retries=0)
        graph = create_cot(endpoint, overlapped)
        ends = []
        for _ in range(2):
            await graph.ainvoke({"question": "q"})
            ends.append(len(server.generations()))
        sc = await create_sc(endpoint, SCConfig(path=overlapped, width=2, max_width=2)).ainvoke(
            {"question": "q"})
    generations = server.generations()
    runs = [generations[:ends[0]], generations[ends[0]:ends[1]], generations[ends[1]:]]
    kinds = [["stream" if r["body"].get("stream") else "probe" for r in run] for run in runs]
    assert kinds[0].count("stream") >= 2 and kinds[0].count("probe") == 3  # re-submitted
    assert all(set(run) == {"stream", "probe"} for run in kinds)
    assert len(sc["paths"]) == 2
    sessions = [{r["headers"].get("x-session-id") for r in run} for run in runs]
    assert all(len(s) == 1 and None not in s for s in sessions)
    assert len(set.union(*sessions)) == 3  # three programs, three keys


async def test_a_resumed_program_keeps_its_key(tmp_path: Path) -> None:
    # The kill/resume pattern of test_resume: the server dies after the second probe, comes
    # back on the same port, and the thread resumes. Before and after, one key: the
    # thread's; the program's own session_id is kept in the checkpoint as well.
    script = Script(probes=["5} wait", "5}", "6}", "5}", "5}"])
    thread = {"configurable": {"thread_id": "resumed-1"}}
    saver = InMemorySaver()
    server: ScriptedServer | None = ScriptedServer(script, token_api=True).__enter__()
    assert server is not None
    port = server.port
    endpoint = Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=server.api_base,
                        timeout_s=10, max_retries=1)
    graph = create_cot(endpoint, CoTConfig(chunk_size=10, max_tokens=80,
                                           certainty_threshold=3), checkpointer=saver)
    before = server.requests
    probes = 0
    with pytest.raises(EndpointUnreachable):
        async for update in graph.astream({"question": "What is 2 + 3?"}, thread,
                                          stream_mode="updates"):
            probes += "probe" in update
            if probes == 2 and server is not None:
                await asyncio.to_thread(server.__exit__)
                server = None
    paused = (await graph.aget_state(thread)).values
    with ScriptedServer(script, port=port, token_api=True) as back:
        result = await graph.ainvoke(None, thread)
        after = back.requests
    assert result["stop_reason"] == "certain" and len(result["probes"]) == 6
    assert {r["headers"].get("x-session-id") for r in [*before, *after]} == {"resumed-1"}
    assert sum(1 for r in after if r["path"].endswith("completions")) == 8
    final = (await graph.aget_state(thread)).values
    assert KEY.fullmatch(paused["session_id"]) and final["session_id"] == paused["session_id"]


class AgentTurns:
    """Each run: a tool call, then the final answer; the probe after the call answers ``4}``."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        probe = bool(body.get("continue_final_message"))
        step = sum(1 for e in self.log if not e["probe"]) % 2  # each run: a call, an answer
        self.log.append({"probe": probe})
        message: dict[str, Any] = {"role": "assistant", "content": "4}" if probe else None}
        if not probe and step == 0:
            message["tool_calls"] = [{"id": "call_0", "type": "function", "function": {
                "name": "calculate", "arguments": '{"expression": "2 + 2"}'}}]
        elif not probe:
            message["content"] = "4"
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": SERVED_NAME,
                     "choices": [{"index": 0, "message": message,
                                  "finish_reason": "stop" if probe or step else "tool_calls"}],
                     "usage": usage}


async def test_an_agent_runs_model_calls_and_probes_on_its_runs_key() -> None:
    with ScriptedServer(AgentTurns()) as server:
        endpoint = Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=server.api_base,
                            timeout_s=10)
        agent = build_agent(endpoint)
        first = await agent.ainvoke({"messages": [HumanMessage("What is 2 + 2?")]})
        sent = len(server.requests)
        await agent.ainvoke({"messages": [HumanMessage("What is 2 + 2?")]})
    assert [e["probe"] for e in server.script.log] == [False, True, False] * 2
    report = first["early_stop"]
    assert report["stop_reason"] == "finished" and len(report["probes"]) == 1
    # the model's own calls (through the middleware) and the probe: the run's key
    assert set(keys(server)[:sent]) == {report["session_id"]}
    assert KEY.fullmatch(report["session_id"])
    second = set(keys(server, sent))
    assert len(second) == 1 and second != {report["session_id"]}
