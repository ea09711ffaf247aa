"""End to end on the real local vLLM: ``record`` a few easy problems, ``calibrate`` them, then
``solve --calibrated``: the run follows the certified rule (replaying its own probes with that
rule makes the same stop). A loose bound (eps = confidence = 0.5) keeps it to 5 problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynasor_graph import Endpoint
from dynasor_graph.cli import main
from dynasor_graph.eval import CalibratedRule, Trace, load_traces, replay_traces
from dynasor_graph.eval._traces import TraceProbe


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_record_calibrate_solve_runs_the_certified_rule(
    local_vllm: Endpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DYNASOR_API_BASE", "DYNASOR_MODEL", "DYNASOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    server = ["--model", local_vllm.model, "--api-base", local_vllm.api_base]
    traces, rule_file = tmp_path / "traces.jsonl", tmp_path / "rule.json"
    run(capsys, "record", "--dataset", "generated:arithmetic?n=5&seed=0&level=1", *server,
        "--chunk-size", "16", "--max-tokens", "64", "--seed", "0", "--concurrency", "5",
        "--out", str(traces))
    out = run(capsys, "calibrate", str(traces), "--max-accuracy-loss", "0.5",
              "--confidence", "0.5", "--holdout", "0", "--order", "0.5", "--out",
              str(rule_file))
    rule = CalibratedRule.load(rule_file)
    assert f"certified {rule.rule.method}" in out
    assert (rule.model, rule.n_traces, rule.settings["max_tokens"]) == (local_vllm.model, 5, 64)
    assert rule.rule.chunk_size % 16 == 0
    assert all(p.confidence is not None for t in load_traces(traces) for p in t.probes)

    question = "Ann has 3 apples and gets 4 more. How many apples does Ann have?"
    result = json.loads(run(capsys, "solve", question, "--calibrated", str(rule_file),
                            "--seed", "1", "--json", *server))
    usage, probes = result["usage"], result["probes"]
    chunk = rule.rule.chunk_size
    # Probes come every calibrated chunk (at most one more at the 64-token budget) …
    assert all(p["tokens"] % chunk == 0 or p["tokens"] == 64 for p in probes)
    if rule.rule.probe_at == "chunks":
        assert [p["tokens"] for p in probes] == [min(chunk * (i + 1), 64)
                                                 for i in range(len(probes))]
    # … and replaying the run's own probes with the certified rule stops where the run did.
    # (Its probes are those the run made, so transition placement is already applied.)
    method = rule.rule.method.replace("+transitions", "")
    trace = Trace(
        id="run", gold="7", answer=result["answer"], correct=result["answer"] == "7",
        stop_reason="budget" if result["stop_reason"] in ("budget", "certain") else "finished",
        reasoning_tokens=usage["reasoning_tokens"], reasoning_prompt_tokens=0,
        probes=[TraceProbe(tokens=p["tokens"], text="", answer=p["answer"],
                           confident=p["confident"], confidence=p["confidence"],
                           prompt_tokens=0, completion_tokens=0)
                for p in probes],
        settings={**rule.settings, "chunk_size": chunk}, question=question)
    rows, _ = replay_traces([trace], [method])
    replayed = next(r for r in rows if r["method"] == method)
    expected = "certain" if result["stop_reason"] == "certain" else trace.stop_reason
    assert (replayed["reasoning_tokens"], replayed["stop_reason"], replayed["answer"]) == (
        usage["reasoning_tokens"], expected, result["answer"])
