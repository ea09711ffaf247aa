"""Throughput of many programs at once on one vLLM: Dynasor-CoT with sequential probing, with
overlapped probing, and plain generation (issue 16).

For each ``--programs`` N (default 8 and 32), the first N problems of ``--dataset`` run at
once in each mode, ``--repeats`` times (the modes interleaved run by run, so background load
falls on all of them alike), every run on a cold prefix cache:

- ``plain``: one non-streamed ``/v1/completions`` request per problem (the library's token
  route, the same client as the programs' chunks) with the rendered prompt ids a program
  starts from and ``max_tokens`` = the programs' reasoning budget; no probes;
- ``sequential`` and ``overlapped``: one Dynasor-CoT program per problem
  (``CoTConfig(probing=...)``, early exit on) through one :class:`~dynasor_graph.Scheduler`
  (:func:`dynasor_graph.eval.run_load`); its in-flight cap is 2N (a stream and a probe per
  program), so no request waits in the client and vLLM's batcher alone shares the server.

Greedy (``temperature=0``, ``seed=0``) throughout. Per mode: wall-clock for all N; generated
tokens and tokens per second counted twice, by vLLM's own ``vllm:generation_tokens`` counter
(the delta of ``/metrics`` around the mode) and by the server's ``usage`` as the client
received it (they must agree); programs per minute; tokens used per answer (reasoning +
probes: what the answer needed); reasoning tokens; discarded tokens (overlapped: streamed
past an exit); p50/p90 program latency; client CPU seconds; stop reasons.

Unless ``--api-base`` is given, it starts its OWN local vLLM (SmolLM2-135M on the CPU, what
``dynasor-graph serve-local`` runs) on a free port with ``VLLM_SERVER_DEV_MODE=1`` (for
``/reset_prefix_cache`` between modes), so the ``/metrics`` deltas are its own, and stops it at
the end. ``--timeout`` bounds the measured runs; a mode cut short is reported as such and
the rest are skipped. The load average of the machine is sampled every 5 s. Prints a Markdown
table of every run and one of the medians per (N, mode), and writes
``--out``/throughput.json::

    python benchmarks/throughput_bench.py   # N = 8 and 32, 256 tokens, chunk 64, threshold 2
    python benchmarks/throughput_bench.py --programs 4 --max-tokens 64 --timeout 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from dynasor_graph import CoTConfig, DynasorError, Endpoint, SchedulerConfig
from dynasor_graph._state import chat_messages, generated_tokens
from dynasor_graph._token_route import complete_tokens, render_chat
from dynasor_graph.eval import load_dataset, run_load
from dynasor_graph.eval._metrics import counter_delta, server_counters
from dynasor_graph.eval._report import progress_bar

Mode = Literal["plain", "sequential", "overlapped"]
MODES: tuple[Mode, ...] = ("plain", "sequential", "overlapped")
DATASET = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"
              / "gsm8k_dev.jsonl")
Counters = Callable[[], dict[str, float] | None]


@dataclass
class ModeRun:
    """What one mode did with N programs at once."""

    mode: Mode
    programs: int
    repeat: int = 0
    wall_s: float = 0.0
    metrics_tokens: int | None = None
    """``vllm:generation_tokens`` delta around the mode (None: the server has no /metrics)."""
    usage_tokens: int = 0
    """Generated tokens by the programs' usage records (reasoning + probes + discarded)."""
    scheduler_tokens: int | None = None
    """The same counted by the scheduler from each request's usage (a second client count)."""
    used_tokens: int = 0
    """Tokens the answers used: reasoning + probe completions (discarded left out)."""
    reasoning_tokens: int = 0
    discarded_tokens: int = 0
    prompt_tokens_metrics: int | None = None
    prefix_cache_hits: int | None = None
    latencies_s: list[float] = field(default_factory=list)
    """One per program that ended with a result (the per-answer figures divide by these)."""
    client_cpu_s: float = 0.0
    stops: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    """Programs that ended with a non-empty answer (plain: every request that returned)."""
    errors: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False

    def per_second(self, tokens: int | None) -> float | None:
        return None if tokens is None or not self.wall_s else tokens / self.wall_s

    def row(self) -> dict[str, Any]:
        """The figures of the report, rounded."""
        lat = sorted(self.latencies_s)
        return {
            "N": self.programs, "mode": self.mode, "repeat": self.repeat,
            "wall_s": round(self.wall_s, 1),
            "tokens_metrics": self.metrics_tokens, "tokens_usage": self.usage_tokens,
            "tok_s_metrics": _round(self.per_second(self.metrics_tokens)),
            "tok_s_usage": _round(self.per_second(self.usage_tokens)),
            "programs_per_min": _round(60 * len(self.latencies_s) / self.wall_s
                                       if self.wall_s else None),
            "used_per_answer": _round(self.used_tokens / max(1, len(self.latencies_s))),
            "reasoning_per_answer": _round(self.reasoning_tokens / max(1, len(self.latencies_s))),
            "discarded": self.discarded_tokens,
            "p50_s": _round(_quantile(lat, 0.5)), "p90_s": _round(_quantile(lat, 0.9)),
            "client_cpu_s": round(self.client_cpu_s, 2), "stops": self.stops,
            "answered": self.answered, "errors": self.errors, "timed_out": self.timed_out,
            "scheduler_tokens": self.scheduler_tokens,
            "prompt_tokens_metrics": self.prompt_tokens_metrics,
            "prefix_cache_hits": self.prefix_cache_hits,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (linear interpolation, as numpy's default), None if empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def metrics_reader(endpoint: Endpoint) -> Counters:
    """vLLM's token counters, or None for a server without ``/metrics``."""
    def read() -> dict[str, float] | None:
        try:
            return server_counters(endpoint.server_root)
        except httpx.HTTPError:
            return None
    return read


def cot_config(probing: Literal["sequential", "overlapped"], args: argparse.Namespace,
               ) -> CoTConfig:
    """The programs' settings: greedy, so every run of a mode makes the same tokens."""
    return CoTConfig(chunk_size=args.chunk, max_tokens=args.max_tokens,
                     certainty_threshold=args.threshold, temperature=0, probe_temperature=0,
                     seed=0, probing=probing)


async def run_plain(endpoint: Endpoint, prompts: Sequence[list[int]], max_tokens: int,
                    run: ModeRun, timeout_s: float) -> None:
    """One plain generation per prompt, all at once: latency and usage of each (a clear
    error is counted by type, as the load runner counts the programs')."""
    async def one(prompt: list[int]) -> tuple[float, int, str] | DynasorError:
        start = time.perf_counter()
        try:
            completion = await complete_tokens(endpoint, prompt, max_tokens=max_tokens,
                                               temperature=0, top_p=1, seed=0)
        except DynasorError as exc:
            return exc
        return time.perf_counter() - start, completion.completion_tokens, completion.finish_reason

    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(p)) for p in prompts]
    outcomes = [t.result() for t in tasks]
    run.errors = dict(Counter(type(o).__name__ for o in outcomes if isinstance(o, Exception)))
    results = [o for o in outcomes if not isinstance(o, Exception)]
    run.latencies_s = [round(lat, 3) for lat, _, _ in results]
    run.usage_tokens = run.used_tokens = run.reasoning_tokens = sum(n for _, n, _ in results)
    run.stops = dict(Counter(reason for _, _, reason in results))
    run.answered = len(results)


