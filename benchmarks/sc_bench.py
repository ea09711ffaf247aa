"""Self-consistency with Certaindex against fixed-n majority voting: samples and tokens saved.

Both methods run the same SC graph on the same server with the same per-path seeds (path ``i``
uses ``seed + i``), so the Certaindex run's paths are exactly the first paths of the fixed run:
the only difference is when sampling stops. Methods:

- ``fixed``: ``n`` plain samples, majority vote (``width = max_width = detect_at = n``);
- ``certaindex``: start with ``detect`` samples, exit once the answer entropy Certaindex reaches
  ``threshold``, else widen by ``widen_by`` up to ``n`` (the paper's SC: detect at 5, 0.7);
- ``dynasor``: as ``certaindex``, but every path is a Dynasor-CoT worker probing every
  ``--chunk`` tokens (majority vote over Dynasor workers).

    python benchmarks/sc_bench.py --dataset "generated:arithmetic?n=30&seed=3&level=1"
    python benchmarks/sc_bench.py --dataset ../shared/data/gsm8k_dev.jsonl --limit 20 \\
        --api-base http://gpu:8000/v1 --model M --max-tokens 2048

Token counts are the server's ``usage``. Writes ``--out``/results.jsonl and summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dynasor_graph import CoTConfig, Endpoint, SCConfig, create_sc
from dynasor_graph._answers import equivalent
from dynasor_graph.eval import Problem, load_dataset
from dynasor_graph.eval._report import run_workers
from dynasor_graph.local import default_endpoint


def configs(args: argparse.Namespace) -> dict[str, SCConfig]:
    """The three methods' settings; plain paths reason their whole budget in one chunk."""
    plain = CoTConfig(chunk_size=args.max_tokens, max_tokens=args.max_tokens, seed=args.seed)
    dynasor = CoTConfig(chunk_size=args.chunk, max_tokens=args.max_tokens, seed=args.seed,
                        certainty_threshold=2)
    budget = args.n * (args.max_tokens + 20) + 1  # never binding: every path may finish
    adaptive = {"width": args.detect, "max_width": args.n, "widen_by": args.widen_by,
                "threshold": args.threshold, "token_budget": budget}
    return {
        "fixed": SCConfig(path=plain, width=args.n, max_width=args.n, detect_at=args.n,
                          token_budget=budget),
        "certaindex": SCConfig.model_validate({"path": plain, **adaptive}),
        "dynasor": SCConfig.model_validate({"path": dynasor, **adaptive}),
    }


async def run(endpoint: Endpoint, problems: list[Problem], methods: dict[str, SCConfig],
              concurrency: int) -> list[dict[str, Any]]:
    """Every method on every problem, ``concurrency`` programs at a time."""
    graphs = {name: create_sc(endpoint, config) for name, config in methods.items()}
    jobs = [(name, p) for p in problems for name in graphs]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="sc bench", unit="run")

    async def worker() -> None:
        while jobs:
            name, problem = jobs.pop(0)
            start = time.perf_counter()
            result = await graphs[name].ainvoke({"question": problem.question})
            usage = result["usage"]
            rows.append({
                "id": problem.id, "method": name, "answer": result["answer"],
                "gold": problem.gold, "correct": equivalent(result["answer"], problem.gold),
                "samples": len(result["paths"]),
                "path_answers": [p.get("answer", "") for p in result["paths"]],
                "tokens": usage["reasoning_tokens"] + usage["probe_completion_tokens"],
                "certaindex": result["certaindex"], "stop_reason": result["stop_reason"],
                "wall_s": time.perf_counter() - start,
            })
            bar.update()

    await run_workers(worker, concurrency, bar)
    return rows


def summarize(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy, mean samples and tokens, savings against ``fixed``, agreement with it."""
    fixed = {r["id"]: r for r in rows if r["method"] == "fixed"}
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        samples = statistics.fmean(r["samples"] for r in mine)
        tokens = statistics.fmean(r["tokens"] for r in mine)
        base_samples = statistics.fmean(fixed[r["id"]]["samples"] for r in mine)
        base_tokens = statistics.fmean(fixed[r["id"]]["tokens"] for r in mine)
        summary[method] = {
            "n": len(mine),
            "accuracy": statistics.fmean(float(r["correct"]) for r in mine),
            "mean_samples": samples,
            "mean_tokens": tokens,
            "samples_saved": 1 - samples / base_samples,
            "tokens_saved": 1 - tokens / base_tokens,
            "same_answer_as_fixed": statistics.fmean(
                float(equivalent(r["answer"], fixed[r["id"]]["answer"])) for r in mine),
            "mean_wall_s": statistics.fmean(r["wall_s"] for r in mine),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="generated:arithmetic?n=30&seed=3&level=1")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--n", type=int, default=8, help="fixed-n samples = maximum width")
    parser.add_argument("--detect", type=int, default=4, help="samples before the first check")
    parser.add_argument("--widen-by", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=256, help="per path")
    parser.add_argument("--chunk", type=int, default=32, help="probe interval of 'dynasor'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=2, help="programs at once")
    parser.add_argument("--methods", nargs="+", default=["fixed", "certaindex", "dynasor"])
    parser.add_argument("--model")
    parser.add_argument("--api-base")
    parser.add_argument("--out", type=Path, default=Path("sc_bench_out"))
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    problems = load_dataset(args.dataset, args.limit)
    chosen = {k: v for k, v in configs(args).items() if k in {"fixed", *args.methods}}
    with default_endpoint(args.model, args.api_base, timeout_s=600) as endpoint:
        rows = asyncio.run(run(endpoint, problems, chosen, args.concurrency))
    summary = summarize(rows, list(chosen))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.jsonl").open("w") as out:
        out.writelines(json.dumps(r) + "\n" for r in rows)
    meta = {"dataset": args.dataset, "problems": len(problems), "model": endpoint.model,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "settings": {k: v for k, v in vars(args).items() if k not in {"out", "api_base"}}}
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "methods": summary},
                                                      indent=2, default=str))
    print(f"{'method':<11} {'acc':>5} {'samples':>8} {'tokens':>8} {'samples saved':>14} "
          f"{'tokens saved':>13} {'same as fixed':>14}")
    for method, row in summary.items():
        print(f"{method:<11} {row['accuracy']:>5.0%} {row['mean_samples']:>8.2f} "
              f"{row['mean_tokens']:>8.1f} {row['samples_saved']:>14.0%} "
              f"{row['tokens_saved']:>13.0%} {row['same_answer_as_fixed']:>14.0%}")


if __name__ == "__main__":
    main()
