"""FIFO vs Certaindex priorities inside vLLM, from several client processes, under overload.

One vLLM runs with ``--scheduling-policy priority --max-num-seqs SEQS`` (started here unless
``--api-base``). For each load (fixed below, before any run), each repetition and each policy,
``--clients`` client processes start together; client ``k`` gets every ``clients``-th problem
and its programs arrive at ``rate / clients`` per second, offset so that together they arrive
at ``rate``. Every client runs a :class:`~dynasor_graph.Scheduler` with
``mode="vllm_priority"``: no in-process queue, every request carries its priority and vLLM
orders its waiting queue by it — the clients share one policy with no coordinator.

- ``fifo``: priority = the request's send time (vLLM's FCFS order, the serving baseline).
- ``certaindex``: send time advanced by ``starvation_s * closeness`` (scheduler module doc);
  no budget, no abstention: ordering alone.
- ``fifo+gang``, ``certaindex+gang``: the same, each request placed at its program's start
  instead of its send time (``gang``: program FIFO, Parrot's App-FIFO, under ``fifo``).
- ``...+deadline``: the same with the load's deadline as the scheduler's soft ``deadline_s``
  (a program past it goes behind every program still within it; every program is answered).
- ``certaindex+abstain``: the same with ``program_budget`` and ``abstain_after``: hopeless
  programs stop early (abstentions count toward goodput; ``answered goodput`` leaves them out).

Reported per (load, policy), each repetition and their mean: goodput (programs answered within
the deadline per minute, first arrival to last answer), p50/p95 latency (arrival to answer),
accuracy, tokens. An unmeasured warm-up pass runs first::

    python benchmarks/priority_bench.py --repeats 2 --clients 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dynasor_graph import Endpoint, SchedulerConfig

LOADS: dict[str, dict[str, Any]] = {
    # Fixed before any measured run: problems, arrivals per second (all clients together),
    # deadline in seconds.
    "A": {"dataset": "generated:arithmetic?n=16&seed=0&level=mixed", "rate": 0.5,
          "deadline_s": 60.0},
    "B": {"dataset": "generated:arithmetic?n=24&seed=1&level=mixed", "rate": 1.0,
          "deadline_s": 60.0},
    # Added (fixed before its first run) once A and B turned out to leave FIFO at 96-100% of
    # its programs within the deadline, where no order can raise goodput: the deadline is
    # about the unloaded p95 (A's fifo: 22 s), arrivals outrun the server about 3x.
    "C": {"dataset": "generated:arithmetic?n=32&seed=2&level=mixed", "rate": 1.0,
          "deadline_s": 30.0},
    # Added (fixed before its first run) when, on a less loaded machine, the server finished
    # 34-40 programs a minute and C left FIFO at 94% within the deadline: arrivals at 2/s
    # outrun that about 3x.
    "D": {"dataset": "generated:arithmetic?n=48&seed=3&level=mixed", "rate": 2.0,
          "deadline_s": 30.0},
}
METHOD, MAX_TOKENS, SEED = "cot:2@16", 128, 0
PROGRAM_BUDGET, ABSTAIN_AFTER = 160, 0.5


def policy(name: str, deadline_s: float) -> SchedulerConfig:
    """The scheduler every client of a policy runs."""
    if name.endswith("+deadline"):  # the same, with the load's deadline as a soft deadline
        base = policy(name.removesuffix("+deadline"), deadline_s)
        return SchedulerConfig.model_validate({**base.model_dump(), "deadline_s": deadline_s})
    if name == "fifo":
        return SchedulerConfig(policy="fifo", mode="vllm_priority")
    if name == "certaindex":
        return SchedulerConfig(policy="certaindex", mode="vllm_priority")
    if name == "certaindex+abstain":
        return SchedulerConfig(policy="certaindex", mode="vllm_priority",
                               program_budget=PROGRAM_BUDGET, abstain_after=ABSTAIN_AFTER)
    if name == "fifo+gang":
        return SchedulerConfig(policy="fifo", mode="vllm_priority", gang=True)
    if name == "certaindex+gang":
        return SchedulerConfig(policy="certaindex", mode="vllm_priority", gang=True)
    raise ValueError(f"unknown policy {name}")


POLICIES = ("fifo", "fifo+gang", "certaindex", "certaindex+gang", "certaindex+abstain",
            "fifo+deadline", "certaindex+deadline", "certaindex+gang+deadline")


def client(args: argparse.Namespace) -> None:
    """One client process: its share of the load's programs; rows as JSON on stdout. It warms
    up (imports, one 1-token request), says ``ready``, and starts at the time read from stdin."""
    from dynasor_graph._text_route import complete
    from dynasor_graph.eval import load_dataset, run_bench

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    load = LOADS[args.load]
    problems = load_dataset(load["dataset"])[args.index::args.clients]
    endpoint = Endpoint(model=args.model, api_base=args.api_base, timeout_s=900)
    asyncio.run(complete(endpoint, [{"role": "user", "content": "hi"}], "", max_tokens=1,
                         temperature=0.0, top_p=1.0))
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    rate = load["rate"]
    time.sleep(max(0.0, start_at + args.index / rate - time.time()))
    offset = time.time() - start_at
    rows, _ = asyncio.run(run_bench(
        endpoint, problems, [METHOD], max_tokens=MAX_TOKENS, seed=SEED,
        scheduler=policy(args.policy, load["deadline_s"]),
        arrival_rate=rate / args.clients if args.arrive else None,
        deadline_s=load["deadline_s"]))
    for row in rows:
        row["arrival_s"] = round(row["arrival_s"] + offset, 3)
        row["finish_s"] = round(row["finish_s"] + offset, 3)
    print(json.dumps(rows))


def run_clients(args: argparse.Namespace, api_base: str, model: str, load: str, name: str,
                arrive: bool = True) -> list[dict[str, Any]]:
    """Start ``--clients`` client processes, start them together once all are warm; their
    rows, merged."""
    processes = [subprocess.Popen(
        [sys.executable, __file__, "--client", "--api-base", api_base, "--model", model,
         "--load", load, "--policy", name, "--index", str(k), "--clients", str(args.clients),
         *([] if arrive else ["--all-at-once"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in range(args.clients)]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a client of {load}/{name} did not start")
        start_at = time.time() + 0.5
        rows: list[dict[str, Any]] = []
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{start_at}\n")
            process.stdin.flush()  # communicate() closes it
        outs = [process.communicate(timeout=3600)[0] for process in processes]
        for process, out in zip(processes, outs, strict=True):
            if process.returncode != 0:
                raise RuntimeError(f"a client of {load}/{name} failed ({process.returncode})")
            rows.extend(json.loads(out.strip().splitlines()[-1]))
        return rows
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def figures(rows: list[dict[str, Any]], deadline_s: float) -> dict[str, float]:
    """Goodput, latency and accuracy of one run's rows (all clients)."""
    latencies = sorted(r["finish_s"] - r["arrival_s"] for r in rows)
    span_min = (max(r["finish_s"] for r in rows) - min(r["arrival_s"] for r in rows)) / 60
    within = [r for r in rows if r["finish_s"] - r["arrival_s"] <= deadline_s]
    answered = [r for r in within if r["stop_reason"] != "abstained"]
    return {
        "n": len(rows),
        "goodput_per_min": len(within) / span_min,
        "answered_goodput_per_min": len(answered) / span_min,
        "throughput_per_min": len(rows) / span_min,
        "p50_latency_s": statistics.median(latencies),
        "p95_latency_s": latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)],
        "deadline_hit_rate": len(within) / len(rows),
        "accuracy": sum(bool(r["correct"]) for r in rows) / len(rows),
        "abstained": sum(r["stop_reason"] == "abstained" for r in rows),
        "mean_tokens": statistics.mean(r["reasoning_tokens"] + r["probe_completion_tokens"]
                                       for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--max-num-seqs", type=int, default=4, help="the vLLM started here")
    parser.add_argument("--api-base", help="a vLLM started with --scheduling-policy priority")
    parser.add_argument("--model", default="hosted_vllm/smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/priority"))
    # one client process (internal)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--all-at-once", dest="arrive", action="store_false",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args)
        return
    if args.clients < 2 and not os.environ.get("PRIORITY_BENCH_ONE_CLIENT"):
        raise SystemExit("--clients must be at least 2 (the point is several processes)")
    from dynasor_graph.local import LocalServer

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {
        "clients": args.clients, "repeats": args.repeats, "loads": LOADS, "method": METHOD,
        "max_tokens": MAX_TOKENS, "program_budget": PROGRAM_BUDGET,
        "abstain_after": ABSTAIN_AFTER, "max_num_seqs": args.max_num_seqs, "model": args.model,
        "uptime_before": os.getloadavg()}, "runs": []}
    with contextlib.ExitStack() as stack:
        api_base = args.api_base
        if api_base is None:
            server = stack.enter_context(LocalServer(extra_args=[
                "--scheduling-policy", "priority", "--max-num-seqs", str(args.max_num_seqs)]))
            api_base = server.api_base
        for load in args.loads:  # warm-up: every problem once, unmeasured
            run_clients(args, api_base, args.model, load, "fifo", arrive=False)
        for repeat in range(args.repeats):
            for load in args.loads:
                for name in args.policies:
                    started = time.time()
                    rows = run_clients(args, api_base, args.model, load, name)
                    run = {"load": load, "policy": name, "repeat": repeat,
                           "loadavg": os.getloadavg(), "wall_s": time.time() - started,
                           **figures(rows, LOADS[load]["deadline_s"])}
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
                    with (args.out / f"{load}-{name}-{repeat}.jsonl").open("w") as sink:
                        sink.writelines(json.dumps(r) + "\n" for r in rows)
    results["uptime_after"] = os.getloadavg()
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results["runs"]))


