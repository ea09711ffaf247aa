"""Replay on small hand-written traces: every figure below is computed by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, trace

from dynasor_graph.certaindex import answer_entropy
from dynasor_graph.eval import DataFormatError, load_traces, replay_traces

# A: budget 60, probes 5, 12, 12, 12, 12, 12 → final 12 (right)
# B: finishes by itself at 35 tokens, probes "", "7" (hesitant), "7" → final 7 (right)
# C: budget 60, probes 3, 3, 3, 4, 4, 4 → final 4 (wrong: gold 3)
TRACES = [
    trace("a", "12", "12", "budget", 60, [("5", True, 2)] + [("12", True, 2)] * 5),
    trace("b", "7", "7", "finished", 35, [("", True, 3), ("7", False, 3), ("7", True, 3)]),
    trace("c", "3", "4", "budget", 60, [("3", True, 2)] * 3 + [("4", True, 2)] * 3),
]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def traces_file(tmp_path: Path) -> Path:
    return write(tmp_path / "traces.jsonl", TRACES)


def test_full_oracle_and_presets_match_the_hand_computed_figures(traces_file: Path) -> None:
    rows, summary = replay_traces(load_traces(traces_file),
                                  ["cot:2@10", "cot:2@20", "cot:2@40", "truncate:20",
                                   "entropy:0.4@3"])
    assert list(summary) == ["full", "oracle", "cot:2@10", "cot:2@20", "cot:2@40",
                             "truncate:20", "entropy:0.4@3"]
    # full: A 60 + last probe 2, B 35 + 0 (finished), C 60 + 2 → 155/3 reasoning, 4/3 probe = 53
    full = summary["full"]
    assert (full["n"], full["accuracy"]) == (3, pytest.approx(2 / 3))
    assert full["mean_reasoning_tokens"] == pytest.approx(155 / 3)
    assert full["mean_probe_tokens"] == pytest.approx(4 / 3)
    assert full["mean_probe_prompt_tokens"] == pytest.approx((150 + 150) / 3)
    assert full["savings_vs_full"] == 0 and full["share_of_oracle"] == 0
    # oracle: A stops at 20 (12 from probe 2 on), B at 20 ("7" from probe 2 on), C at 40
    # → 80/3 reasoning, (2 + 3 + 2)/3 probe = 29 in all; saves 1 - 29/53 = 24/53
    oracle = summary["oracle"]
    assert oracle["accuracy"] == pytest.approx(2 / 3)
    assert oracle["mean_reasoning_tokens"] == pytest.approx(80 / 3)
    assert oracle["mean_probe_tokens"] == pytest.approx(7 / 3)
    assert oracle["savings_vs_full"] == pytest.approx(24 / 53)
    assert oracle["share_of_oracle"] == pytest.approx(1.0)
    # cot:2@10: A exits at 30 (probes 2, 3), B never (empty, then hesitant) → 35,
    # C exits at 20 with 3 (right!) → 85/3 reasoning, (6 + 9 + 4)/3 probe; total 104/3
    cot = summary["cot:2@10"]
    assert cot["accuracy"] == 1.0
    assert cot["mean_reasoning_tokens"] == pytest.approx(85 / 3)
    assert cot["mean_probe_tokens"] == pytest.approx(19 / 3)
    assert cot["savings_vs_full"] == pytest.approx(55 / 159)
    assert cot["share_of_oracle"] == pytest.approx(55 / 72)
    assert cot["early_exit_rate"] == pytest.approx(2 / 3)
    # cot:2@20 sees probes 2, 4, 6: A exits at 40, B sees only hesitant probe 2 → 35,
    # C agrees at 60 on the wrong 4 → 135/3 reasoning, (4 + 3 + 6)/3 probe
    cot20 = summary["cot:2@20"]
    assert cot20["accuracy"] == pytest.approx(2 / 3)
    assert cot20["mean_reasoning_tokens"] == pytest.approx(45)
    assert cot20["mean_probe_tokens"] == pytest.approx(13 / 3)
    assert cot20["savings_vs_full"] == pytest.approx(11 / 159)
    assert cot20["share_of_oracle"] == pytest.approx(11 / 72)
    # cot:2@40 sees probe 4 and the budget probe 6: A and C agree only at 60, B sees none;
    # it probes more than full does, so it saves less than nothing: 1 - (163/3)/53
    cot40 = summary["cot:2@40"]
    assert cot40["mean_reasoning_tokens"] == pytest.approx(155 / 3)
    assert cot40["mean_probe_tokens"] == pytest.approx(8 / 3)
    assert cot40["savings_vs_full"] == pytest.approx(-4 / 159)
    assert cot40["share_of_oracle"] == pytest.approx(-1 / 18)
    # truncate:20: the probe at 20 answers 12, 7 (hesitant, still an answer), 3 → all right
    truncate = summary["truncate:20"]
    assert (truncate["accuracy"], truncate["mean_reasoning_tokens"]) == (1.0, 20)
    assert truncate["mean_probe_tokens"] == pytest.approx(7 / 3)
    # entropy:0.4@3 (2 of 3 agreeing gives 1 - H/log 3 = 0.42): A at 30 with majority 12,
    # B never (empty and hesitant count as no answer), C at 30 with 3
    entropy = summary["entropy:0.4@3"]
    assert entropy["accuracy"] == 1.0
    assert entropy["mean_reasoning_tokens"] == pytest.approx(95 / 3)
    assert entropy["savings_vs_full"] == pytest.approx(43 / 159)
    by_method = {(r["method"], r["id"]): r for r in rows}
    assert len(rows) == 7 * 3
    assert by_method[("cot:2@10", "c")]["answer"] == "3"
    assert by_method[("cot:2@10", "c")]["stop_reason"] == "certain"
    assert by_method[("cot:2@10", "b")]["stop_reason"] == "finished"
    assert by_method[("oracle", "a")]["reasoning_tokens"] == 20
    assert by_method[("cot:2@40", "a")]["stop_reason"] == "certain"


def test_self_consistency_over_samples(tmp_path: Path) -> None:
    # s: answers 10, 10, 9, 10 (tokens 40, 50, 60, 30); t: 5, 6, 5, 5 (10 each); all finished
    lines = [trace("s", "10", a, "finished", n, [], sample=k)
             for k, (a, n) in enumerate([("10", 40), ("10", 50), ("9", 60), ("10", 30)])]
    lines += [trace("t", "5", a, "finished", 10, [], sample=k)
              for k, a in enumerate(["5", "6", "5", "5"])]
    _, summary = replay_traces(load_traces(write(tmp_path / "t.jsonl", lines)), ["sc:0.7@2"])
    # sc: majority of 4 → both right, tokens (180 + 40)/2 = 110
    assert summary["sc"]["n"] == 2
    assert (summary["sc"]["accuracy"], summary["sc"]["mean_reasoning_tokens"]) == (1.0, 110)
    # sc:0.7@2: s's first two agree (Certaindex 1) → stop at 90 tokens; t's disagree (0) → 40
    detect = summary["sc:0.7@2"]
    assert (detect["accuracy"], detect["mean_reasoning_tokens"]) == (1.0, 65)
    assert detect["baseline"] == "sc"
    assert detect["savings_vs_full"] == pytest.approx(1 - 65 / 110)
    assert detect["share_of_oracle"] is None
    assert summary["full"]["n"] == 8 and summary["full"]["accuracy"] == pytest.approx(6 / 8)


def test_no_share_of_the_oracle_when_it_saves_nothing(tmp_path: Path) -> None:
    # the answer settles only at the last probe before the natural end: stopping there skips
    # 5 tokens but pays a 9-token probe, so the oracle saves less than nothing
    lines = [trace("d", "2", "2", "finished", 25, [("1", True, 9), ("2", True, 9)])]
    _, summary = replay_traces(load_traces(write(tmp_path / "t.jsonl", lines)), ["cot:1@10"])
    assert summary["oracle"]["mean_reasoning_tokens"] == 20
    assert summary["oracle"]["savings_vs_full"] == pytest.approx(1 - 29 / 25)
    assert summary["cot:1@10"]["savings_vs_full"] == pytest.approx(1 - 19 / 25)
    assert [s["share_of_oracle"] for s in summary.values()] == [None, None, None]


def test_answer_entropy_is_the_normalised_certaindex() -> None:
    assert answer_entropy(["1", "1", "1"]) == (1.0, "1")
    value, majority = answer_entropy(["1/2", "0.5", "3", "3"])  # {1/2, 0.5} are one class
    assert value == pytest.approx(0.5) and majority == "1/2"
    assert answer_entropy(["", "", ""])[0] == pytest.approx(0.0)


def test_a_chunk_that_is_not_a_multiple_of_the_recorded_chunk_is_refused(
    traces_file: Path,
) -> None:
    with pytest.raises(ValueError, match="not a multiple of the recorded chunk size 10"):
        replay_traces(load_traces(traces_file), ["cot:2@15"])
    with pytest.raises(ValueError, match="unknown method 'fastest'"):
        replay_traces(load_traces(traces_file), ["fastest"])


def test_default_methods_keep_the_presets_that_fit(traces_file: Path) -> None:
    _, summary = replay_traces(load_traces(traces_file))
    # recorded chunk 10 divides none of the presets' 64 or 32: only the chunk-free rules
    assert list(summary) == ["full", "oracle", "entropy:0.6@5"]


def test_replay_command_writes_summary_results_and_plot(traces_file: Path,
                                                        tmp_path: Path) -> None:
    from PIL import Image

    out = run_cli("replay", "--traces", str(traces_file), "--out", str(tmp_path / "r"),
              "--methods", "cot:2@10")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert list(summary) == ["full", "oracle", "cot:2@10"]
    for values in summary.values():
        assert {"n", "accuracy", "mean_reasoning_tokens", "mean_probe_tokens",
                "savings_vs_full", "share_of_oracle"} <= set(values)
    assert summary["cot:2@10"]["share_of_oracle"] == pytest.approx(55 / 72)
    rows = (tmp_path / "r" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 9
    with Image.open(tmp_path / "r" / "accuracy_vs_tokens.png") as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert "| cot:2@10 | 3 | 100.0% |" in out.stdout


BAD_LINES = [
    ("{not json", "not a trace: Invalid JSON"),
    ('["a list"]', "not a trace"),
    (json.dumps({k: v for k, v in TRACES[0].items() if k != "gold"}), "gold: Field required"),
    (json.dumps({**TRACES[0], "id": "z", "reasoning_tokens": 5}),
     "more tokens than the trace's reasoning_tokens"),
    (json.dumps({**TRACES[0], "id": "z", "stop_reason": "tired"}), "stop_reason"),
    (json.dumps({**TRACES[0], "id": "z", "probes": [{"tokens": 1}]}),
     "probes.0.text: Field required"),
    (json.dumps(TRACES[0]), "duplicate trace 'a' sample 0 (first on line 1)"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_malformed_trace_line_names_the_file_and_line(tmp_path: Path, line: str,
                                                        message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TRACES[0]) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"{path}:3: ") as info:
        load_traces(path)
    assert message in str(info.value)


def test_replay_command_reports_a_bad_line_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TRACES[0]) + "\n{oops\n", encoding="utf-8")
    out = run_cli("replay", "--traces", str(path), "--out", str(tmp_path / "r"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"dynasor-graph: {path}:2: not a trace: Invalid JSON")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
