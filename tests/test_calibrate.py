"""``calibrate``: the finite-sample guarantee on synthetic populations whose true loss is known,
the refusals, the CLI end to end, and the config file driving the graph (scripted server)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scripted_server import ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.cli import main
from dynasor_graph.eval import CalibratedRule, CalibrationError, calibrate, load_traces
from dynasor_graph.eval._calibrate import (
    Table,
    candidates,
    certify,
    evaluate,
    minimum_traces,
    upper_bound,
)
from dynasor_graph.eval._calibrated import DataFile, Outcome, Rule

CHUNK, BUDGET = 10, 120
SETTINGS = {"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "chunk_size": CHUNK,
            "max_tokens": BUDGET, "seed": None, "temperature": 0.6,
            "hesitation_words": ["wait", "hold", "but", "okay", "no", "hmm"]}


def synthetic(i: int, rng: random.Random) -> dict[str, Any]:
    """One trace of a population where stopping early sometimes costs the right answer.

    Gold is "1". Half the traces settle late: a wrong "9" (hesitant with probability 1/2) for
    the first j probes, then "1" to the budget; a fifth are right throughout; the rest are
    noise over "1", "2", "3" whose final probe is the full answer.
    """
    kind = rng.random()
    probes = BUDGET // CHUNK
    if kind < 0.5:
        j = rng.randrange(probes)
        answers = ["9"] * j + ["1"] * (probes - j)
        hesitant = [a == "9" and rng.random() < 0.5 for a in answers]
    elif kind < 0.7:
        answers, hesitant = ["1"] * probes, [False] * probes
    else:
        answers = [rng.choice("123") for _ in range(probes)]
        hesitant = [rng.random() < 0.3 for _ in answers]
    return {
        "id": f"p{i}", "sample": 0, "gold": "1", "answer": answers[-1],
        "correct": answers[-1] == "1", "stop_reason": "budget", "reasoning_tokens": BUDGET,
        "reasoning_prompt_tokens": 40,
        "probes": [{"tokens": CHUNK * (k + 1), "text": ("wait " if h else "") + a + "}",
                    "answer": a, "confident": not h, "prompt_tokens": 60 + CHUNK * k,
                    "completion_tokens": 2, "chars": 30 * (k + 1)}
                   for k, (a, h) in enumerate(zip(answers, hesitant, strict=True))],
        "settings": SETTINGS, "question": f"question {i}", "reasoning": "",
    }


def write_traces(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(synthetic(i, rng)) + "\n" for i in range(count)),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Table:
    """400 traces, every candidate replayed on each: the population's losses are exact."""
    path = write_traces(tmp_path_factory.mktemp("pop") / "population.jsonl", 400, seed=1)
    rules = candidates(CHUNK, BUDGET, thresholds=range(1, 7), multiples=(1, 2, 3))
    return evaluate(load_traces(path), rules)


def draw(table: Table, rows: np.ndarray[Any, Any]) -> Table:
    return Table(rules=table.rules, full_correct=table.full_correct[rows],
                 full_cost=table.full_cost[rows], correct=table.correct[rows],
                 cost=table.cost[rows])


def test_the_guarantee_holds_over_1000_calibration_draws(population: Table) -> None:
    # eps sits just under cot:2@30's true loss (0.075, 22% saved): a procedure that trusted
    # the empirical loss would pick it in many draws.
    eps, delta, n, n_order, draws = 0.07, 0.10, 300, 90, 1000
    true_loss = population.loss.mean(axis=0)  # exact: draws are i.i.d. from these 400 traces
    full_cost = population.full_cost.sum()
    true_savings = 1 - population.cost.sum(axis=0) / full_cost
    # The population is hard: rules on both sides of eps, the best-saving ones above it.
    assert true_loss.min() < eps / 2 and true_loss.max() > 3 * eps
    assert true_savings[true_loss > eps].max() > true_savings[true_loss <= eps].max()
    rng = np.random.default_rng(7)
    violations = naive_violations = refusals = 0
    saved = []
    for _ in range(draws):
        sample = draw(population, rng.integers(0, len(population.full_correct), n))
        rows = np.arange(n)
        try:
            chosen = certify(sample, rows[:n_order], rows[n_order:], eps, delta).chosen
        except CalibrationError:
            refusals += 1  # full reasoning: loss 0
        else:
            violations += bool(true_loss[chosen] > eps)
            saved.append(true_savings[chosen])
        # The naive rule (most saving with empirical loss <= eps on the whole draw) fails often:
        # the test would catch a procedure that skipped the bound.
        empirical = sample.loss.mean(axis=0)
        ok = np.flatnonzero(empirical <= eps)
        naive = ok[np.argmax(sample.savings(rows)[ok])]
        naive_violations += bool(true_loss[naive] > eps)
    # Sampling slack: 3 standard deviations of a share over 1,000 draws at delta.
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)
    assert violations / draws <= delta + slack, (violations, refusals)
    assert naive_violations / draws > delta + 0.1, naive_violations
    # and it has power: it certifies a saving rule in most draws (measured: 2.0% violations,
    # naive 41%, 1 refusal, 9.3% of the tokens saved on average, where the best rule within
    # eps, cot:4@10, saves 17%)
    assert refusals < draws / 10 and float(np.mean(saved)) > 0.05


