"""Prefix-cache hit rate with two replicas behind vllm-router: session affinity vs round robin.

Starts two local vLLM replicas (SmolLM2-135M on the CPU, ``dynasor_graph.local._fleet.Fleet``)
and runs the same Dynasor-CoT workload three times — straight to one replica, through the
router with ``consistent_hash`` (every request carries ``X-Session-ID: <thread_id>``), and
through the router with ``round_robin`` — resetting both replicas' prefix caches before each.
The rate is ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` (in tokens)
summed over both replicas: every request of a program (each chunk and each probe) re-sends the
program's prefix, and the cache is what makes it cheap. The workload is seeded and runs with
``early_exit=False``, so the three runs send the same requests.

    python benchmarks/router_cache.py                      # 12 programs, 4 in flight
    python benchmarks/router_cache.py --programs 24 --concurrency 8 --out router_cache.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from typing import Any

import httpx

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph.eval._metrics import counter_delta, server_counters
from dynasor_graph.local._fleet import Fleet, Router

QUESTIONS = [
    f"A shop sells {a} boxes with {b} pens in each box and then {c} single pens. "
    f"How many pens does it sell?"
    for a, b, c in [(3, 12, 5), (7, 8, 9), (4, 25, 3), (6, 11, 14), (9, 9, 9), (5, 16, 7),
                    (8, 13, 2), (2, 45, 11), (12, 6, 8), (11, 7, 13), (3, 33, 4), (10, 10, 1),
                    (13, 4, 6), (6, 21, 5), (15, 3, 12), (4, 19, 10)]
]
def reset_caches(fleet: Fleet) -> None:
    for server in fleet.replicas:  # needs VLLM_SERVER_DEV_MODE=1 in the server's environment
        httpx.post(f"{server.base_url}/reset_prefix_cache", timeout=30).raise_for_status()


async def workload(endpoint: Endpoint, config: CoTConfig, programs: int, concurrency: int,
                   tag: str) -> float:
    graph = create_cot(endpoint, config, early_exit=False)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await graph.ainvoke({"question": QUESTIONS[i % len(QUESTIONS)]},
                                {"configurable": {"thread_id": f"{tag}-{i}"}})

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(programs)))
    return time.perf_counter() - start


def measure(fleet: Fleet, api_base: str, label: str, args: argparse.Namespace,
            config: CoTConfig) -> dict[str, Any]:
    reset_caches(fleet)
    before = [server_counters(server.base_url) for server in fleet.replicas]
    endpoint = Endpoint(model=f"hosted_vllm/{fleet.served_name}", api_base=api_base,
                        timeout_s=600, max_retries=1)
    # the same thread ids in every run: the same programs (seeded) whatever the routing
    seconds = asyncio.run(workload(endpoint, config, args.programs, args.concurrency, "program"))
    after = [server_counters(server.base_url) for server in fleet.replicas]
    per_replica = [counter_delta(b, a) for a, b in zip(after, before, strict=True)]
    queries = sum(r["vllm:prefix_cache_queries"] for r in per_replica)
    hits = sum(r["vllm:prefix_cache_hits"] for r in per_replica)
    row = {"routing": label, "hit_rate": hits / queries if queries else 0.0,
           "hits": hits, "queries": queries, "seconds": round(seconds, 1),
           "requests_per_replica": [r["vllm:request_success"] for r in per_replica]}
    print(f"{label:>16}: hit rate {row['hit_rate']:.3f} ({hits:.0f}/{queries:.0f} prompt "
          f"tokens), requests per replica {row['requests_per_replica']}, {seconds:.0f} s",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    config = CoTConfig(chunk_size=args.chunk_size, max_tokens=args.max_tokens, seed=0)
    os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")  # /reset_prefix_cache on the replicas
    rows = []
    with Fleet(2, policy="consistent_hash") as fleet:
        rows.append(measure(fleet, fleet.replicas[0].api_base, "one server", args, config))
        rows.append(measure(fleet, fleet.api_base, "consistent_hash", args, config))
        with Router([s.base_url for s in fleet.replicas], policy="round_robin") as router:
            rows.append(measure(fleet, router.api_base, "round_robin", args, config))
    report = {"model": fleet.served_name, "replicas": 2, "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs, {platform.platform()}", "programs": args.programs,
              "concurrency": args.concurrency, "chunk_size": args.chunk_size,
              "max_tokens": args.max_tokens, "rows": rows}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
