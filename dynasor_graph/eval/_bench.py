"""Bench: live runs of full reasoning, fixed-budget truncation and Dynasor-CoT on an endpoint.

Every (problem, method) pair is one run of the CoT graph with that method's settings (see
:mod:`dynasor_graph._methods`); runs share the endpoint ``concurrency`` at a time. With a
``scheduler`` each run is a program of one :class:`Scheduler` instead (its ``max_in_flight``
caps the requests), arriving ``arrival_rate`` per second (default: all at once). Tokens are
the server's ``usage``; answers are graded with math-verify::

    rows, summary = await run_bench(endpoint, load_dataset("generated:arithmetic?n=20"),
                                    ["full", "mid", "truncate:128"], max_tokens=512)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from .._answers import equivalent
from .._endpoint import Endpoint
from .._state import CoTInput
from ..cot import CoTConfig, create_cot
from ..scheduler import Scheduler, SchedulerConfig
from ._datasets import Problem
from ._methods import REPLAY_ONLY, Method, parse_methods
from ._report import ResultRow, progress_bar, run_workers, running_postfix, summarize

DEFAULT_METHODS = ("full", "low", "mid", "high")


async def run_one(endpoint: Endpoint, problem: Problem, method: Method, max_tokens: int,
                  seed: int | None = None, scheduler: Scheduler | None = None) -> ResultRow:
    """Solve ``problem`` once with ``method`` (as a program of ``scheduler`` if given); the row
    carries the server's token counts."""
    graph = create_cot(endpoint, method.config(max_tokens, seed))
    start = time.perf_counter()
    question = CoTInput(question=problem.question)
    result = (await scheduler.run(graph, question, program_id=f"{problem.id}/{method.name}")
              ).output if scheduler else await graph.ainvoke(question)
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
    scheduler: SchedulerConfig | None = None,
    arrival_rate: float | None = None,
    deadline_s: float | None = None,
    calibrated: CoTConfig | None = None,
) -> tuple[list[ResultRow], dict[str, dict[str, Any]]]:
    """Run every method on every problem; return the rows (problem order) and the summary.

    ``deadline_s`` adds the share of programs answered within it to the summary;
    ``calibrated`` (:meth:`CoTConfig.from_calibration`) adds the method ``calibrated``, which
    must share ``max_tokens`` with the others (its bound is against full reasoning there).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if (arrival_rate is not None and arrival_rate <= 0) or (
            deadline_s is not None and deadline_s <= 0):
        raise ValueError("arrival_rate and deadline_s must be positive")
    if arrival_rate is not None and scheduler is None:
        raise ValueError("arrival_rate needs a scheduler (programs arrive while others run)")
    if not problems:
        raise ValueError("no problems to bench")
    parsed = parse_methods(list(methods))
    if calibrated is not None:
        if calibrated.max_tokens != max_tokens:
            raise ValueError(f"the calibrated rule was certified at max_tokens="
                             f"{calibrated.max_tokens}, not {max_tokens}")
        parsed.append(Method("calibrated", "cot", threshold=calibrated.certainty_threshold,
                             chunk=calibrated.chunk_size, fixed=calibrated))
    live_only = [m.name for m in parsed if m.kind in REPLAY_ONLY]
    if live_only:
        raise ValueError(f"{', '.join(live_only)}: only in replay (record traces first)")
    for method in parsed:
        method.config(max_tokens, seed)  # invalid settings fail before any request
    queue: asyncio.Queue[tuple[float, int, Problem, Method]] = asyncio.Queue()
    for index, problem in enumerate(problems):
        for method in parsed:
            arrival = queue.qsize() / arrival_rate if arrival_rate else 0.0
            queue.put_nowait((arrival, index, problem, method))
    done: list[tuple[int, int, ResultRow]] = []
    bar = progress_bar(queue.qsize(), "bench", progress)
    order = {m.name: i for i, m in enumerate(parsed)}
    shared = Scheduler(scheduler) if scheduler else None
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def worker() -> None:
        while not queue.empty():
            arrival, index, problem, method = queue.get_nowait()
            await asyncio.sleep(max(0.0, start + arrival - loop.time()))
            row = await run_one(endpoint, problem, method, max_tokens, seed, shared)
            row["arrival_s"], row["finish_s"] = round(arrival, 3), round(loop.time() - start, 3)
            done.append((index, order[method.name], row))
            if bar is not None:
                bar.update()
                bar.set_postfix(running_postfix([(r["correct"], r["reasoning_tokens"])
                                                 for _, _, r in done]))

    # Under a scheduler every program runs at once (it caps the requests); else `concurrency`.
    await run_workers(worker, queue.qsize() if shared else min(concurrency, queue.qsize()), bar)
    rows = [row for _, _, row in sorted(done, key=lambda item: item[:2])]
    return rows, summarize(rows, [m.name for m in parsed], deadline_s=deadline_s)
