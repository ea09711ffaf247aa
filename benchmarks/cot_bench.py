"""Dynasor-CoT against full reasoning on a jsonl problem set, and the client's probe overhead.

Part 1 — accuracy and tokens: every problem is solved by ``full`` (one chunk of the whole budget,
then a single forced-answer probe if the budget cut it off) and by each effort preset. Accuracy
is graded with math-verify; tokens are the server's ``usage``.

Part 2 — one probe round (chunk + probe) timed three ways on the same server with the same
requests: through the graph (LangGraph + LiteLLM), through a plain httpx loop, and through an
httpx loop that sends the next chunk and the probe concurrently, as the reference does.

    python benchmarks/cot_bench.py --limit 30                        # embedded local vLLM
    python benchmarks/cot_bench.py --api-base http://gpu:8000/v1 --model M --max-tokens 4096

Writes ``--out`` (JSON: settings, per-problem rows, summary) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from dynasor_graph import (
    EFFORT_PRESETS,
    CoTConfig,
    Endpoint,
    create_dynasor_cot,
    default_endpoint,
    equivalent,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_problems(path: Path, offset: int, limit: int) -> list[dict[str, str]]:
    """Problems as ``{id, question, gold}`` from the shared jsonl format (GSM8K: after ####)."""
    problems = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if number <= offset or not line.strip():
                continue
            try:
                row = json.loads(line)
                question = row.get("problem") or row["question"]
                gold = str(row["answer"])
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"{path}:{number}: not a problem line ({exc})") from exc
            if "####" in gold:
                gold = gold.rsplit("####", 1)[1].strip().replace(",", "")
            problems.append({"id": str(row.get("id", number)), "question": question, "gold": gold})
            if len(problems) == limit:
                break
    return problems


def method_config(method: str, max_tokens: int, seed: int) -> CoTConfig:
    if method == "full":  # one chunk of the whole budget: no probing until it is spent
        return CoTConfig(chunk_size=max_tokens, max_tokens=max_tokens, seed=seed)
    return CoTConfig.from_effort(method, max_tokens=max_tokens, seed=seed)  # type: ignore[arg-type]


async def solve_all(endpoint: Endpoint, problems: list[dict[str, str]], methods: list[str],
                    max_tokens: int, seed: int, concurrency: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(problems) * len(methods), desc="solving", unit="run")

    async def one(method: str, problem: dict[str, str]) -> dict[str, Any]:
        graph = create_dynasor_cot(endpoint, method_config(method, max_tokens, seed))
        async with gate:
            start = time.perf_counter()
            result = await graph.ainvoke({"question": problem["question"]})
            seconds = time.perf_counter() - start
        bar.update()
        usage, answer = result["usage"], result["answer"]
        return {"id": problem["id"], "method": method, "gold": problem["gold"],
                "answer": answer, "correct": equivalent(answer, problem["gold"]),
                "stop_reason": result["stop_reason"], "probes": len(result["probes"]),
                "wall_s": round(seconds, 3), **usage}

    rows = await asyncio.gather(*(one(m, p) for p in problems for m in methods))
    bar.close()
    return list(rows)


def summarize(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            "n": len(mine),
            "accuracy": statistics.mean(r["correct"] for r in mine),
            "mean_reasoning_tokens": statistics.mean(r["reasoning_tokens"] for r in mine),
            "mean_probe_prompt_tokens": statistics.mean(r["probe_prompt_tokens"] for r in mine),
            "mean_probe_completion_tokens": statistics.mean(
                r["probe_completion_tokens"] for r in mine),
            "mean_wall_s": statistics.mean(r["wall_s"] for r in mine),
            "early_exit_rate": statistics.mean(r["stop_reason"] == "certain" for r in mine),
        }
    if "full" in summary:
        full = summary["full"]["mean_reasoning_tokens"]
        for values in summary.values():
            values["reasoning_savings_vs_full"] = 1 - values["mean_reasoning_tokens"] / full
            values["total_savings_vs_full"] = 1 - (
                values["mean_reasoning_tokens"] + values["mean_probe_completion_tokens"]
            ) / (full + summary["full"]["mean_probe_completion_tokens"])
    return summary


