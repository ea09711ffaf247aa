"""Wall-clock of Dynasor-CoT against plain generation of the same tokens: sequential vs
overlapped probing (issue 16).

Against one running vLLM (default: the shared local server), on one prompt, greedy
(``temperature=0``, ``seed=0``) so every run makes the same tokens:

1. **Same tokens** — ``early_exit=False``: the solve reasons to ``--max-tokens`` (or the
   model's end) probing at every chunk; "plain" is ONE non-streamed ``/v1/completions``
   request with the same rendered prompt ids and ``max_tokens`` = the tokens the solve
   reasoned. Chunk 32 and 64; sequential, overlapped, and overlapped re-submitting its
   stream every 2 chunks (``resubmit_every=2``, what keeping a scheduler's priority costs).
2. **What a user feels** — ``early_exit=True`` (threshold 2) against plain generation to the
   model's own end (``--end-tokens`` cap).

Each figure is the median of ``--runs`` runs; the configurations are interleaved run by run,
so background load falls on all of them alike. Prints a Markdown table and writes
``--out``/overlap.json.

    python benchmarks/overlap_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._state import chat_messages
from dynasor_graph._token_route import render_chat
from dynasor_graph.cot import Probing

QUESTION = ("Explain step by step how to multiply 37 by 24, checking every step twice, "
            "then do the same for 48 times 19.")


async def plain(endpoint: Endpoint, prompt: list[int], max_tokens: int) -> tuple[float, int]:
    """One plain generation: its wall-clock and the tokens the server generated."""
    body = {"model": endpoint.served_name, "prompt": [prompt], "max_tokens": max_tokens,
            "temperature": 0, "seed": 0}
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        response = await client.post(f"{endpoint.api_base}/completions", json=body)
        wall = time.perf_counter() - start
    response.raise_for_status()
    return wall, int(response.json()["usage"]["completion_tokens"])


async def solve(endpoint: Endpoint, config: CoTConfig, early_exit: bool) -> dict[str, Any]:
    """One Dynasor-CoT run: wall-clock, tokens, probes and usage."""
    graph = create_cot(endpoint, config, early_exit=early_exit)
    start = time.perf_counter()
    result = await graph.ainvoke({"question": QUESTION})
    wall = time.perf_counter() - start
    usage = result["usage"]
    return {"wall_s": wall, "reasoning_tokens": usage["reasoning_tokens"],
            "discarded_tokens": usage.get("discarded_tokens", 0),
            "probes": len(result["probes"]), "stop_reason": result["stop_reason"],
            "answer": result["answer"]}


def config(chunk: int, probing: Probing, max_tokens: int, threshold: int,
           resubmit: int | None = None) -> CoTConfig:
    return CoTConfig(chunk_size=chunk, max_tokens=max_tokens, certainty_threshold=threshold,
                     temperature=0, probe_temperature=0, seed=0, probing=probing,
                     resubmit_every=resubmit)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-base", default="http://127.0.0.1:18000/v1")
    parser.add_argument("--model", default="hosted_vllm/smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--end-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/overlap"))
    args = parser.parse_args()
    endpoint = Endpoint(model=args.model, api_base=args.api_base, timeout_s=600)
    prompt = await render_chat(endpoint, chat_messages({"question": QUESTION}, None))
    assert prompt is not None, "the server must answer /tokenize"
    modes: list[tuple[str, Probing, int | None]] = [
        ("sequential", "sequential", None), ("overlapped", "overlapped", None),
        ("overlapped+resubmit", "overlapped", 2)]
    same = {f"{name} c{chunk}": config(chunk, probing, args.max_tokens, 64, resubmit)
            for chunk in (32, 64) for name, probing, resubmit in modes}
    early = {f"{name} c{chunk} exit": config(chunk, probing, args.end_tokens, 2)
             for chunk in (32, 64) for name, probing, _ in modes[:2]}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in [*same, *early]}
    plains: dict[str, list[float]] = {}
    await solve(endpoint, same["sequential c32"], False)  # warm-up: imports, caches, pools
    for _ in range(args.runs):
        for name, cfg in same.items():
            run = await solve(endpoint, cfg, False)
            rows[name].append(run)
            wall, made = await plain(endpoint, prompt, run["reasoning_tokens"])
            assert made == run["reasoning_tokens"], (made, run)
            plains.setdefault(name, []).append(wall)
        for name, cfg in early.items():
            rows[name].append(await solve(endpoint, cfg, True))
        wall, made = await plain(endpoint, prompt, args.end_tokens)
        plains.setdefault("to the end", []).append(wall)
        plains.setdefault("end tokens", []).append(float(made))
    table = ["| run | tokens | probes | discarded | solve s | plain s | ratio |",
             "|---|---|---|---|---|---|---|"]
    report: dict[str, Any] = {"command": "python benchmarks/overlap_bench.py "
                              f"--runs {args.runs} --max-tokens {args.max_tokens} "
                              f"--end-tokens {args.end_tokens}",
                              "model": args.model, "machine": f"{os.cpu_count()} CPU "
                              f"{platform.machine()}, load {os.getloadavg()[0]:.1f}",
                              "date": datetime.now(UTC).isoformat(timespec="minutes"),
                              "rows": rows, "plain": plains}
    for name, runs in rows.items():
        solve_s = statistics.median(r["wall_s"] for r in runs)
        key = name if name in plains else "to the end"
        plain_s = statistics.median(plains[key])
        last = runs[-1]
        table.append(f"| {name} | {last['reasoning_tokens']} | {last['probes']} | "
                     f"{last['discarded_tokens']} | {solve_s:.1f} | {plain_s:.1f} | "
                     f"{solve_s / plain_s:.2f}x |")
    table.append(f"\nplain to the end: {int(statistics.median(plains['end tokens']))} tokens")
    print("\n".join(table))
    args.out.mkdir(parents=True, exist_ok=True)
    report["table"] = table
    (args.out / "overlap.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
