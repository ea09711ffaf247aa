"""Evaluation reports shared by ``replay`` and ``bench``: result rows, summary, plot, progress.

Every method's row per problem goes to ``results.jsonl``; ``summary.json`` maps each method to
its accuracy and mean tokens; ``accuracy_vs_tokens.png`` plots one against the other.
Savings count generated tokens (reasoning plus probe completions) against the method's
baseline (``full`` reasoning; ``sc`` for self-consistency), so probes are paid for.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy_vs_tokens.png"


class ResultRow(TypedDict):
    """One method on one problem (one trace in replay, one run in bench)."""

    id: str
    sample: int | None
    method: str
    correct: bool
    answer: str
    gold: str
    reasoning_tokens: int
    probe_prompt_tokens: int
    probe_completion_tokens: int
    stop_reason: str
    wall_s: float | None
    arrival_s: NotRequired[float]
    """bench: when the program arrived, seconds after the bench started."""
    finish_s: NotRequired[float]
    """bench: when it ended; ``finish_s - arrival_s`` is its latency (queueing included)."""


def _mean(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.fmean(listed) if listed else 0.0


def summarize(rows: Sequence[ResultRow], methods: Sequence[str],
              baselines: dict[str, str] | None = None, *,
              deadline_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Per method: n, accuracy, mean tokens, probe overhead and savings against its baseline;
    for bench rows also throughput and latency (:func:`serving`).

    ``baselines`` maps a method to the method it saves against (default ``full``); a missing
    baseline makes the savings ``None``.
    """
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        reasoning = _mean(r["reasoning_tokens"] for r in mine)
        probe = _mean(r["probe_completion_tokens"] for r in mine)
        walls = [r["wall_s"] for r in mine if r["wall_s"] is not None]
        summary[method] = {
            "n": len(mine),
            "accuracy": _mean(float(r["correct"]) for r in mine),
            "mean_reasoning_tokens": reasoning,
            "mean_probe_tokens": probe,
            "mean_probe_prompt_tokens": _mean(r["probe_prompt_tokens"] for r in mine),
            "probe_overhead": probe / reasoning if reasoning else None,
            "early_exit_rate": _mean(float(r["stop_reason"] == "certain") for r in mine),
            "mean_wall_s": _mean(walls) if walls else None,
        }
        if mine and all("finish_s" in r for r in mine):
            summary[method].update(serving(mine, deadline_s))
    for method, values in summary.items():
        baseline = (baselines or {}).get(method, "full")
        base = summary.get(baseline)
        values["baseline"] = baseline
        values["savings_vs_full"] = values["reasoning_savings_vs_full"] = None
        if base and base["mean_reasoning_tokens"]:
            spent = values["mean_reasoning_tokens"] + values["mean_probe_tokens"]
            full = base["mean_reasoning_tokens"] + base["mean_probe_tokens"]
            values["savings_vs_full"] = 1 - spent / full
            values["reasoning_savings_vs_full"] = (
                1 - values["mean_reasoning_tokens"] / base["mean_reasoning_tokens"])
    return summary


def serving(rows: Sequence[ResultRow], deadline_s: float | None = None) -> dict[str, Any]:
    """Programs finished per minute (from the first arrival to the last finish), p50 and p95
    latency (arrival to answer), and with a deadline the share within it and those per minute.
    """
    latencies = sorted(r["finish_s"] - r["arrival_s"] for r in rows)
    minutes = (max(r["finish_s"] for r in rows) - min(r["arrival_s"] for r in rows)) / 60
    values: dict[str, Any] = {
        "throughput_per_min": len(rows) / minutes if minutes > 0 else None,
        "p50_latency_s": _percentile(latencies, 50),
        "p95_latency_s": _percentile(latencies, 95),
    }
    if deadline_s is not None:
        hits = sum(latency <= deadline_s for latency in latencies)
        values["deadline_s"] = deadline_s
        values["deadline_hit_rate"] = hits / len(rows)
        values["goodput_per_min"] = hits / minutes if minutes > 0 else None
    return values


def _percentile(ordered: Sequence[float], q: int) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]


def write_report(out: Path, rows: Sequence[ResultRow], summary: dict[str, dict[str, Any]],
                 title: str) -> list[Path]:
    """Write ``results.jsonl``, ``summary.json`` and the plot into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results, summary_path, plot_path = out / RESULTS_FILE, out / SUMMARY_FILE, out / PLOT_FILE
    with results.open("w", encoding="utf-8") as sink:
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(summary, plot_path, title)
    return [results, summary_path, plot_path]


def plot(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against mean generated tokens (reasoning + probes), one labelled point a method."""
    from matplotlib.figure import Figure  # lazy, and no pyplot: no global backend state

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.subplots()
    points: dict[tuple[float, float], list[str]] = {}  # methods on one spot share a label
    for method, values in summary.items():
        x = values["mean_reasoning_tokens"] + values["mean_probe_tokens"]
        points.setdefault((round(x, 1), round(values["accuracy"], 4)), []).append(method)
    for (x, y), methods in points.items():
        axes.scatter([x], [y], s=36)
        axes.annotate(", ".join(methods), (x, y), textcoords="offset points", xytext=(5, 4),
                      fontsize=8, rotation=20)
    axes.set_xlabel("mean generated tokens per problem (reasoning + probes)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.03, 1.03)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = ["| method | n | accuracy | reasoning tokens | probe tokens | saved vs baseline "
             "| share of oracle |", "|---|---|---|---|---|---|---|"]

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.1%}"

    for method, s in summary.items():
        lines.append(f"| {method} | {s['n']} | {s['accuracy']:.1%} "
                     f"| {s['mean_reasoning_tokens']:.1f} | {s['mean_probe_tokens']:.1f} "
                     f"| {pct(s['savings_vs_full'])} | {pct(s.get('share_of_oracle'))} |")
    return "\n".join(lines)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or ``None`` when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True)


def running_postfix(done: Sequence[tuple[bool, int]]) -> dict[str, str]:
    """Running accuracy and mean reasoning tokens of (correct, tokens) pairs, for the bar."""
    if not done:
        return {}
    return {"acc": f"{sum(c for c, _ in done) / len(done):.2f}",
            "tok": f"{sum(t for _, t in done) / len(done):.0f}"}


async def run_workers(worker: Callable[[], Coroutine[Any, Any, None]], count: int,
                      bar: Any) -> None:
    """Run ``count`` copies of ``worker`` at once; re-raise the first failure itself (not a
    group of one) and close the progress bar whatever happens."""
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(worker())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    finally:
        if bar is not None:
            bar.close()
