"""Dynasor-CoT against full reasoning on a jsonl problem set, and the client's probe overhead.

Part 1 — accuracy and tokens, through ``dynasor_graph.run_bench`` (what ``dynasor-graph bench``
runs): every problem is solved by ``full`` (one chunk of the whole budget, then a single
forced-answer probe if the budget cut it off) and by each effort preset.

Part 2 — one probe round (chunk + probe) timed three ways on the same server with the same
requests: through the graph (LangGraph + LiteLLM), through a plain httpx loop, and through an
httpx loop that sends the next chunk and the probe concurrently, as the reference does.

    python benchmarks/cot_bench.py --limit 20                        # embedded local vLLM
    python benchmarks/cot_bench.py --api-base http://gpu:8000/v1 --model M --max-tokens 4096

Writes ``--out``/results.jsonl, summary.json, the plot and probe_round.json; prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import httpx

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.cot import EFFORT_PRESETS
from dynasor_graph.eval import load_dataset, run_bench
from dynasor_graph.eval._report import table, write_report
from dynasor_graph.local import default_endpoint

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


async def probe_round_overhead(endpoint: Endpoint, rounds: int, chunk: int) -> dict[str, float]:
    """Seconds per (chunk + probe) round: graph vs plain httpx, sequential vs concurrent."""
    config = CoTConfig(chunk_size=chunk, max_tokens=chunk * rounds, certainty_threshold=64,
                       seed=7, system_prompt="Think step by step at length.")
    question = "Explain in detail how to compute 123 * 45 by hand."
    graph = create_cot(endpoint, config)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DATA / "gsm8k_dev.jsonl"),
                        help="jsonl file or generated:arithmetic?n=50&seed=0")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--methods", default="full," + ",".join(EFFORT_PRESETS))
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-rounds", type=int, default=12)
    parser.add_argument("--model")
    parser.add_argument("--api-base")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/cot_bench"))
    args = parser.parse_args()
    problems = load_dataset(args.dataset, args.limit)
    with default_endpoint(args.model, args.api_base, timeout_s=600) as endpoint:
        rows, summary = await run_bench(endpoint, problems, args.methods.split(","),
                                        max_tokens=args.max_tokens, seed=args.seed,
                                        concurrency=args.concurrency, progress=True)
        overhead = (await probe_round_overhead(endpoint, args.overhead_rounds, 32)
                    if args.overhead_rounds else {})
    write_report(args.out, rows, summary, f"Dynasor-CoT on {args.dataset} ({endpoint.model})")
    settings = {**{k: str(v) for k, v in vars(args).items()}, "model": endpoint.model,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    (args.out / "probe_round.json").write_text(
        json.dumps({"settings": settings, "probe_round": overhead}, indent=2), encoding="utf-8")
    print(table(summary))
    print(json.dumps(overhead, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