def table(runs: list[dict[str, Any]]) -> str:
    """Mean over repetitions per (load, policy), with each repetition's goodput and p95."""
    lines = ["| load | policy | goodput/min (runs) | answered goodput/min | p50 s | p95 s (runs) "
             "| within deadline | accuracy | abstained | vs fifo goodput |", "|---" * 10 + "|"]
    keys = sorted({(r["load"], r["policy"]) for r in runs},
                  key=lambda k: (k[0], POLICIES.index(k[1])))
    mean: dict[tuple[str, str], float] = {}
    for load, name in keys:
        group = [r for r in runs if (r["load"], r["policy"]) == (load, name)]

        def avg(field: str, group: list[dict[str, Any]] = group) -> float:
            return float(statistics.mean(r[field] for r in group))

        mean[load, name] = avg("goodput_per_min")
        base = mean.get((load, "fifo"))
        ratio = f"{mean[load, name] / base:.2f}x" if base else "-"
        lines.append(
            f"| {load} | {name} | {avg('goodput_per_min'):.2f} "
            f"({', '.join(format(r['goodput_per_min'], '.2f') for r in group)}) "
            f"| {avg('answered_goodput_per_min'):.2f} | {avg('p50_latency_s'):.1f} "
            f"| {avg('p95_latency_s'):.1f} "
            f"({', '.join(format(r['p95_latency_s'], '.0f') for r in group)}) "
            f"| {avg('deadline_hit_rate'):.0%} | {avg('accuracy'):.0%} "
            f"| {avg('abstained'):.1f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
