"""The ``dynasor-graph`` command against the scripted server: JSON contract, live view, errors."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from scripted_server import ScriptedServer


def test_solve_json_contract(scripted: ScriptedServer) -> None:
    scripted.script.probes = ["5}", "5}"]
    out = run_cli("solve", "What is 2 + 3?", "--model", "scripted", "--api-base", scripted.api_base,
              "--effort", "high", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["answer"] == "5"
    assert result["certaindex"] == 1.0
    assert result["decision"] == "exit"
    assert result["stop_reason"] == "certain"
    # text mode (the scripted server speaks chat only): no log-probabilities, no confidence
    assert result["probes"] == [
        {"tokens": 64, "answer": "5", "confident": True, "confidence": None},
        {"tokens": 128, "answer": "5", "confident": True, "confidence": None}]
    assert result["usage"]["reasoning_tokens"] == 128
    assert result["usage"]["probe_completion_tokens"] == 2
    assert set(result["usage"]) >= {"reasoning_tokens", "probe_prompt_tokens",
                                    "probe_completion_tokens"}


def test_solve_reads_the_environment_and_shows_probes(scripted: ScriptedServer) -> None:
    scripted.script.probes = ["hmm 4}", "5}"]
    out = run_cli("solve", "What is 2 + 3?", "--threshold", "1", "--chunk-size", "7",
              env={"DYNASOR_API_BASE": scripted.api_base, "DYNASOR_MODEL": "scripted",
                   "DYNASOR_API_KEY": "sk-secret"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "hesitant" in lines[0] and "certaindex=0.00" in lines[0]
    assert "confident" in lines[1] and "certaindex=1.00 → exit" in lines[1]
    assert "answer: '5'" in out.stdout and "stop: certain" in out.stdout
    assert "sk-secret" not in out.stdout + out.stderr
    assert scripted.script.log[0]["body"]["model"] == "scripted"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "", "--api-base", "http://127.0.0.1:9/v1", "--model", "m"],
         "question must not be empty"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
          "--max-tokens", "0"], "invalid max_tokens"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
          "--threshold", "-1"], "invalid certainty_threshold"),
        (["solve", "q", "--api-base", "ftp://x", "--model", "m"], "invalid api_base"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m", "--width", "2"],
         "apply to sc, mcts and rebase"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
          "--algorithm", "sc", "--width", "9", "--max-width", "4"],
         "width must not exceed max_width"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
          "--algorithm", "mcts", "--reward-api-base", "http://127.0.0.1:9/v1"],
         "go together"),
        (["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
          "--algorithm", "rebase", "--max-tokens", "9"], "trees take --token-budget"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    out = run_cli(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == ""


def test_unreachable_endpoint_is_one_clear_line() -> None:
    out = run_cli("solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m",
              "--timeout", "2")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if "127.0.0.1:9/v1" in line]
    assert out.stderr.startswith("dynasor-graph: cannot reach http://127.0.0.1:9/v1")


def test_server_refusal_is_the_server_message(scripted: ScriptedServer) -> None:
    scripted.script.refuse_message = "maximum context length is 2048 tokens"
    out = run_cli("solve", "q", "--api-base", scripted.api_base, "--model", "scripted")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"dynasor-graph: {scripted.api_base} refused the request: "
                                  "maximum context length is 2048 tokens")


def test_solve_sc_json_reports_every_path(scripted: ScriptedServer) -> None:
    from scripted_server import Script

    scripted.script.seeds = {
        7 + i: Script(reasoning=["so ", f"\\boxed{{{a}}} "]) for i, a in enumerate("5565")}
    out = run_cli("solve", "What is 2 + 3?", "--model", "scripted", "--api-base", scripted.api_base,
              "--algorithm", "sc", "--width", "4", "--max-width", "4", "--budget", "400",
              "--seed", "7", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [p["answer"] for p in result["paths"]] == ["5", "5", "6", "5"]
    # 1 - H/ln 4 for {5, 5, 5, 6} is 0.594 < 0.7, and the width is spent: majority answer
    assert (result["answer"], result["stop_reason"]) == ("5", "width")
    assert round(result["certaindex"], 3) == 0.594
    assert result["budget_left"] == 400 - 8
    assert result["usage"]["reasoning_tokens"] == 8


def test_solve_mcts_prints_its_routing(scripted: ScriptedServer) -> None:
    from scripted_server import Script

    scripted.script.seeds = {7 + k: Script(reasoning=["so ", "\\boxed{5} "]) for k in (1, 2)}
    out = run_cli("solve", "What is 2 + 3?", "--model", "scripted", "--api-base", scripted.api_base,
              "--algorithm", "mcts", "--seed", "7", "--budget", "100",
              "--reward-api-base", scripted.api_base, "--reward-model", "prm")
    # the scripted server has no /classify: the reward model's refusal is one clear line
    assert out.returncode == 1
    assert "classify refused the request" in out.stderr