async def run_programs(endpoint: Endpoint, questions: Sequence[str], config: CoTConfig,
                       run: ModeRun, timeout_s: float) -> None:
    """N Dynasor-CoT programs at once through one scheduler (the eval load runner)."""
    scheduler = SchedulerConfig(policy="fifo", max_in_flight=2 * len(questions))
    report = await run_load(endpoint, questions, scheduler, config, timeout_s=timeout_s)
    usage = report.usage
    run.latencies_s = list(report.latencies_s)
    run.usage_tokens = generated_tokens(usage)
    run.scheduler_tokens = report.tokens
    run.reasoning_tokens = usage["reasoning_tokens"]
    run.used_tokens = usage["reasoning_tokens"] + usage["probe_completion_tokens"]
    run.discarded_tokens = usage["discarded_tokens"]
    run.stops = report.stop_reasons
    run.answered, run.errors = report.answered, report.errors


async def measure(endpoint: Endpoint, mode: Mode, questions: Sequence[str],
                  prompts: Sequence[list[int]], args: argparse.Namespace, counters: Counters,
                  timeout_s: float, repeat: int = 0) -> ModeRun:
    """One mode with ``len(questions)`` programs at once, between two /metrics readings."""
    run = ModeRun(mode=mode, programs=len(questions), repeat=repeat)
    before = counters()
    cpu, start = time.process_time(), time.perf_counter()
    try:
        if mode == "plain":
            await run_plain(endpoint, prompts, args.max_tokens, run, timeout_s)
        else:
            await run_programs(endpoint, questions, cot_config(mode, args), run, timeout_s)
    except TimeoutError:
        run.timed_out = True
    run.wall_s = time.perf_counter() - start
    run.client_cpu_s = time.process_time() - cpu
    await asyncio.sleep(args.settle_s)  # an aborted stream's last engine step lands late
    after = counters()
    if before is not None and after is not None:
        spent = counter_delta(before, after)
        run.metrics_tokens = int(spent["vllm:generation_tokens"])
        run.prompt_tokens_metrics = int(spent["vllm:prompt_tokens"])
        run.prefix_cache_hits = int(spent["vllm:prefix_cache_hits"])
    return run