def test_too_few_traces_is_refused_with_the_numbers(tmp_path: Path) -> None:
    traces = write_traces(tmp_path / "t.jsonl", 40)
    assert minimum_traces(0.05, 0.05) == 59  # 0.95^59 < 0.05 < 0.95^58
    with pytest.raises(CalibrationError, match=r"too few traces for the bound: 40 problems "
                       r"leave 20 for calibration .* needs at least 59 .* record at least 120"):
        calibrate([traces], 0.05, 0.95)


def test_too_few_calibration_rows_and_no_rule_passing_are_refused(population: Table) -> None:
    rows = np.arange(len(population.full_correct))
    with pytest.raises(CalibrationError, match=r"300 calibration traces cannot certify an "
                       r"accuracy loss <= 0.001 at confidence 0.5: .* at least 693"):
        certify(population, rows[:100], rows[100:], 0.001, 0.5)
    # Two rules that save tokens but each lose 1 trace in 5: nothing passes at eps 0.05.
    n = 200
    full_correct = np.ones(n, dtype=bool)
    correct = np.tile(np.arange(n)[:, None] % 5 != 0, (1, 2))
    table = Table(rules=population.rules[:2], full_correct=full_correct,
                  full_cost=np.full(n, 100.0), correct=correct,
                  cost=np.tile([50.0, 40.0], (n, 1)))
    with pytest.raises(CalibrationError, match=r"no rule certified: the first rule tested, "
                       r"cot:\S+, lost 30 of 150 calibration traces .* only full reasoning"):
        certify(table, rows[:50], rows[50:200], 0.05, 0.1)


