"""What ``calibrate`` shows: the certified rule next to full, the oracle and the presets (a
Markdown table and a plot), and the ``dynasor-graph calibrate`` subcommand that writes them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._calibrate import Calibration, calibrate
from ._calibrated import CalibratedRule


def add_parser(commands: Any) -> None:
    """The ``calibrate`` subcommand's arguments (``commands``: argparse's subparsers)."""
    parser = commands.add_parser(
        "calibrate", help="certify the most saving stopping rule on traces: accuracy loss "
        "vs full reasoning <= EPS with probability >= 1-DELTA; write it as a config")
    parser.add_argument("traces", type=Path, nargs="+", help="traces jsonl from `record`")
    parser.add_argument("--max-accuracy-loss", type=float, required=True, metavar="EPS",
                        help="accuracy the rule may lose against full reasoning (paired)")
    parser.add_argument("--confidence", type=float, required=True, metavar="1-DELTA",
                        help="probability, over the calibration traces, that it holds")
    parser.add_argument("--out", type=Path, required=True,
                        help="the calibrated-rule JSON to write (the plot goes beside it)")
    parser.add_argument("--holdout", type=float, default=0.3,
                        help="share of problems held out to report the realized loss")
    parser.add_argument("--order", type=float, default=0.3,
                        help="share of the rest that orders the candidates")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits")


def run(args: argparse.Namespace) -> None:
    """Certify a rule on the traces, write it and the plot, print what was certified."""
    result = calibrate(args.traces, args.max_accuracy_loss, args.confidence,
                       holdout=args.holdout, order=args.order, seed=args.seed)
    result.rule.save(args.out)
    figure = args.out.with_suffix(".png")
    plot(result, figure)
    print(table_text(result.rule))
    print(f"wrote {args.out}, {figure}")


def table_text(rule: CalibratedRule) -> str:
    """What was certified, and the rule next to full, the oracle and the presets, in Markdown."""
    cal, held = rule.calibration, rule.holdout
    lines = [
        f"certified {rule.rule.method} for {rule.model}: accuracy loss vs full reasoning "
        f"<= {rule.max_accuracy_loss:g} with confidence {rule.confidence:g} "
        f"(calibration {cal.losses}/{cal.n} lost, Clopper-Pearson bound "
        f"{cal.upper_bound:.3f}; {rule.certified} of {rule.tested} tested rules passed, "
        f"{rule.candidates} candidates)",
        "",
        "| method | split | n | paired loss | accuracy | saved vs full |",
        "|---|---|---|---|---|---|",
        f"| **{rule.rule.method}** | calibration | {cal.n} | {cal.loss:.1%} | {cal.accuracy:.1%} "
        f"| {cal.savings:.1%} |",
    ]
    if held is not None:
        verdict = "holds" if held.loss <= rule.max_accuracy_loss else "exceeded"
        lines.append(f"| **{rule.rule.method}** | held-out (bound {verdict}) | {held.n} "
                     f"| {held.loss:.1%} | {held.accuracy:.1%} | {held.savings:.1%} |")
    where = "held-out" if held is not None else "calibration"
    for name, out in rule.compared.items():
        lines.append(f"| {name} | {where} | {out.n} | {out.loss:.1%} | {out.accuracy:.1%} "
                     f"| {out.savings:.1%} |")
    return "\n".join(lines)


def plot(result: Calibration, path: Path) -> None:
    """Savings against paired loss: every candidate and the tested chain on the calibration
    split, the chosen rule, and full, the oracle and the presets on the reported split."""
    from matplotlib.figure import Figure  # lazy, and no pyplot: no global backend state

    rule, table, rows = result.rule, result.table, result.calibration_rows
    loss = table.loss[rows].mean(axis=0)
    saved = table.savings(rows)
    figure = Figure(figsize=(6.8, 4.6), layout="constrained")
    axes = figure.subplots()
    axes.scatter(saved, loss, s=10, color="0.7", label="candidates (calibration split)")
    chain = result.selection.chain
    passed = chain[: result.selection.certified]
    axes.scatter(saved[chain], loss[chain], s=18, color="tab:blue", label="tested in sequence")
    axes.scatter(saved[passed], loss[passed], s=22, color="tab:green", label="certified")
    c = result.selection.chosen
    axes.scatter([saved[c]], [loss[c]], s=120, marker="*", color="tab:red",
                 label=f"chosen {rule.rule.method}")
    axes.axhline(rule.max_accuracy_loss, color="tab:red", linestyle="--", linewidth=0.8,
                 label=f"eps = {rule.max_accuracy_loss:g}")
    where = "held-out" if rule.holdout is not None else "calibration"
    spots: dict[tuple[float, float], list[str]] = {}  # methods on one spot share a label
    for name, out in rule.compared.items():
        spots.setdefault((round(out.savings, 4), round(out.loss, 4)), []).append(name)
    for (x, y), names in spots.items():
        axes.scatter([x], [y], s=30, marker="s", color="black")
        axes.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(3, 5),
                      fontsize=7, rotation=30)
    axes.scatter([], [], s=30, marker="s", color="black", label=f"full, oracle, presets "
                 f"({where} split)")
    if rule.holdout is not None:
        axes.scatter([rule.holdout.savings], [rule.holdout.loss], s=60, marker="x",
                     color="tab:red", label="chosen on held-out")
    axes.set_xlabel("share of generated tokens saved vs full reasoning")
    axes.set_ylabel("paired accuracy loss vs full reasoning")
    axes.set_title(f"calibrate: {rule.model}, n={rule.n_traces}, confidence "
                   f"{rule.confidence:g}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.savefig(path, dpi=110)
