"""Load across processes: three client processes, 300 Dynasor-CoT programs, through the real
``vllm-router`` (``consistent_hash``) to two scripted replicas.

Each client runs its 100 programs at once through its own :class:`Scheduler` (16 requests in
flight, a hard budget of 60 tokens per program: no lending), each program on its own thread
(``X-Session-ID``). Asserted: the only errors are the scripted refusals; every other program
answers or is stopped by its budget; no program generates more than its budget; the clients'
tokens equal what the replicas answered; every program's requests reached one replica; and
nothing is left running — the clients exit with no task left, the router stops and nothing
listens on its port. Bounded in count; no timing assertions.

Run as a script, this file is a client: ``python test_router_load.py API_BASE CLIENT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PER_CLIENT = 100
CLIENTS = 3
BUDGET = 60


def questions(client: int) -> list[str]:
    return [f"Client {client}: what is {i} + 1?" for i in range(PER_CLIENT)]


def refused(i: int) -> bool:
    return i % 25 == 7


async def _client(api_base: str, client: int) -> None:
    from scripted_server import SERVED_NAME

    from dynasor_graph import (
        CoTConfig,
        DynasorError,
        Endpoint,
        Scheduler,
        SchedulerConfig,
        create_cot,
    )

    endpoint = Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=api_base, timeout_s=60,
                        max_retries=2)
    graph = create_cot(endpoint, CoTConfig(chunk_size=4, max_tokens=64, certainty_threshold=2))
    # no lending between programs: each budget is a hard cap to check
    scheduler = Scheduler(SchedulerConfig(max_in_flight=16, program_budget=BUDGET,
                                          reallocate=False))
    before = asyncio.all_tasks()

    async def one(i: int, question: str) -> dict[str, Any]:
        thread = f"c{client}-{i}"
        try:
            result = await scheduler.run(graph, {"question": question},
                                         {"configurable": {"thread_id": thread}},
                                         program_id=thread)
        except DynasorError as exc:
            return {"thread": thread, "error": type(exc).__name__}
        return {"thread": thread, "answer": result.answer, "tokens": result.tokens,
                "stop_reason": result.stop_reason,
                "stopped_by_scheduler": result.stopped_by_scheduler,
                "usage": result.output["usage"]}

    outcomes = await asyncio.gather(*(one(i, q) for i, q in enumerate(questions(client))))
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before
            if not getattr(t.get_coro(), "__qualname__", "").startswith("LoggingWorker.")
            and t is not asyncio.current_task()]
    print(json.dumps({"pid": os.getpid(), "outcomes": outcomes, "tasks_left": len(left)}),
          flush=True)


if __name__ == "__main__":
    asyncio.run(_client(sys.argv[1], int(sys.argv[2])))
    sys.exit(0)


import socket  # noqa: E402

import pytest  # noqa: E402
from scripted_server import Script, Worker  # noqa: E402

from dynasor_graph.local._fleet import Router  # noqa: E402

pytestmark = pytest.mark.slow  # minutes of load: `make test`, not `make test-fast`


def script_all(worker: Worker) -> None:
    """The same per-question script on every replica: most settle after 2 to 4 probes, every
    25th is refused, every 40th never settles (stopped by its budget)."""
    for client in range(CLIENTS):
        for i, question in enumerate(questions(client)):
            if refused(i):
                worker.script.questions[question] = Script(refuse_message="prompt too long")
            elif i % 40 == 3:
                worker.script.questions[question] = Script(probes=["1} hmm"])
            else:
                worker.script.questions[question] = Script(
                    probes=["wait"] * (i % 3) + [f"{i + 1}}}"])


def test_three_client_processes_through_the_router_end_cleanly() -> None:
    with Worker("a") as a, Worker("b") as b:
        workers = (a, b)
        for worker in workers:
            script_all(worker)
        with Router([w.url for w in workers], policy="consistent_hash",
                    startup_timeout_s=60) as router:
            clients = [subprocess.Popen(
                [sys.executable, __file__, router.api_base, str(client)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                cwd=Path(__file__).parent) for client in range(CLIENTS)]
            try:
                finished = [c.communicate(timeout=600) for c in clients]
            finally:
                for c in clients:
                    if c.poll() is None:
                        c.kill()
                        c.communicate()
            port = router.port
        for c, (_, err) in zip(clients, finished, strict=True):
            assert c.returncode == 0, err[-3000:]
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in finished]
    outcomes = [o for report in reports for o in report["outcomes"]]
    assert len(outcomes) == CLIENTS * PER_CLIENT
    assert all(report["tasks_left"] == 0 for report in reports)
    errors = [o for o in outcomes if "error" in o]
    assert {o["error"] for o in errors} <= {"ServerRefused"}
    assert sorted(o["thread"] for o in errors) == sorted(
        f"c{c}-{i}" for c in range(CLIENTS) for i in range(PER_CLIENT) if refused(i))
    answered = [o for o in outcomes if "error" not in o]
    assert all(o["answer"] or o["stop_reason"] == "budget" for o in answered)
    over = [o for o in answered if o["tokens"] > BUDGET or o["usage"]["reasoning_tokens"] > 64]
    assert not over, json.dumps(over[:2])
    assert sum(o["stopped_by_scheduler"] for o in answered) >= CLIENTS * (PER_CLIENT // 40)
    served = sum(e["usage"]["completion_tokens"] for w in workers for e in w.script.log)
    assert sum(o["tokens"] for o in answered) == served
    for o in outcomes:  # affinity: each program on one replica
        assert len({w.name for w in workers if o["thread"] in w.sessions}) == 1
    assert {w.name for w in workers if w.sessions} == {"a", "b"}
    with pytest.raises(ConnectionRefusedError):  # the router is gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