async def reset_prefix_cache(endpoint: Endpoint) -> bool:
    """Empty vLLM's prefix cache (served in dev mode), so every mode starts as cold as the
    first; False if the server does not offer it."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        with contextlib.suppress(httpx.HTTPError):
            response = await client.post(f"{endpoint.server_root}/reset_prefix_cache")
            return response.status_code == 200
    return False


class LoadSampler:
    """The machine's 1-minute load average, sampled every ``every_s`` seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((round(time.monotonic() - start, 1), os.getloadavg()[0]))
            await asyncio.sleep(self.every_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self, since: float = 0.0) -> dict[str, float]:
        loads = [load for at, load in self.samples if at >= since] or [os.getloadavg()[0]]
        return {"min": round(min(loads), 2), "median": round(statistics.median(loads), 2),
                "max": round(max(loads), 2)}


async def bench(endpoint: Endpoint, args: argparse.Namespace,
                counters: Counters | None = None) -> dict[str, Any]:
    """Every (N, mode) run, in order, bounded by ``args.timeout``; the report."""
    counters = counters or metrics_reader(endpoint)
    problems = load_dataset(args.dataset, limit=max(args.programs) + 1)
    if len(problems) < max(args.programs) + 1:
        raise SystemExit(f"{args.dataset}: needs {max(args.programs) + 1} problems")
    warm_up, problems = problems[-1], problems[:-1]  # a question no measured run asks
    prompts = []
    for problem in problems:
        prompt = await render_chat(endpoint, chat_messages({"question": problem.question}, None))
        if prompt is None:
            raise SystemExit("the server must answer /tokenize (token-exact continuation)")
        prompts.append(prompt)
    sampler = LoadSampler()
    sampler.start()
    deadline = time.monotonic() + args.timeout
    runs: list[ModeRun] = []
    resets: list[bool] = []
    modes: list[Mode] = args.modes
    planned = [(n, repeat, mode) for n in args.programs for repeat in range(args.repeats)
               for mode in modes]  # the modes interleaved: background load falls on all
    bar = progress_bar(len(planned) + 1, "throughput", args.progress)
    try:
        warm_prompt = await render_chat(endpoint, chat_messages(
            {"question": warm_up.question}, None))
        assert warm_prompt is not None
        for mode in modes:  # lazy imports (LiteLLM's), pools, the engine's first batches
            await measure(endpoint, mode, [warm_up.question], [warm_prompt], args, counters,
                          max(1.0, deadline - time.monotonic()))
        if bar is not None:
            bar.update()
        measured_from = sampler.samples[-1][0] if sampler.samples else 0.0
        for n, repeat, mode in planned:
            left = deadline - time.monotonic()
            if left <= 0 or any(r.timed_out for r in runs):
                break
            resets.append(await reset_prefix_cache(endpoint))
            run = await measure(endpoint, mode, [p.question for p in problems[:n]],
                                prompts[:n], args, counters, left, repeat)
            runs.append(run)
            if bar is not None:
                bar.update()
                rate = run.per_second(run.usage_tokens) or 0.0
                bar.set_postfix({"last": f"N={n} {mode} {rate:.1f} tok/s"})
    finally:
        if bar is not None:
            bar.close()
        await sampler.stop()
    rows = [r.row() for r in runs]
    return {"rows": rows, "medians": medians(rows), "latencies_s": {
                f"{r.programs} {r.mode} #{r.repeat}": r.latencies_s for r in runs},
            "prefix_cache_reset": all(resets) if resets else None,
            "load_average": sampler.summary(measured_from), "load_samples": sampler.samples,
            "skipped": [f"{n} {mode} #{repeat}" for n, repeat, mode in planned[len(runs):]]}


MEDIAN_FIELDS = ("wall_s", "tok_s_metrics", "tok_s_usage", "programs_per_min", "p50_s", "p90_s")


