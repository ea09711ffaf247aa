"""Certaindex priorities inside the real local vLLM: a server started by the test with
``--scheduling-policy priority --max-num-seqs 1`` (one request runs at a time, so the order in
which waiting requests finish is the order vLLM chose).

- One-call programs sent while a long request holds the only slot: the program the policy puts
  ahead (lowest priority number), sent last, finishes first; the others finish in send order.
- ``gang`` and ``deadline_s``: a program that started first but sends its call last goes
  ahead of calls sent before it (gang); a program past its soft deadline, sent first, goes
  behind calls sent after it.
- Dynasor-CoT programs in ``mode="vllm_priority"``: ``/metrics`` shows the run — one finished
  request per model call, generated tokens equal to the programs' usage, no preemption.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from conftest import with_fields

from dynasor_graph import CoTConfig, Endpoint, Scheduler, SchedulerConfig, create_cot
from dynasor_graph._text_route import complete
from dynasor_graph.eval._metrics import server_counters
from dynasor_graph.local import LocalServer
from dynasor_graph.scheduler import LATE_S, _Program

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def priority_server() -> Iterator[LocalServer]:
    with LocalServer(extra_args=["--scheduling-policy", "priority",
                                 "--max-num-seqs", "1"]) as server:
        yield server


def counters(server: LocalServer) -> dict[str, float]:
    return server_counters(server.base_url, (
        "vllm:request_success", "vllm:generation_tokens", "vllm:num_preemptions",
        "vllm:num_requests_running"))


class OneCall:
    """A one-request program (the graph protocol ``Scheduler.run`` needs): asks for 4 tokens."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def astream(self, input: Any, config: Any = None, *, stream_mode: Any = "values",
                      ) -> AsyncIterator[dict[str, Any]]:
        reply = await complete(self.endpoint, [{"role": "user", "content": input["question"]}],
                               "", max_tokens=4, temperature=0.0, top_p=1.0)
        yield {"answer": reply.text, "certaindex": 0.0}


class LateCall(OneCall):
    """A one-request program that works ``delay`` seconds before its call."""

    def __init__(self, endpoint: Endpoint, delay: float) -> None:
        super().__init__(endpoint)
        self.delay = delay

    async def astream(self, input: Any, config: Any = None, *, stream_mode: Any = "values",
                      ) -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(self.delay)
        async for state in super().astream(input, config, stream_mode=stream_mode):
            yield state


async def hold_the_slot(server: LocalServer, client: httpx.AsyncClient,
                        ) -> asyncio.Task[httpx.Response]:
    """A long request that holds the only slot once this returns."""
    blocker = asyncio.create_task(client.post(f"{server.api_base}/completions", json={
        "model": server.served_name, "prompt": "Once upon a time", "max_tokens": 300,
        "ignore_eos": True}))
    for _ in range(100):
        await asyncio.sleep(0.1)
        if counters(server)["vllm:num_requests_running"] >= 1:
            break
    return blocker


class Settled(Scheduler):
    """A scheduler whose every program is about to finish (closeness 1): its requests go
    ``starvation_s`` ahead of their send time."""

    def closeness(self, program: _Program) -> float:
        return 1.0