def test_upper_bound_is_clopper_pearson() -> None:
    # k = 0: the bound solves (1 - p)^n = delta
    assert upper_bound(0, 50, 0.1) == pytest.approx(1 - 0.1 ** (1 / 50))
    assert upper_bound(50, 50, 0.1) == 1.0


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cli_writes_a_config_that_round_trips(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    traces = write_traces(tmp_path / "traces.jsonl", 200, seed=3)
    out = tmp_path / "rule.json"
    code, stdout, stderr = cli("calibrate", str(traces), "--max-accuracy-loss", "0.1",
                               "--confidence", "0.9", "--out", str(out))
    assert code == 0, stderr
    rule = CalibratedRule.load(out)
    assert rule.model == "hosted_vllm/m" and rule.n_traces == 200
    assert (rule.n_holdout, rule.n_order, rule.n_calibration) == (60, 42, 98)
    assert rule.data[0].traces == 200 and len(rule.data[0].sha256) == 64
    assert rule.calibration.upper_bound is not None
    assert rule.calibration.upper_bound <= 0.1 and rule.holdout is not None
    assert set(rule.compared) >= {"full", "oracle"}
    assert f"certified {rule.rule.method}" in stdout and "| oracle | held-out |" in stdout
    assert out.with_suffix(".png").stat().st_size > 0
    assert CalibratedRule.model_validate_json(out.read_text()) == rule
    config = CoTConfig.from_calibration(out)
    assert (config.chunk_size, config.certainty_threshold) == (
        rule.rule.chunk_size, rule.rule.certainty_threshold)
    assert config.max_tokens == BUDGET and config.temperature == 0.6
    code, _, stderr = cli("calibrate", str(traces), "--max-accuracy-loss", "0.01",
                          "--confidence", "0.99", "--out", str(tmp_path / "no.json"))
    assert code == 1 and "too few traces for the bound" in stderr
    assert not (tmp_path / "no.json").exists()


def hand_written(path: Path, hesitation_filter: bool) -> Path:
    outcome = Outcome(n=100, losses=1, loss=0.01, accuracy=0.5, savings=0.3, upper_bound=0.05)
    CalibratedRule(
        model="hosted_vllm/scripted", data=[DataFile(path="t.jsonl", sha256="0" * 64,
                                                     traces=140)],
        settings={**SETTINGS, "max_tokens": 40, "chunk_size": 4}, max_accuracy_loss=0.1,
        confidence=0.9, seed=0, n_traces=140, n_order=12, n_calibration=100, n_holdout=28,
        rule=Rule(chunk_size=8, certainty_threshold=2, hesitation_filter=hesitation_filter),
        calibration=outcome, holdout=outcome, compared={"full": outcome}, candidates=10,
        tested=3, certified=2, created="2026-12-01T00:00:00+00:00").save(path)
    return path


@pytest.mark.parametrize("hesitation_filter", [False, True])
async def test_a_graph_from_the_config_runs_the_calibrated_rule(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, tmp_path: Path,
    hesitation_filter: bool,
) -> None:
    path = hand_written(tmp_path / "rule.json", hesitation_filter)
    config = CoTConfig.from_calibration(path, seed=5)
    assert config.seed == 5 and config.hesitation_words == (
        tuple(SETTINGS["hesitation_words"]) if hesitation_filter else ())
    scripted.script.probes = ["wait 5}"] * 10  # agreeing answers, each with a hesitation word
    result = await create_cot(scripted_endpoint, config).ainvoke({"question": "q"})
    kinds = [(e["kind"], e["body"]["max_tokens"]) for e in scripted.script.log]
    if hesitation_filter:  # hesitant probes never count: it reasons to the budget of 40
        assert kinds == [("reason", 8), ("probe", 20)] * 5
        assert result["stop_reason"] == "budget"
    else:  # chunk 8, two agreeing probes: out at 16 tokens
        assert kinds == [("reason", 8), ("probe", 20)] * 2
        assert (result["stop_reason"], result["usage"]["reasoning_tokens"]) == ("certain", 16)


def test_a_calibrated_rule_takes_only_a_seed_override(tmp_path: Path) -> None:
    path = hand_written(tmp_path / "rule.json", True)
    with pytest.raises(ValueError, match="only takes a seed override, not max_tokens"):
        CoTConfig.from_calibration(path, max_tokens=10)
    (tmp_path / "bad.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a calibrated-rule file"):
        CoTConfig.from_calibration(tmp_path / "bad.json")


def test_solve_and_bench_take_the_calibrated_rule(
    scripted: ScriptedServer, tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DYNASOR_API_BASE", "DYNASOR_MODEL", "DYNASOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    rule = hand_written(tmp_path / "rule.json", hesitation_filter=False)
    server = ["--model", "scripted", "--api-base", scripted.api_base]
    scripted.script.probes = ["wait 5}"]
    code, out, err = cli("solve", "q", "--calibrated", str(rule), "--json", *server)
    assert code == 0, err
    result = json.loads(out)  # chunk 8, two agreeing probes, hesitation ignored
    assert [p["tokens"] for p in result["probes"]] == [8, 16]
    assert result["stop_reason"] == "certain"
    code, _, err = cli("solve", "q", "--calibrated", str(rule), "--threshold", "3", *server)
    assert code == 1 and "--calibrated runs the certified CoT rule as recorded: not with " \
        "--threshold" in err
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "p", "question": "q", "answer": "5"}) + "\n",
                    encoding="utf-8")
    code, out, err = cli("bench", "--dataset", str(data), "--calibrated", str(rule),
                         "--methods", "full", "--out", str(tmp_path / "bench"), *server)
    assert code == 0, err
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert list(summary) == ["full", "calibrated"]
    assert summary["full"]["mean_reasoning_tokens"] == 40  # the calibrated budget
    assert summary["calibrated"]["mean_reasoning_tokens"] == 16
    code, _, err = cli("bench", "--dataset", str(data), "--calibrated", str(rule),
                       "--max-tokens", "64", "--out", str(tmp_path / "b2"), *server)
    assert code == 1 and "calibrated rule was certified at max_tokens=40, not 64" in err
