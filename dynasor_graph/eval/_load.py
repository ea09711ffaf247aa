"""Load harness: many concurrent programs through one :class:`Scheduler`, and what they leave
behind — tasks, sockets, file descriptors and memory (tracemalloc). Used by
``benchmarks/load.py`` and the load test::

    report = await run_load(endpoint, [f"What is {i} + 1?" for i in range(200)],
                            SchedulerConfig(max_in_flight=16), CoTConfig(max_tokens=64))
    assert report.ok, report
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._endpoint import Endpoint
from .._errors import DynasorError
from .._state import Usage, empty_usage, sum_usage
from ..cot import CoTConfig, create_cot
from ..scheduler import ProgramResult, Scheduler, SchedulerConfig


@dataclass(frozen=True)
class LoadReport:
    """How a load run ended. ``ok``: every program answered or failed with a clear error, and
    no task, socket or file descriptor outlived the run."""

    programs: int
    answered: int
    """Programs that ended with an answer (or were stopped by the scheduler)."""
    errors: dict[str, int]
    """Clear errors (``DynasorError`` subclasses) by type name."""
    unexplained: list[str]
    """Programs that ended with neither an answer nor a ``DynasorError``."""
    tasks_left: int
    """Tasks started during the run and still there after it (LiteLLM's one logging worker
    per event loop excepted)."""
    sockets: tuple[int, int]
    """Open sockets of this process before and after the run."""
    fds: tuple[int, int]
    peak_mb: float
    """tracemalloc's peak of Python allocations during the run."""
    retained_mb: float
    """Python allocations still held after the run, beyond those held before it."""
    tokens: int
    seconds: float
    stop_reasons: dict[str, int] = field(default_factory=dict)
    max_program_tokens: int = 0
    """The most tokens one program generated (a budget bounds it)."""
    latencies_s: tuple[float, ...] = ()
    """Each program's latency (:attr:`ProgramResult.latency_s`) that ended with a result, in
    question order."""
    usage: Usage = field(default_factory=empty_usage)
    """The programs' own usage records summed (reasoning, probes, discarded tokens)."""

    @property
    def ok(self) -> bool:
        return (not self.unexplained and self.answered + sum(self.errors.values()) == self.programs
                and self.tasks_left == 0 and self.sockets[1] <= self.sockets[0]
                and self.fds[1] <= self.fds[0])


def _fds() -> tuple[int, int]:
    """Open file descriptors of this process, and how many are sockets (Linux ``/proc``)."""
    sockets = total = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd of the listing itself, closed meanwhile
            continue
        total += 1
        sockets += target.startswith("socket:")
    return total, sockets


async def run_load(endpoint: Endpoint, questions: Sequence[str], scheduler: SchedulerConfig,
                   config: CoTConfig, *, timeout_s: float = 600,
                   thread_prefix: str | None = None) -> LoadReport:
    """Run one Dynasor-CoT program per question at once through one scheduler, bounded by
    ``timeout_s`` (then every program is cancelled and ``TimeoutError`` raised). With
    ``thread_prefix`` program ``i`` runs on thread ``{thread_prefix}{i}`` (its requests carry
    it as ``X-Session-ID``: a router keeps the program on one replica)."""
    graph = create_cot(endpoint, config)
    tasks_before = asyncio.all_tasks()
    fds_before, sockets_before = _fds()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    held_before = tracemalloc.get_traced_memory()[0]
    sched = Scheduler(scheduler)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            runs = [group.create_task(_guarded(sched.run(
                graph, {"question": q}, _thread(thread_prefix, i), program_id=f"p{i}")))
                for i, q in enumerate(questions)]
        seconds = time.perf_counter() - start
        outcomes = [run.result() for run in runs]
        del runs, group
        await asyncio.sleep(0)  # let finished tasks' callbacks run
        held, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    fds_after, sockets_after = _fds()
    results = [o for o in outcomes if isinstance(o, ProgramResult)]
    errors = Counter(type(o).__name__ for o in outcomes if isinstance(o, DynasorError))
    answered = [r for r in results if r.answer or r.stopped_by_scheduler]
    unexplained = [f"{q!r}: {o!r}" for q, o in zip(questions, outcomes, strict=True)
                   if not isinstance(o, DynasorError) and not any(o is r for r in answered)]
    return LoadReport(
        programs=len(questions), answered=len(answered),
        errors=dict(errors), unexplained=unexplained,
        tasks_left=len([t for t in asyncio.all_tasks() - tasks_before if not _litellm_worker(t)]),
        sockets=(sockets_before, sockets_after), fds=(fds_before, fds_after),
        peak_mb=round(peak / 2**20, 1), retained_mb=round((held - held_before) / 2**20, 1),
        tokens=sum(r.tokens for r in results), seconds=round(seconds, 2),
        stop_reasons=dict(Counter(r.stop_reason for r in results)),
        max_program_tokens=max((r.tokens for r in results), default=0),
        latencies_s=tuple(round(r.latency_s, 3) for r in results),
        usage=sum_usage(r.output["usage"] for r in results if "usage" in r.output))


def _thread(prefix: str | None, index: int) -> dict[str, Any] | None:
    return None if prefix is None else {"configurable": {"thread_id": f"{prefix}{index}"}}


def _litellm_worker(task: asyncio.Task[Any]) -> bool:
    """LiteLLM's logging worker: one long-lived task per event loop, started lazily."""
    return getattr(task.get_coro(), "__qualname__", "").startswith("LoggingWorker.")


async def _guarded(run: Coroutine[Any, Any, ProgramResult]) -> ProgramResult | Exception:
    """A program's result, or the exception it ended with (so one failure cancels nothing)."""
    try:
        return await run
    except Exception as exc:
        return exc