async def probe_round_overhead(endpoint: Endpoint, rounds: int, chunk: int) -> dict[str, float]:
    """Seconds per (chunk + probe) round: graph vs plain httpx, sequential vs concurrent."""
    config = CoTConfig(chunk_size=chunk, max_tokens=chunk * rounds, certainty_threshold=64,
                       seed=7, system_prompt="Think step by step at length.")
    question = "Explain in detail how to compute 123 * 45 by hand."
    graph = create_dynasor_cot(endpoint, config)
    start = time.perf_counter()
    result = await graph.ainvoke({"question": question})
    graph_s = time.perf_counter() - start
    graph_rounds = len(result["probes"])
    served = endpoint.model.split("/", 1)[1]
    messages = [{"role": "system", "content": config.system_prompt or ""},
                {"role": "user", "content": question}]

    def body(prefix: str, max_tokens: int, temperature: float) -> dict[str, Any]:
        flags = ({"add_generation_prompt": False, "continue_final_message": True} if prefix
                 else {"add_generation_prompt": True, "continue_final_message": False})
        turn = [*messages, {"role": "assistant", "content": prefix}] if prefix else messages
        return {"model": served, "messages": turn, "max_tokens": max_tokens, "seed": 7,
                "temperature": temperature, "top_p": 0.95, **flags}

    async with httpx.AsyncClient(base_url=endpoint.api_base, timeout=300) as client:
        async def post(payload: dict[str, Any]) -> str:
            reply = await client.post("/chat/completions", json=payload)
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"] or "")

        async def loop(concurrent: bool) -> float:
            reasoning = ""
            begin = time.perf_counter()
            reasoning += await post(body(reasoning, chunk, config.temperature))
            for done in range(1, graph_rounds + 1):
                probe = body(reasoning + config.probe_suffix, 20, 0.6)
                if done == graph_rounds:
                    await post(probe)
                elif concurrent:
                    _, text = await asyncio.gather(
                        post(probe), post(body(reasoning, chunk, config.temperature)))
                    reasoning += text
                else:
                    await post(probe)
                    reasoning += await post(body(reasoning, chunk, config.temperature))
            return time.perf_counter() - begin

        plain_s = await loop(concurrent=False)
        concurrent_s = await loop(concurrent=True)
    return {
        "rounds": graph_rounds,
        "graph_s_per_round": graph_s / graph_rounds,
        "httpx_sequential_s_per_round": plain_s / graph_rounds,
        "httpx_concurrent_s_per_round": concurrent_s / graph_rounds,
        "client_overhead_ms_per_round": 1000 * (graph_s - plain_s) / graph_rounds,
    }


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| method | n | accuracy | reasoning tokens | probe tokens (prompt / completion) "
             "| reasoning saved vs full | wall s | early exits |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in summary.items():
        lines.append(
            f"| {method} | {s['n']:.0f} | {s['accuracy']:.1%} | {s['mean_reasoning_tokens']:.0f} "
            f"| {s['mean_probe_prompt_tokens']:.0f} / {s['mean_probe_completion_tokens']:.0f} "
            f"| {s.get('reasoning_savings_vs_full', 0):.1%} | {s['mean_wall_s']:.1f} "
            f"| {s['early_exit_rate']:.0%} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATA / "gsm8k_dev.jsonl")
    parser.add_argument("--offset", type=int, default=0, help="skip this many lines first")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--methods", default="full," + ",".join(EFFORT_PRESETS))
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-rounds", type=int, default=12)
    parser.add_argument("--model")
    parser.add_argument("--api-base")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cot_bench.json"))
    args = parser.parse_args()
    methods = args.methods.split(",")
    problems = load_problems(args.dataset, args.offset, args.limit)
    with default_endpoint(args.model, args.api_base, timeout_s=600) as endpoint:
        rows = await solve_all(endpoint, problems, methods, args.max_tokens, args.seed,
                               args.concurrency)
        overhead = (await probe_round_overhead(endpoint, args.overhead_rounds, 32)
                    if args.overhead_rounds else {})
    summary = summarize(rows, methods)
    report = {"settings": {**{k: str(v) for k, v in vars(args).items()}, "model": endpoint.model,
                           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"},
              "summary": summary, "probe_round": overhead, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(table(summary))
    print(json.dumps(overhead, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
