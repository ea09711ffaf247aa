"""The Certaindex scheduler against request-level FIFO on one endpoint, same in-flight cap.

The same programs (Dynasor-CoT on each problem) arrive at a fixed rate; each policy runs them
through its own :class:`~dynasor_graph.Scheduler`. ``fifo`` is the plain serving baseline (no
budget, no early termination). ``certaindex`` gets ``--program-budget`` (default: none), which
sets the tokens left its SJF priority ranks on; with ``--abstain-after`` a third policy,
``certaindex+abstain``, also stops programs whose Certaindex is below ``--abstain-below`` after
that share of the budget; ``--gang`` adds ``certaindex+gang`` (each request placed at its
program's start, not its send time). Reported per policy: programs finished per minute, goodput
(programs finished within the deadline per minute; abstentions count as finished, ``answered
goodput`` leaves them out), p50/p95 latency from arrival to answer, deadline hit rate, tokens
(the server's ``usage``) and accuracy. An unmeasured warm-up pass runs first (``--no-warmup``:
none), so the policies meet the same warm prefix cache::

    python benchmarks/scheduler_bench.py --limit 30 --arrival-rate 0.3 --deadline-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from dynasor_graph import SchedulerConfig
from dynasor_graph.eval import load_dataset, run_bench
from dynasor_graph.local import default_endpoint


def policies(args: argparse.Namespace) -> dict[str, SchedulerConfig]:
    """The scheduler each compared policy runs with: fifo plain, certaindex as configured."""
    cap, budget = args.concurrency, args.program_budget
    configs = {"fifo": SchedulerConfig(policy="fifo", max_in_flight=cap),
               "certaindex": SchedulerConfig(max_in_flight=cap, program_budget=budget)}
    if args.gang:
        configs["certaindex+gang"] = SchedulerConfig(max_in_flight=cap, program_budget=budget,
                                                     gang=True)
    if args.abstain_after is not None:
        configs["certaindex+abstain"] = SchedulerConfig(
            max_in_flight=cap, program_budget=budget, abstain_after=args.abstain_after,
            abstain_below=args.abstain_below)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="generated:arithmetic?n=30&seed=0&level=mixed")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--method", default="cot:2@16", help="a bench method (default cot:2@16)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--arrival-rate", type=float, default=0.3, help="programs per second")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--program-budget", type=int,
                        help="certaindex only: tokens a program may generate (reasoning + probes)")
    parser.add_argument("--abstain-after", type=float,
                        help="adds certaindex+abstain: share of the budget after which it stops "
                             "hopeless programs (needs --program-budget)")
    parser.add_argument("--gang", action="store_true",
                        help="adds certaindex+gang: requests placed at their program's start")
    parser.add_argument("--abstain-below", type=float, default=0.5,
                        help="certaindex+abstain: hopeless means Certaindex below this")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="first run the programs once, unmeasured, so every policy meets "
                             "the same warm server (prefix cache) rather than the first a cold one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--api-base")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/scheduler"))
    args = parser.parse_args()
    configs = policies(args)  # invalid settings fail before the server starts
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    problems = load_dataset(args.dataset, args.limit)
    summaries: dict[str, dict[str, Any]] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    with default_endpoint(args.model, args.api_base, timeout_s=600) as endpoint:
        if args.warmup:  # all programs at once through the fifo scheduler
            asyncio.run(run_bench(endpoint, problems, [args.method], max_tokens=args.max_tokens,
                                  seed=args.seed, scheduler=configs["fifo"], progress=True))
        for name, config in configs.items():
            started = time.perf_counter()
            rows, summary = asyncio.run(run_bench(
                endpoint, problems, [args.method], max_tokens=args.max_tokens, seed=args.seed,
                scheduler=config, arrival_rate=args.arrival_rate, deadline_s=args.deadline_s,
                progress=True))
            s = summary[args.method]
            answered = sum(r["stop_reason"] != "abstained"
                           and r["finish_s"] - r["arrival_s"] <= args.deadline_s for r in rows)
            summaries[name] = {
                **s, "scheduler": config.model_dump(),
                "abstained": sum(r["stop_reason"] == "abstained" for r in rows),
                "answered_goodput_per_min": answered * s["throughput_per_min"] / s["n"],
                "bench_s": time.perf_counter() - started}
            with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as sink:
                sink.writelines(json.dumps(row) + "\n" for row in rows)
    (args.out / "summary.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in vars(args).items()}, "model": endpoint.model,
         "policies": summaries}, indent=2) + "\n", encoding="utf-8")
    print(table(summaries))
    fifo = summaries["fifo"]["goodput_per_min"]
    for name, s in summaries.items():
        if name != "fifo" and fifo:
            print(f"goodput {name} / fifo: {s['goodput_per_min'] / fifo:.2f}x "
                  f"(answered: {s['answered_goodput_per_min'] / fifo:.2f}x)")


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """The per-policy figures as a Markdown table."""
    lines = ["| policy | n | accuracy | abstained | finished/min | goodput/min "
             "| answered goodput/min | p50 latency s | p95 latency s | within deadline "
             "| reasoning tokens | probe tokens |", "|---" * 12 + "|"]
    for policy, s in summaries.items():
        lines.append(
            f"| {policy} | {s['n']} | {s['accuracy']:.1%} | {s['abstained']} "
            f"| {s['throughput_per_min']:.2f} | {s['goodput_per_min']:.2f} "
            f"| {s['answered_goodput_per_min']:.2f} | {s['p50_latency_s']:.1f} "
            f"| {s['p95_latency_s']:.1f} | {s['deadline_hit_rate']:.1%} "
            f"| {s['mean_reasoning_tokens']:.1f} | {s['mean_probe_tokens']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
