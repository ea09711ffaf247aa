"""Calibrated early exit on recorded traces: tokens saved at the certified bound against the
presets and the oracle, and how often the bound holds on the held-out split.

Every trace is replayed once under every candidate rule (what ``dynasor-graph calibrate``
searches); then, for each ``--eps`` and each of ``--splits`` seeded splits, the Learn-then-Test
procedure picks a rule on the ordering and calibration parts and the held-out part reports its
realized paired loss and savings. The presets and the oracle are replayed on all traces.

    dynasor-graph record --dataset "generated:arithmetic?n=150&seed=0" --chunk-size 32 \\
        --max-tokens 256 --seed 0 --out traces.jsonl            # or any model's traces
    python benchmarks/calibrate_bench.py traces.jsonl --eps 0.05 0.1 --confidence 0.9

Writes ``--out``/calibrate_bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from dynasor_graph.cot import EFFORT_PRESETS
from dynasor_graph.eval import CalibrationError, load_traces
from dynasor_graph.eval._calibrate import (
    certify,
    evaluate,
    minimum_traces,
    one_per_problem,
    search_space,
    split,
)
from dynasor_graph.eval._replay import replay_traces


def run(path: Path, eps_values: list[float], confidence: float, splits: int, holdout: float,
        order: float) -> dict[str, Any]:
    """The figures for one traces file (see the module docstring)."""
    traces = one_per_problem(load_traces(path))
    chunk, budget = traces[0].settings.chunk_size, traces[0].settings.max_tokens
    rules = search_space(traces)
    table = evaluate(traces, rules)
    delta = 1 - confidence
    presets = [p for p, (_, c) in EFFORT_PRESETS.items() if c % chunk == 0]
    _, summary = replay_traces(traces, presets)
    full_tokens = summary["full"]["mean_reasoning_tokens"] + summary["full"]["mean_probe_tokens"]
    compared = {name: {"accuracy": s["accuracy"], "savings": s["savings_vs_full"],
                       "loss": _paired_loss(traces, name)} for name, s in summary.items()}
    results: dict[str, Any] = {}
    for eps in eps_values:
        held_loss, held_saved, chosen, refused = [], [], [], 0
        for seed in range(splits):
            order_rows, cal_rows, held = split(len(traces), holdout, order, seed)
            try:
                c = certify(table, order_rows, cal_rows, eps, delta).chosen
            except CalibrationError:
                refused += 1  # full reasoning: no loss, no savings
                held_loss.append(0.0)
                held_saved.append(0.0)
                continue
            chosen.append(rules[c].method)
            held_loss.append(float(table.loss[held, c].mean()))
            held_saved.append(float(table.savings(held)[c]))
        results[str(eps)] = {
            "eps": eps, "min_calibration_traces": minimum_traces(eps, delta),
            "refused": refused / splits,
            "bound_held_on_holdout": float(np.mean([x <= eps for x in held_loss])),
            "mean_holdout_loss": statistics.fmean(held_loss),
            "mean_holdout_savings": statistics.fmean(held_saved),
            "most_chosen": max(set(chosen), key=chosen.count) if chosen else None,
        }
    return {"traces": str(path), "problems": len(traces), "model": traces[0].settings.model,
            "chunk_size": chunk, "max_tokens": budget, "candidates": len(rules),
            "confidence": confidence, "splits": splits, "holdout": holdout, "order": order,
            "full_accuracy": summary["full"]["accuracy"], "full_tokens": full_tokens,
            "compared": compared, "calibrated": results,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": datetime.date.today().isoformat()}


def _paired_loss(traces: list[Any], method: str) -> float:
    """Share of traces the method gets wrong where full reasoning was right."""
    rows, _ = replay_traces(traces, [method])
    full = {(r["id"], r["sample"]): r["correct"] for r in rows if r["method"] == "full"}
    mine = [r for r in rows if r["method"] == method]
    return sum(full[(r["id"], r["sample"])] and not r["correct"] for r in mine) / len(mine)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"{report['model']}, {report['problems']} problems, chunk {report['chunk_size']}, "
             f"budget {report['max_tokens']}; full reasoning: accuracy "
             f"{report['full_accuracy']:.1%}, {report['full_tokens']:.1f} tokens/problem; "
             f"{report['candidates']} candidates, confidence {report['confidence']}, "
             f"{report['splits']} splits (held-out {report['holdout']}, order {report['order']})",
             "", "| rule | paired loss | saved vs full | bound held on held-out | refused |",
             "|---|---|---|---|---|"]
    for r in report["calibrated"].values():
        lines.append(f"| calibrated, eps {r['eps']} (mostly {r['most_chosen']}) "
                     f"| {r['mean_holdout_loss']:.1%} (held-out) "
                     f"| {r['mean_holdout_savings']:.1%} (held-out) "
                     f"| {r['bound_held_on_holdout']:.0%} | {r['refused']:.0%} |")
    for name, c in report["compared"].items():
        lines.append(f"| {name} | {c['loss']:.1%} | {c['savings']:.1%} | — | — |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", type=Path)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--order", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path("bench-out/calibrate"))
    args = parser.parse_args()
    report = run(args.traces, args.eps, args.confidence, args.splits, args.holdout, args.order)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibrate_bench.json").write_text(json.dumps(report, indent=2) + "\n",
                                                    encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