async def test_the_program_put_ahead_finishes_first(priority_server: LocalServer) -> None:
    endpoint = with_fields(priority_server.endpoint(), timeout_s=300)
    graph = OneCall(endpoint)
    await graph.astream({"question": "warm up"}).__anext__()  # LiteLLM's lazy imports
    before = counters(priority_server)
    fifo = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority"))
    ahead = Settled(SchedulerConfig(mode="vllm_priority", starvation_s=30))
    finished: list[str] = []

    async def run(scheduler: Scheduler, name: str) -> None:
        await scheduler.run(graph, {"question": f"Say {name}."}, program_id=name)
        finished.append(name)

    async with httpx.AsyncClient(timeout=300) as client:
        blocker = await hold_the_slot(priority_server, client)
        runs = []
        for name in ("n0", "n1", "n2"):
            runs.append(asyncio.create_task(run(fifo, name)))
            await asyncio.sleep(0.3)
        runs.append(asyncio.create_task(run(ahead, "urgent")))
        await asyncio.sleep(0.3)
        assert not blocker.done(), "the blocker ended before every program was waiting"
        (await blocker).raise_for_status()
        await asyncio.gather(*runs)
    assert finished == ["urgent", "n0", "n1", "n2"]
    # The priorities sent: send times (deciseconds) for the fifo ones, 300 ds ahead for urgent.
    sent = dict(fifo.priority_log) | dict(ahead.priority_log)
    assert sent["n0"] <= sent["n1"] <= sent["n2"]
    assert sent["urgent"] < sent["n0"] - 250
    after = counters(priority_server)
    assert after["vllm:request_success"] - before["vllm:request_success"] == 5


async def test_gang_and_soft_deadline_reorder_vllms_queue(priority_server: LocalServer) -> None:
    """While a long request holds the slot: "old" (gang) starts first and calls at 1.5 s, "late"
    (soft deadline 0.3 s) calls at 1.0 s, past its deadline; "n0" and "n1" (fifo) call at 0.3
    and 0.6 s. vLLM serves old (its program's start), n0, n1, then late (a day back)."""
    endpoint = with_fields(priority_server.endpoint(), timeout_s=300)
    await OneCall(endpoint).astream({"question": "warm up"}).__anext__()
    gang = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority", gang=True))
    soft = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority", deadline_s=0.3))
    fifo = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority"))
    finished: list[str] = []

    async def run(scheduler: Scheduler, graph: OneCall, name: str, after: float) -> None:
        await asyncio.sleep(after)
        await scheduler.run(graph, {"question": f"Say {name}."}, program_id=name)
        finished.append(name)

    async with httpx.AsyncClient(timeout=300) as client:
        blocker = await hold_the_slot(priority_server, client)
        runs = [asyncio.create_task(run(gang, LateCall(endpoint, 1.5), "old", 0)),
                asyncio.create_task(run(soft, LateCall(endpoint, 1.0), "late", 0)),
                asyncio.create_task(run(fifo, OneCall(endpoint), "n0", 0.3)),
                asyncio.create_task(run(fifo, OneCall(endpoint), "n1", 0.6))]
        await asyncio.sleep(2.0)
        assert not blocker.done(), "the blocker ended before every program was waiting"
        (await blocker).raise_for_status()
        await asyncio.gather(*runs)
    assert finished == ["old", "n0", "n1", "late"]
    sent = dict(fifo.priority_log) | dict(gang.priority_log) | dict(soft.priority_log)
    assert sent["old"] < sent["n0"] < sent["n1"] < sent["late"] - LATE_S * 10 + 20


async def test_cot_programs_in_priority_mode_show_in_metrics(
    priority_server: LocalServer,
) -> None:
    endpoint = with_fields(priority_server.endpoint(), timeout_s=300)
    scheduler = Scheduler(SchedulerConfig(mode="vllm_priority", program_budget=96,
                                          reallocate=False))
    graph = create_cot(endpoint, CoTConfig(chunk_size=16, max_tokens=64,
                                           certainty_threshold=2, seed=0))
    before = counters(priority_server)
    results = await asyncio.gather(*(
        scheduler.run(graph, {"question": f"What is {i} + {i + 2}?"}, program_id=f"p{i}")
        for i in range(3)))
    after = counters(priority_server)
    assert all(r.tokens <= 96 for r in results)
    assert after["vllm:request_success"] - before["vllm:request_success"] == sum(
        r.requests for r in results)
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == sum(
        r.tokens for r in results)
    assert after["vllm:num_preemptions"] == before["vllm:num_preemptions"]
    tagged = [p for _, p in scheduler.priority_log]
    assert len(tagged) >= sum(r.requests for r in results) and all(
        isinstance(p, int) for p in tagged)
    assert scheduler.in_flight == 0
