"""A Certaindex-aware scheduler for many reasoning programs sharing one endpoint (paper §3.3).

A *program* is one run of a graph. :meth:`Scheduler.run` runs it with the scheduler's admission
hook installed in the endpoint adapter (a context variable, so only this program's calls see
it): before every model call the adapter awaits an admission slot, and the server's ``usage``
is reported back after it. The graphs
are not changed; the scheduler learns each program's Certaindex from the run's ``values`` stream.

* **where the order is enforced** (``mode``): ``"queue"`` — an in-process admission queue lets
  at most ``max_in_flight`` requests reach the server at once, best first; ``"vllm_priority"``
  — no queue: every request goes out at once carrying the policy's order in vLLM's ``priority``
  field (lower runs first; serve with ``--scheduling-policy priority``), so any number of client
  processes share one policy through the server with no coordinator; ``"both"``.
* **order** (``policy``): ``"fifo"`` is request arrival order. ``"certaindex"`` moves the
  request of a program close to finishing ahead of requests sent up to ``starvation_s``
  earlier: its key is its send time minus ``starvation_s * closeness``, where
  ``closeness = 1 - (1 - certaindex) * share of its budget left`` (approximate SRPT). A
  program whose closeness is below ``signal_below`` (no probe has agreed yet, no budget
  spent) keeps its FIFO place: where the Certaindex says nothing, the order *is* FIFO. No
  request is overtaken by one sent more than ``starvation_s`` after it (starvation guard).
* **gang** (optional, the paper's gang scheduling): a request's place is its *program's* start
  instead of its own send time, so a program's later rounds keep the place it arrived with and
  programs finish one after another instead of sharing the server round by round (request
  FIFO over multi-round programs is processor sharing). Under ``fifo`` that is program FIFO
  (Parrot's App-FIFO); under ``certaindex`` the advance then moves whole programs.
* **soft deadline** (optional, ``deadline_s``): once a program has run longer than this, its
  requests go behind every request of a program still within its deadline (among late ones,
  the usual order). Under overload, request FIFO lets late programs keep their share, so the
  ones that could still make it miss too; this serves those first and still answers every
  program. A late program waits while on-time ones do: bound it with ``timeout_s``.
* **budgets**: each program may generate ``program_budget`` tokens (reasoning + probes); what a
  program did not use returns to a pool that uncertain programs borrow from
  (``reallocate``), all within ``global_token_budget``. A program stops before a request whose
  ``max_tokens`` would not fit: budgets are never exceeded.
* **early termination** (optional): a program whose Certaindex is still below
  ``abstain_below`` after ``abstain_after`` of its budget stops and abstains (empty answer).
* **wall-clock limit** (optional): a program still running after ``timeout_s`` stops.

A stopped program ends normally: its result is the last state the graph reached, with the
latest probe's answer and ``stop_reason`` ``budget``, ``timeout`` or ``abstained``::

    scheduler = Scheduler(SchedulerConfig(max_in_flight=4, program_budget=512))
    graph = create_cot(endpoint, CoTConfig(max_tokens=1024))
    results = await asyncio.gather(*(scheduler.run(graph, {"question": q}) for q in questions))
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._endpoint import admission, request_tags

Policy = Literal["fifo", "certaindex"]
Mode = Literal["queue", "vllm_priority", "both"]
SchedulerStop = Literal["budget", "timeout", "abstained"]
T = TypeVar("T")

PRIORITY_EPOCH = 1_735_689_600.0
"""2025-01-01 UTC: vLLM priorities are deciseconds since then (a 32-bit int until 2031), so
the priorities of all client processes on one machine (one clock) compare."""


LATE_S = 86_400.0
"""How much later a late program's vLLM priority is: a day, behind any on-time request."""


class SchedulerConfig(BaseModel):
    """How a :class:`Scheduler` shares one endpoint among programs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Policy = Field(default="certaindex", description="request-level fifo or certaindex")
    mode: Mode = Field(
        default="queue", description="queue: in-process admission queue; vllm_priority: "
        "vLLM's priority field on every request, no queue; both")
    max_in_flight: int = Field(default=4, ge=1, le=4096,
                               description="requests at the server (queue and both)")
    program_budget: int | None = Field(
        default=None, ge=1, description="tokens a program may generate (reasoning + probes)")
    global_token_budget: int | None = Field(
        default=None, ge=1, description="tokens all programs together may generate")
    reallocate: bool = Field(
        default=True, description="lend budget settled programs left unused to uncertain ones")
    abstain_after: float | None = Field(
        default=None, gt=0, le=1, description="share of the budget after which hopeless stop")
    abstain_below: float = Field(default=0.5, ge=0, le=1, description="hopeless: Certaindex below")
    timeout_s: float | None = Field(default=None, gt=0, description="wall-clock limit a program")
    starvation_s: float = Field(
        default=30.0, gt=0, description="the most a request can be overtaken by: requests sent "
        "later than this after it never go first")
    signal_below: float = Field(
        default=0.5, ge=0, le=1, description="closeness below this is no signal: FIFO place")
    gang: bool = Field(
        default=False, description="order by the program's start, not the request's send time")
    deadline_s: float | None = Field(
        default=None, gt=0, description="soft deadline: past it a program's requests go behind "
        "every on-time program's")

    @model_validator(mode="after")
    def _budgets(self) -> SchedulerConfig:
        if (self.global_token_budget or self.abstain_after) and self.program_budget is None:
            raise ValueError("global_token_budget and abstain_after need a program_budget")
        return self


@dataclass(frozen=True)
class ProgramResult:
    """How one program ended: the graph's output state and what the scheduler saw of it."""

    program_id: str
    output: dict[str, Any]
    """The graph's last output state (``CoTOutput`` for Dynasor-CoT)."""
    stop_reason: str
    """The graph's (``certain``, ``finished``, ``budget``) or the scheduler's (``budget``,
    ``timeout``, ``abstained``)."""
    stopped_by_scheduler: bool
    tokens: int
    """Completion tokens of this program's requests, from the server's ``usage``."""
    requests: int
    queued_s: float
    """Time its requests spent waiting for admission."""
    latency_s: float
    """From :meth:`Scheduler.run` to the end of the program."""

    @property
    def answer(self) -> str:
        return str(self.output.get("answer", ""))


