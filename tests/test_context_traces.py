"""Traces that end at the server's context window: ``record`` writes them as ``context`` (not
``budget``), old files with only ``finished`` / ``budget`` still load, and replay treats a
``context`` trace as a budget one: the model did not finish, so every method meets the last
probe and that probe answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import rendered_length, run_cli, suffix_length, trace
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint
from dynasor_graph.eval import Problem, load_traces, record_traces, replay_traces

PROBE = 3  # probe_max_tokens


def token_endpoint(server: ScriptedServer, model: str = SERVED_NAME) -> Endpoint:
    server.token_api = True
    return Endpoint(model=model, api_base=server.api_base, timeout_s=10,
                    continuation="tokens", max_retries=0)


async def test_a_run_that_reaches_the_window_is_recorded_as_context(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    endpoint = token_endpoint(scripted)
    # the question, 10 reasoning tokens, then one probe: chunks of 4, 4 and the last 2
    scripted.script.max_model_len = (rendered_length(endpoint, "q") + 10
                                     + suffix_length(endpoint) + PROBE)
    scripted.script.probes = ["1}", "2}", "3}"]
    config = CoTConfig(chunk_size=4, max_tokens=1024, probe_max_tokens=PROBE)
    out = tmp_path / "traces.jsonl"
    (recorded,) = await record_traces(endpoint, [Problem("p", "q", "3")], config, out)
    assert [e["body"]["max_tokens"] for e in scripted.script.log if e["kind"] == "reason"] == [
        4, 4, 2]
    assert (recorded.stop_reason, recorded.answer, recorded.correct) == ("context", "3", True)
    assert [p.tokens for p in recorded.probes] == [4, 8, 10]
    assert recorded.reasoning_tokens == 10 and recorded.probe_answered
    (loaded,) = load_traces(out)  # the file holds stop_reason "context" and reads back
    assert loaded.model_dump(mode="json") == recorded.model_dump(mode="json")
    assert json.loads(out.read_text())["stop_reason"] == "context"


async def test_a_reasoning_model_that_answers_by_itself_is_recorded_as_finished(
    tmp_path: Path,
) -> None:
    # R1-Distill's template: the model closes its thinking and answers in its first chunk
    # (the graph's stop reason "answered"): the model's own end, not a budget's
    script = Script(reasoning=["a ", "</think>", "\\boxed{5} "])
    with ScriptedServer(script, chat_template="deepseek_r1_distill") as server:
        endpoint = token_endpoint(server, model="traces-r1")
        (recorded,) = await record_traces(endpoint, [Problem("p", "q", "5")],
                                          CoTConfig(chunk_size=4, max_tokens=64),
                                          tmp_path / "t.jsonl")
    assert (recorded.stop_reason, recorded.answer, recorded.probes) == ("finished", "5", [])
    assert not recorded.probe_answered


# Probes at 10 … 50 tokens; the window ended the run at 50, under its budget of 60.
# Answers 5, 7, 8, 12, 12: only the last two agree.
PROBES = [("5", True, 2), ("7", True, 2), ("8", True, 2), ("12", True, 2), ("12", True, 2)]
REASONING = "x " * 25  # no transition marker anywhere: only the window's probe is placed


def at_window(stop: str) -> dict[str, Any]:
    line = trace("w", "12", "12", stop, 50, PROBES)
    line["reasoning"] = REASONING
    for i, probe in enumerate(line["probes"]):
        probe["chars"] = 10 * (i + 1)
    return line


METHODS = ["cot:2@10", "cot:2@20", "cot:2@10+transitions", "entropy:0.9@3", "truncate:30",
           "truncate:60"]


def rows_of(stop: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / f"{stop}.jsonl"
    path.write_text(json.dumps(at_window(stop)) + "\n", encoding="utf-8")
    rows, _ = replay_traces(load_traces(path), METHODS)
    return {row["method"]: dict(row) for row in rows}


STOPS = {"full": "context", "oracle": "certain", "cot:2@10": "certain",
         "cot:2@20": "certain", "cot:2@10+transitions": "context", "entropy:0.9@3": "context",
         "truncate:30": "budget", "truncate:60": "context"}
"""Each method's stop on the context trace; its budget twin's says budget for context."""


def test_replay_treats_a_context_trace_as_a_budget_one(tmp_path: Path) -> None:
    context, budget = rows_of("context", tmp_path), rows_of("budget", tmp_path)
    assert {m: r["stop_reason"] for m, r in context.items()} == STOPS
    assert {m: r["stop_reason"] for m, r in budget.items()} == {
        m: "budget" if stop == "context" else stop for m, stop in STOPS.items()}
    for method, row in context.items():  # the same answers, tokens and probes paid
        assert {k: v for k, v in row.items() if k != "stop_reason"} == {
            k: v for k, v in budget[method].items() if k != "stop_reason"}, method
    # full pays for the last probe, which answers
    assert (context["full"]["answer"], context["full"]["probe_completion_tokens"]) == ("12", 2)
    # cot:2@20 meets probes 20, 40 and the window's 50: 12 twice, certain at 50
    assert (context["cot:2@20"]["reasoning_tokens"],
            context["cot:2@20"]["probe_completion_tokens"]) == (50, 6)
    # transitions: no marker in the reasoning, so only the window's probe is made
    assert context["cot:2@10+transitions"]["probe_completion_tokens"] == 2
    # a fixed budget at or past the recorded one (60) is the run as recorded; one inside the
    # run answers by its probe there
    assert context["truncate:60"]["answer"] == "12"
    assert context["truncate:30"]["answer"] == "8"


def test_truncate_between_the_window_and_the_budget_is_the_run_that_hit_the_window(
    tmp_path: Path,
) -> None:
    # truncate:55 on a trace the window ended at 50 (budget 60): the live run stops at the
    # window too, on the same last probe. A budget trace has no probe at 55 to answer by.
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(at_window("context")) + "\n", encoding="utf-8")
    rows, _ = replay_traces(load_traces(path), ["truncate:55"])
    (row,) = [r for r in rows if r["method"] == "truncate:55"]
    assert (row["stop_reason"], row["answer"], row["reasoning_tokens"]) == ("context", "12", 50)
    path.write_text(json.dumps(at_window("budget")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no probe at 55 tokens"):
        replay_traces(load_traces(path), ["truncate:55"])


def test_old_trace_files_load_and_replay_beside_context_traces(tmp_path: Path) -> None:
    # lines as recorded before "context" existed (finished / budget, no chars, no confidence)
    old = [trace("a", "12", "12", "budget", 60, [("5", True, 2)] + [("12", True, 2)] * 5),
           trace("b", "7", "7", "finished", 35, [("7", True, 3)])]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [*old, at_window("context")]),
                    encoding="utf-8")
    assert [t.stop_reason for t in load_traces(path)] == ["budget", "finished", "context"]
    out = run_cli("replay", "--traces", str(path), "--out", str(tmp_path / "r"),
                  "--methods", "cot:2@20")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text()
            .splitlines()]
    assert {(r["id"], r["method"]): r["stop_reason"] for r in rows} == {
        ("a", "full"): "budget", ("b", "full"): "finished", ("w", "full"): "context",
        ("a", "oracle"): "certain", ("b", "oracle"): "certain", ("w", "oracle"): "certain",
        ("a", "cot:2@20"): "certain", ("b", "cot:2@20"): "finished",
        ("w", "cot:2@20"): "certain"}
