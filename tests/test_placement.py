"""Probe placement at reasoning transitions: the live graph (scripted server) probes only after
chunks that complete a marker, and ``replay`` of a chunk-probed trace makes the same stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import trace
from scripted_server import ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._probe import crossed_transition
from dynasor_graph.eval import Problem, Trace, record_traces, replay_traces
from dynasor_graph.eval._methods import parse_method

# 40 scripted tokens; "Wait" is token 5 (in the chunk of tokens 4-7) and token 17 (16-19).
REASONING = [("Wait " if i in (5, 17) else f"r{i} ") for i in range(40)]


def test_crossed_transition_counts_markers_ending_after_the_start() -> None:
    text = "so 2 + 3 = 5.\n\nWait, is it?"
    assert crossed_transition(text, 0, ["Wait"])
    assert not crossed_transition(text, text.index("Wait") + 4, ["Wait"])  # seen already
    assert crossed_transition(text, text.index("\n\n") + 1, ["\n\n"])  # straddles the start
    assert not crossed_transition("no turn here", 0, ["Wait", "\n\n"])


async def test_the_graph_probes_only_after_chunks_with_a_transition(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.reasoning = REASONING
    scripted.script.probes = ["5}"]
    config = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=40,
                       probe_at="transitions")
    result = await create_cot(scripted_endpoint, config).ainvoke({"question": "q"})
    kinds = [e["kind"] for e in scripted.script.log]
    assert kinds == ["reason"] * 2 + ["probe"] + ["reason"] * 3 + ["probe"]
    assert (result["stop_reason"], result["usage"]["reasoning_tokens"]) == ("certain", 20)
    assert [p["tokens"] for p in result["probes"]] == [8, 20]


async def test_without_a_transition_only_the_budget_is_probed(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["5}"]
    config = CoTConfig(chunk_size=4, max_tokens=12, probe_at="transitions")
    result = await create_cot(scripted_endpoint, config).ainvoke({"question": "q"})
    assert [e["kind"] for e in scripted.script.log] == ["reason"] * 3 + ["probe"]
    assert (result["stop_reason"], result["answer"]) == ("budget", "5")


async def test_replay_of_a_recorded_trace_makes_the_graphs_stop(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, tmp_path: Path
) -> None:
    scripted.script.reasoning = REASONING
    scripted.script.probes = ["5}"]
    traces = await record_traces(scripted_endpoint, [Problem(id="p", question="q", gold="5")],
                                 CoTConfig(chunk_size=4, max_tokens=40), tmp_path / "t.jsonl")
    assert [p.chars for p in traces[0].probes][:3] == [12, 26, 40]  # "r0 r1 r2 r3 " ...
    rows, summary = replay_traces(traces, ["cot:2@4+transitions", "cot:2@8+transitions",
                                           "cot:2@4"])
    stops = {r["method"]: (r["reasoning_tokens"], r["stop_reason"]) for r in rows}
    assert stops["cot:2@4+transitions"] == (20, "certain")  # as the live graph above
    assert stops["cot:2@8+transitions"] == (24, "certain")  # chunks 0-7 and 16-23
    assert stops["cot:2@4"] == (8, "certain")
    assert summary["cot:2@4+transitions"]["mean_probe_tokens"] == 2  # two 1-token probes


def test_transition_replay_needs_probe_offsets(tmp_path: Path) -> None:
    method = parse_method("cot:3@64+nohesitation+transitions")
    assert (method.hesitation, method.transitions) == (False, True)
    config = method.config(256)
    assert (config.probe_at, config.hesitation_words) == ("transitions", ())
    old = Trace.model_validate(trace("a", "1", "1", "budget", 60, [("1", True, 2)] * 6))
    with pytest.raises(ValueError, match="recorded before probes carried their reasoning "
                       "offset"):
        replay_traces([old], ["cot:2@10+transitions"])
    with pytest.raises(ValueError, match="record probes after every chunk"):
        asyncio.run(record_traces(Endpoint(model="m", api_base="http://127.0.0.1:1/v1"), [],
                                  CoTConfig(probe_at="transitions"), tmp_path / "t.jsonl"))