class _Stopped(RuntimeError):
    """Raised at admission to end a program the scheduler stops; never leaves :meth:`run`.
    A ``RuntimeError``: LangGraph's default retry policy does not retry those."""

    def __init__(self, reason: SchedulerStop) -> None:
        super().__init__(reason)
        self.reason: SchedulerStop = reason


@dataclass(eq=False)
class _Program:
    id: str
    seq: int
    start: float
    wall_start: float  # time.time() at start: the clock every client process shares
    limit: int | None  # tokens it may generate; grows when it borrows
    deadline: float | None
    certaindex: float = 0.0
    spent: int = 0
    reserved: int = 0  # max_tokens of its admitted or waiting requests
    requests: int = 0
    queued_s: float = 0.0
    stop: SchedulerStop | None = None


@dataclass(eq=False)
class _Waiter:
    program: _Program
    seq: int
    since: float
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class _Graph(Protocol):
    def astream(self, input: Any, config: Any = None, *, stream_mode: Any = ...,
                ) -> AsyncIterator[Any]: ...


class Scheduler:
    """Admits the model calls of many concurrent graph runs to one endpoint (module doc)."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._in_flight = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        # Tokens a program may get beyond its own allotment: the unallocated global budget,
        # plus what finished programs left unused.
        self._pool = self.config.global_token_budget or 0
        self.admission_log: deque[str] = deque(maxlen=10_000)
        """Program ids in the order their requests were admitted, the latest 10 000."""
        self.priority_log: deque[tuple[str, int]] = deque(maxlen=10_000)
        """``(program id, priority)`` of the requests tagged for vLLM, the latest 10 000."""

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered."""
        return self._in_flight

    @property
    def pool(self) -> int:
        """Tokens available to lend to programs that exhaust their own budget."""
        return self._pool

    async def run(self, graph: _Graph, input: Any, config: Any = None, *,
                  program_id: str | None = None, timeout_s: float | None = None,
                  ) -> ProgramResult:
        """Run ``graph`` on ``input`` (``None`` resumes a checkpointed thread) as one program.

        Endpoint errors propagate (after the graph's own retries); scheduler stops return a
        result. ``timeout_s`` overrides the config's wall-clock limit for this program.
        """
        seq = next(self._seq)
        start = asyncio.get_running_loop().time()  # the clock asyncio.timeout_at reads
        limit = timeout_s if timeout_s is not None else self.config.timeout_s
        program = _Program(id=program_id or f"program-{seq}", seq=seq, start=start,
                           wall_start=time.time(), limit=self._allot(),
                           deadline=start + limit if limit else None)
        token = admission.set(functools.partial(self._admit, program))
        tags = request_tags.set(functools.partial(self._tags, program)
                                if self.config.mode != "queue" else None)
        state: dict[str, Any] = {}
        try:
            async with asyncio.timeout_at(program.deadline):
                async for state in graph.astream(input, config, stream_mode="values"):
                    program.certaindex = float(state.get("certaindex") or 0.0)
        except _Stopped as stopped:
            program.stop = stopped.reason
        except TimeoutError:
            if program.deadline is None or self._now() < program.deadline:
                raise
            program.stop = "timeout"
        finally:
            request_tags.reset(tags)
            admission.reset(token)
            self._finish(program)
        output = dict(state)
        if program.stop is not None:
            probes = output.get("probes") or []
            answer = "" if program.stop == "abstained" else (
                output.get("answer") or (probes[-1]["answer"] if probes else ""))
            output.update(answer=answer, stop_reason=program.stop, decision="exit")
        return ProgramResult(
            program_id=program.id, output=output,
            stop_reason=str(output.get("stop_reason") or ""),
            stopped_by_scheduler=program.stop is not None, tokens=program.spent,
            requests=program.requests, queued_s=program.queued_s,
            latency_s=self._now() - start)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _allot(self) -> int | None:
        budget = self.config.program_budget
        if budget is None or self.config.global_token_budget is None:
            return budget
        granted = min(budget, self._pool)
        self._pool -= granted
        return granted

    def _finish(self, program: _Program) -> None:
        for waiter in [w for w in self._waiting if w.program is program]:
            self._waiting.remove(waiter)
        if program.limit is not None and (self.config.reallocate
                                          or self.config.global_token_budget is not None):
            self._pool += max(program.limit - program.spent, 0)
            program.limit = program.spent

    async def _admit(self, program: _Program, max_tokens: int, call: Awaitable[T]) -> T:
        """The admission hook: await ``call`` once admitted; count the tokens it generated."""
        try:
            await self._acquire(program, max_tokens)
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()  # never sent: no "coroutine was never awaited" warning
            raise
        used = 0
        try:
            response = await call
            used = int(getattr(getattr(response, "usage", None), "completion_tokens", 0) or 0)
            return response
        finally:
            self._release(program, max_tokens, used)

    async def _acquire(self, program: _Program, max_tokens: int) -> None:
        self._check(program, max_tokens)
        program.reserved += max_tokens
        waiter = _Waiter(program, next(self._seq), self._now())
        self._waiting.append(waiter)
        self._dispatch()
        try:
            await waiter.ready
        except BaseException:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.ready.done() and not waiter.ready.cancelled():
                self._release(program, max_tokens, 0)  # admitted just as it was cancelled
                raise
            program.reserved -= max_tokens
            raise
        program.requests += 1
        program.queued_s += self._now() - waiter.since

    def _check(self, program: _Program, max_tokens: int) -> None:
        """Stop the program here if it is out of time, hopeless, or out of budget."""
        config, now = self.config, self._now()
        if program.deadline is not None and now >= program.deadline:
            raise _Stopped("timeout")
        budget = config.program_budget
        if (config.abstain_after is not None and budget is not None
                and program.spent >= config.abstain_after * budget
                and program.certaindex < config.abstain_below):
            raise _Stopped("abstained")
        if program.limit is None:
            return
        short = program.spent + program.reserved + max_tokens - program.limit
        if short > 0:
            if not config.reallocate or self._pool < short:
                raise _Stopped("budget")
            self._pool -= short
            program.limit += short

    def _release(self, program: _Program, max_tokens: int, used: int) -> None:
        self._in_flight -= 1
        program.reserved -= max_tokens
        program.spent += used
        self._dispatch()

    def _dispatch(self) -> None:
        cap = self.config.max_in_flight if self.config.mode != "vllm_priority" else None
        while self._waiting and (cap is None or self._in_flight < cap):
            waiter = min(self._waiting, key=self._priority)
            self._waiting.remove(waiter)
            self._in_flight += 1
            self.admission_log.append(waiter.program.id)
            waiter.ready.set_result(None)

    def closeness(self, program: _Program) -> float:
        """How close ``program`` is to finishing, 0 to 1: ``1 - (1 - certaindex) * share of
        its budget left`` (without a budget: its Certaindex); 0 below ``signal_below``."""
        config = self.config
        if config.policy == "fifo":
            return 0.0
        left = 1.0
        if program.limit:
            left = min(max(program.limit - program.spent, 0) / program.limit, 1.0)
        close = 1.0 - (1.0 - program.certaindex) * left
        return close if close >= config.signal_below and close > 0 else 0.0

    def _advance(self, program: _Program) -> float:
        """Seconds a request of ``program`` goes ahead of its arrival place (0 under fifo)."""
        return self.config.starvation_s * self.closeness(program)

    def _late(self, program: _Program) -> bool:
        """Past its soft deadline (``deadline_s``)."""
        deadline = self.config.deadline_s
        return deadline is not None and self._now() - program.start > deadline

    def _priority(self, waiter: _Waiter) -> tuple[float, ...]:
        """Smaller goes first: late programs last; then send time (program start with
        ``gang``), advanced by the program's closeness (module doc)."""
        program = waiter.program
        place = program.start if self.config.gang else waiter.since
        return (self._late(program), place - self._advance(program),
                program.seq if self.config.gang else 0, waiter.seq)

    def priority(self, program: _Program) -> int:
        """The vLLM ``priority`` of a request of ``program`` sent now: its key in deciseconds
        since :data:`PRIORITY_EPOCH` (wall clock, so every process on the host agrees); a late
        program's is :data:`LATE_S` later."""
        place = program.wall_start if self.config.gang else time.time()
        late = LATE_S if self._late(program) else 0.0
        return int((place - PRIORITY_EPOCH - self._advance(program) + late) * 10)

    def _tags(self, program: _Program, max_tokens: int) -> dict[str, Any]:
        """The request-tagging hook: vLLM's ``priority`` for the program's next request."""
        priority = self.priority(program)
        self.priority_log.append((program.id, priority))
        return {"priority": priority}
