"""``bench``: exact rows and summary on the scripted server, then one short run on the real vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_server import ScriptedServer

from dynasor_graph import Endpoint, SchedulerConfig
from dynasor_graph.eval import Problem, run_bench


async def test_bench_rows_and_summary_on_the_scripted_server(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["5}"]  # every probe answers 5 at once
    problems = [Problem("p1", "What is 2 + 3?", "5"), Problem("p2", "What is 2 + 2?", "4")]
    rows, summary = await run_bench(scripted_endpoint, problems,
                                    ["full", "cot:1@4", "truncate:8"], max_tokens=16,
                                    concurrency=2)
    assert [(r["id"], r["method"]) for r in rows] == [
        ("p1", "full"), ("p1", "cot:1@4"), ("p1", "truncate:8"),
        ("p2", "full"), ("p2", "cot:1@4"), ("p2", "truncate:8")]
    by = {(r["id"], r["method"]): r for r in rows}
    # full: one 16-token chunk, one probe at the budget; cot:1@4 exits at its first probe
    assert (by["p1", "full"]["reasoning_tokens"], by["p1", "full"]["stop_reason"]) == (16, "budget")
    assert (by["p1", "cot:1@4"]["reasoning_tokens"], by["p1", "cot:1@4"]["stop_reason"]) == (
        4, "certain")
    assert by["p1", "truncate:8"]["reasoning_tokens"] == 8
    assert all(r["probe_completion_tokens"] == 1 and r["answer"] == "5" for r in rows)
    assert [r["correct"] for r in rows] == [True] * 3 + [False] * 3
    assert all(r["wall_s"] is not None and r["wall_s"] >= 0 for r in rows)
    assert summary["full"]["accuracy"] == 0.5
    # generated tokens: full 16 + 1, cot:1@4 4 + 1 → saves 12/17; truncate 8 + 1 → 8/17
    assert summary["cot:1@4"]["savings_vs_full"] == pytest.approx(12 / 17)
    assert summary["truncate:8"]["savings_vs_full"] == pytest.approx(8 / 17)
    assert summary["cot:1@4"]["early_exit_rate"] == 1.0
    # probe prompts: question 5 + 4, assistant turn 4 + its reasoning + the 15-token suffix
    assert summary["full"]["mean_probe_prompt_tokens"] == 9 + 4 + 16 + 15
    assert summary["cot:1@4"]["mean_probe_prompt_tokens"] == 9 + 4 + 4 + 15
    assert sum(r["probe_prompt_tokens"] for r in rows) == scripted.script.total(
        "probe", "prompt_tokens")


@pytest.mark.parametrize("policy", ["fifo", "certaindex"])
async def test_bench_through_a_scheduler_reports_throughput_latency_and_deadlines(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, policy: str
) -> None:
    scripted.script.probes = ["5}"]
    scripted.script.delay_s = 0.02
    problems = [Problem(f"p{i}", "What is 2 + 3?", "5") for i in range(6)]
    rows, summary = await run_bench(
        scripted_endpoint, problems, ["cot:1@4"], max_tokens=16,
        scheduler=SchedulerConfig(policy=policy, max_in_flight=2), arrival_rate=20.0,
        deadline_s=0.5)
    assert [r["arrival_s"] for r in rows] == [i / 20 for i in range(6)]
    assert all(r["finish_s"] > r["arrival_s"] and r["answer"] == "5" for r in rows)
    assert sum(r["reasoning_tokens"] + r["probe_completion_tokens"] for r in rows) == sum(
        e["usage"]["completion_tokens"] for e in scripted.script.log)
    s = summary["cot:1@4"]
    latencies = sorted(r["finish_s"] - r["arrival_s"] for r in rows)
    makespan = max(r["finish_s"] for r in rows)
    assert s["throughput_per_min"] == pytest.approx(6 / makespan * 60)
    assert s["p50_latency_s"] == pytest.approx((latencies[2] + latencies[3]) / 2)
    assert s["p95_latency_s"] == pytest.approx(latencies[4] + 0.75 * (latencies[5] - latencies[4]))
    hits = sum(latency <= 0.5 for latency in latencies)
    assert s["deadline_hit_rate"] == hits / 6
    assert s["goodput_per_min"] == pytest.approx(hits / makespan * 60)


async def test_bench_without_a_scheduler_has_no_deadline_figures(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.probes = ["5}"]
    rows, summary = await run_bench(scripted_endpoint, [Problem("p", "q", "5")], ["cot:1@4"],
                                    max_tokens=8)
    assert rows[0]["arrival_s"] == 0 and "deadline_hit_rate" not in summary["cot:1@4"]
    assert summary["cot:1@4"]["p50_latency_s"] == rows[0]["finish_s"]
    with pytest.raises(ValueError, match="arrival_rate needs a scheduler"):
        await run_bench(scripted_endpoint, [Problem("p", "q", "5")], ["cot:1@4"],
                        arrival_rate=1.0)


async def test_bench_refuses_replay_only_methods(scripted_endpoint: Endpoint) -> None:
    with pytest.raises(ValueError, match="oracle: only in replay"):
        await run_bench(scripted_endpoint, [Problem("p", "q", "1")], ["full", "oracle"])


@pytest.mark.vllm
def test_a_short_bench_on_the_real_vllm_writes_results_summary_and_plot(
    local_vllm: Endpoint, tmp_path: Path
) -> None:
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASOR_")}
    out = subprocess.run(
        [sys.executable, "-m", "dynasor_graph", "bench",
         "--dataset", "generated:arithmetic?n=2&seed=0&level=1",
         "--model", local_vllm.model, "--api-base", local_vllm.api_base,
         "--methods", "full", "truncate:32", "--max-tokens", "64", "--seed", "0",
         "--out", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    results = (tmp_path / "bench" / "results.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in results.splitlines()]
    assert [(r["id"], r["method"]) for r in rows] == [
        ("arithmetic-0-0", "full"), ("arithmetic-0-0", "truncate:32"),
        ("arithmetic-0-1", "full"), ("arithmetic-0-1", "truncate:32")]
    for row in rows:
        assert 0 < row["reasoning_tokens"] <= (64 if row["method"] == "full" else 32)
        assert row["stop_reason"] in {"finished", "budget"}
        assert (row["probe_completion_tokens"] > 0) == (row["stop_reason"] == "budget")
        assert row["wall_s"] > 0
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert list(summary) == ["full", "truncate:32"]
    assert summary["full"]["n"] == 2 and summary["full"]["savings_vs_full"] == 0
    assert summary["truncate:32"]["mean_reasoning_tokens"] == sum(
        r["reasoning_tokens"] for r in rows if r["method"] == "truncate:32") / 2
    with Image.open(tmp_path / "bench" / "accuracy_vs_tokens.png") as image:
        assert image.format == "PNG"
        image.verify()  # a complete, uncorrupted PNG
    assert image.size == (704, 484)  # 6.4 x 4.4 inches at 110 dpi


@pytest.mark.vllm
def test_a_short_scheduled_bench_on_the_real_vllm_reports_serving_figures(
    local_vllm: Endpoint, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASOR_")}
    out = subprocess.run(
        [sys.executable, "-m", "dynasor_graph", "bench",
         "--dataset", "generated:arithmetic?n=3&seed=0&level=1",
         "--model", local_vllm.model, "--api-base", local_vllm.api_base,
         "--methods", "cot:2@16", "--max-tokens", "48", "--seed", "0",
         "--scheduler", "certaindex", "--concurrency", "2", "--arrival-rate", "2",
         "--deadline-s", "600", "--gang", "--soft-deadline", "--out", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    results = (tmp_path / "bench" / "results.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in results.splitlines()]
    assert [r["arrival_s"] for r in rows] == [0.0, 0.5, 1.0]
    for row in rows:
        assert row["finish_s"] > row["arrival_s"]
        assert 0 < row["reasoning_tokens"] <= 48
        assert row["stop_reason"] in {"certain", "finished", "budget"}
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())["cot:2@16"]
    makespan = max(r["finish_s"] for r in rows)
    assert summary["throughput_per_min"] == pytest.approx(3 / makespan * 60)
    latencies = sorted(r["finish_s"] - r["arrival_s"] for r in rows)
    assert summary["p50_latency_s"] == pytest.approx(latencies[1])
    assert summary["deadline_hit_rate"] == 1.0  # 600 s: every program (a 48-token budget)


def test_bench_flags_are_checked_before_a_server_starts(capsys: pytest.CaptureFixture[str],
                                                        ) -> None:
    from dynasor_graph.cli import main

    assert main(["bench", "--dataset", "generated:arithmetic?n=1", "--out", "/nonexistent",
                 "--scheduler", "certaindex", "--arrival-rate", "0"]) == 1
    assert capsys.readouterr().err == (
        "dynasor-graph: --arrival-rate and --deadline-s must be positive\n")
    assert main(["bench", "--dataset", "generated:arithmetic?n=1", "--out", "/nonexistent",
                 "--scheduler", "certaindex", "--soft-deadline"]) == 1
    assert capsys.readouterr().err == "dynasor-graph: --soft-deadline needs --deadline-s\n"
    assert main(["bench", "--dataset", "generated:arithmetic?n=1", "--out", "/nonexistent",
                 "--gang"]) == 1
    assert capsys.readouterr().err == (
        "dynasor-graph: --scheduler-mode, --gang and --soft-deadline need --scheduler\n")
