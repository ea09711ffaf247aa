"""Bench: live runs of full reasoning, fixed-budget truncation and Dynasor-CoT on an endpoint.

Every (problem, method) pair is one run of the CoT graph with that method's settings (see
:mod:`dynasor_graph._methods`); runs share the endpoint ``concurrency`` at a time. Tokens are
the server's ``usage``; answers are graded with math-verify::

    rows, summary = await run_bench(endpoint, load_dataset("generated:arithmetic?n=20"),
                                    ["full", "mid", "truncate:128"], max_tokens=512)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from ._answers import equivalent
from ._config import Endpoint
from ._datasets import Problem
from ._methods import REPLAY_ONLY, Method, parse_methods
from ._report import ResultRow, progress_bar, run_workers, running_postfix, summarize
from .cot import create_dynasor_cot

DEFAULT_METHODS = ("full", "low", "mid", "high")


async def run_one(endpoint: Endpoint, problem: Problem, method: Method, max_tokens: int,
                  seed: int | None = None) -> ResultRow:
    """Solve ``problem`` once with ``method``; the row carries the server's token counts."""
    graph = create_dynasor_cot(endpoint, method.config(max_tokens, seed))
    start = time.perf_counter()
    result = await graph.ainvoke({"question": problem.question})
    seconds = time.perf_counter() - start
    usage, answer = result["usage"], result["answer"]
    return ResultRow(
        id=problem.id, sample=None, method=method.name,
        correct=equivalent(answer, problem.gold), answer=answer, gold=problem.gold,
        reasoning_tokens=usage["reasoning_tokens"],
        probe_prompt_tokens=usage["probe_prompt_tokens"],
        probe_completion_tokens=usage["probe_completion_tokens"],
        stop_reason=str(result["stop_reason"]), wall_s=round(seconds, 3))


async def run_bench(
    endpoint: Endpoint,
    problems: Sequence[Problem],
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    max_tokens: int = 1024,
    seed: int | None = None,
    concurrency: int = 1,
    progress: bool = False,
) -> tuple[list[ResultRow], dict[str, dict[str, Any]]]:
    """Run every method on every problem; return the rows (problem order) and the summary."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not problems:
        raise ValueError("no problems to bench")
    parsed = parse_methods(list(methods))
    live_only = [m.name for m in parsed if m.kind in REPLAY_ONLY]
    if live_only:
        raise ValueError(f"{', '.join(live_only)}: only in replay (record traces first)")
    for method in parsed:
        method.config(max_tokens, seed)  # invalid settings fail before any request
    queue: asyncio.Queue[tuple[int, Problem, Method]] = asyncio.Queue()
    for index, problem in enumerate(problems):
        for method in parsed:
            queue.put_nowait((index, problem, method))
    done: list[tuple[int, int, ResultRow]] = []
    bar = progress_bar(queue.qsize(), "bench", progress)
    order = {m.name: i for i, m in enumerate(parsed)}

    async def worker() -> None:
        while not queue.empty():
            index, problem, method = queue.get_nowait()
            row = await run_one(endpoint, problem, method, max_tokens, seed)
            done.append((index, order[method.name], row))
            if bar is not None:
                bar.update()
                bar.set_postfix(running_postfix([(r["correct"], r["reasoning_tokens"])
                                                 for _, _, r in done]))

    await run_workers(worker, min(concurrency, queue.qsize()), bar)
    rows = [row for _, _, row in sorted(done, key=lambda item: item[:2])]
    return rows, summarize(rows, [m.name for m in parsed])