def medians(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, mode), the median over its repeats of the timing figures (token counts do not
    vary: greedy, the same problems)."""
    keys = list(dict.fromkeys((r["N"], r["mode"]) for r in rows))
    out = []
    for n, mode in keys:
        mine = [r for r in rows if (r["N"], r["mode"]) == (n, mode)]
        row: dict[str, Any] = {"N": n, "mode": mode, "runs": len(mine)}
        for name in MEDIAN_FIELDS:
            values = [r[name] for r in mine if r[name] is not None]
            row[name] = round(statistics.median(values), 1) if values else None
        out.append(row)
    return out


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's Markdown table."""
    lines = ["| N | mode | run | wall s | gen tokens /metrics | gen tokens usage | "
             "tok/s /metrics | tok/s usage | programs/min | used per answer | "
             "reasoning per answer | discarded | p50 s | p90 s | client CPU s | stops |",
             "|" + "---|" * 16]
    for r in rows:
        stops = ", ".join(f"{k} {v}" for k, v in sorted(r["stops"].items()))
        if r["timed_out"]:
            stops += " (TIMED OUT)"
        if r["errors"]:
            stops += f" errors {r['errors']}"
        lines.append(
            f"| {r['N']} | {r['mode']} | {r['repeat'] + 1} | {r['wall_s']} | "
            f"{r['tokens_metrics']} | "
            f"{r['tokens_usage']} | {r['tok_s_metrics']} | {r['tok_s_usage']} | "
            f"{r['programs_per_min']} | "
            f"{r['used_per_answer']} | {r['reasoning_per_answer']} | {r['discarded']} | "
            f"{r['p50_s']} | {r['p90_s']} | {r['client_cpu_s']} | {stops} |")
    return lines


@contextlib.contextmanager
def own_server(args: argparse.Namespace) -> Iterator[Endpoint]:
    """A fresh local vLLM on a free port (or the given one), stopped at the end."""
    if args.api_base:
        yield Endpoint(model=args.model, api_base=args.api_base, timeout_s=600,
                       client=args.client)
        return
    from dynasor_graph.local import LocalServer

    os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")  # /reset_prefix_cache
    with LocalServer() as server:
        yield Endpoint(model=f"hosted_vllm/{server.served_name}", api_base=server.api_base,
                       timeout_s=600, client=args.client)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, nargs="+", default=[8, 32],
                        help="concurrent programs, one run of every mode for each")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every (N, mode)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dataset", default=DATASET, help="jsonl problems (or generated:...)")
    parser.add_argument("--max-tokens", type=int, default=256, help="reasoning budget")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--threshold", type=int, default=2, help="agreeing probes to exit")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="bound in seconds on the measured runs and the warm-up")
    parser.add_argument("--settle-s", type=float, default=1.0, help="wait before reading "
                        "/metrics after a run (not timed)")
    parser.add_argument("--api-base", help="a running server instead of a fresh one (its "
                        "/metrics deltas then include any other traffic)")
    parser.add_argument("--model", default="hosted_vllm/smollm2-135m-instruct")
    parser.add_argument("--client", choices=["litellm", "openai"], default="litellm")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/throughput"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with own_server(args) as endpoint:
        server_ready = datetime.now(UTC)
        report = asyncio.run(bench(endpoint, args))
    report.update({
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "model": endpoint.model, "api_base": endpoint.api_base,
        "own_server": not args.api_base, "client": args.client,
        "settings": {"max_tokens": args.max_tokens, "chunk": args.chunk,
                     "threshold": args.threshold, "dataset": args.dataset},
        "machine": f"{os.cpu_count()} CPU {platform.machine()}",
        "load_before": [round(x, 2) for x in load_before],
        "started": started.isoformat(timespec="seconds"),
        "server_ready": server_ready.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds")})
    lines = [*table(report["rows"]), "", "Medians over the runs:", "",
             "| N | mode | runs | " + " | ".join(MEDIAN_FIELDS) + " |",
             "|" + "---|" * (3 + len(MEDIAN_FIELDS)),
             *(f"| {m['N']} | {m['mode']} | {m['runs']} | "
               + " | ".join(str(m[f]) for f in MEDIAN_FIELDS) + " |"
               for m in report["medians"])]
    report["table"] = lines
    print("\n".join(lines))
    print(f"\nload average (1 min) during the runs: {report['load_average']}; "
          f"skipped: {report['skipped'] or 'none'}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=1))
    return 1 if report["skipped"] or any(r["timed_out"] or r["errors"]
                                         for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
