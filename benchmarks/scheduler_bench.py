"""The Certaindex scheduler against request-level FIFO on one endpoint, same in-flight cap.

The same programs (Dynasor-CoT on each problem) arrive at a fixed rate; each policy runs them
through its own :class:`~dynasor_graph.Scheduler`. Reported per policy: programs finished per
minute, goodput (programs answered within the deadline per minute), p50/p95 latency from
arrival to answer, deadline hit rate, tokens (the server's ``usage``) and accuracy::

    python benchmarks/scheduler_bench.py --limit 30 --arrival-rate 0.3 --deadline-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from dynasor_graph import SchedulerConfig, default_endpoint, load_dataset, run_bench

POLICIES: tuple[Literal["fifo", "certaindex"], ...] = ("fifo", "certaindex")


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model")
    parser.add_argument("--api-base")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/scheduler"))
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    problems = load_dataset(args.dataset, args.limit)
    summaries: dict[str, dict[str, Any]] = {}
    with default_endpoint(args.model, args.api_base, timeout_s=600) as endpoint:
        for policy in POLICIES:
            started = time.perf_counter()
            rows, summary = asyncio.run(run_bench(
                endpoint, problems, [args.method], max_tokens=args.max_tokens, seed=args.seed,
                scheduler=SchedulerConfig(policy=policy, max_in_flight=args.concurrency),
                arrival_rate=args.arrival_rate, deadline_s=args.deadline_s, progress=True))
            summaries[policy] = {**summary[args.method], "bench_s": time.perf_counter() - started}
            args.out.mkdir(parents=True, exist_ok=True)
            with (args.out / f"{policy}.jsonl").open("w", encoding="utf-8") as sink:
                sink.writelines(json.dumps(row) + "\n" for row in rows)
    (args.out / "summary.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in vars(args).items()}, "model": endpoint.model,
         "policies": summaries}, indent=2) + "\n", encoding="utf-8")
    print(table(summaries))
    fifo, ours = summaries["fifo"], summaries["certaindex"]
    if fifo["goodput_per_min"]:
        ratio = ours["goodput_per_min"] / fifo["goodput_per_min"]
        print(f"\ngoodput certaindex / fifo: {ratio:.2f}x")


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """The per-policy figures as a Markdown table."""
    lines = ["| policy | n | accuracy | finished/min | goodput/min | p50 latency s "
             "| p95 latency s | within deadline | reasoning tokens | probe tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for policy, s in summaries.items():
        lines.append(
            f"| {policy} | {s['n']} | {s['accuracy']:.1%} | {s['throughput_per_min']:.2f} "
            f"| {s['goodput_per_min']:.2f} | {s['p50_latency_s']:.1f} | {s['p95_latency_s']:.1f} "
            f"| {s['deadline_hit_rate']:.1%} | {s['mean_reasoning_tokens']:.1f} "
            f"| {s['mean_probe_tokens']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
