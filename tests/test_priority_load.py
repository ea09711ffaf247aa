"""Load across processes: several client processes (``benchmarks/load.py``), hundreds of
programs, through the real ``vllm-router`` to two scripted replicas, every client in
``mode="vllm_priority"`` (no in-process queue, no coordinator). Zero errors other than the
scripted refusals, no program past its budget (counted on the replicas), every request with a
priority, and nothing left running: every client exits cleanly with no task, socket or fd left,
and the replicas end with no request in flight. Bounded in count; no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scripted_server import SERVED_NAME, Script, Worker

from dynasor_graph.local._fleet import Router

pytestmark = pytest.mark.slow  # minutes of load: `make test`, not `make test-fast`

CLIENTS, PROGRAMS, BUDGET = 3, 70, 60
LOAD = Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"


class Counted(Script):
    """A per-question script that counts its requests in flight and the priorities it saw."""

    def __init__(self, probes: list[str], refuse: bool = False) -> None:
        super().__init__(probes=probes, refuse_message="prompt too long" if refuse else None)
        self.lock = threading.Lock()
        self.active = 0
        self.priorities: list[Any] = []

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.active += 1
            self.priorities.append(body.get("priority"))
        try:
            return super().reply(body)
        finally:
            with self.lock:
                self.active -= 1


def scripts() -> dict[str, Counted]:
    """Each client's questions: most settle after 1 to 3 probes, every 25th is refused, every
    40th never settles (its budget stops it)."""
    own: dict[str, Counted] = {}
    for client in range(CLIENTS):
        for i in range(PROGRAMS):
            question = f"c{client}-What is {i} + {i + 1}?"
            if i % 25 == 7:
                own[question] = Counted([], refuse=True)
            elif i % 40 == 3:
                own[question] = Counted(["1} hmm"])
            else:
                own[question] = Counted(["wait"] * (i % 3) + [f"{2 * i + 1}}}"])
    return own


def test_several_client_processes_share_the_router_and_leave_nothing_behind() -> None:
    own = scripts()
    with Worker("a") as a, Worker("b") as b:
        for worker in (a, b):  # both replicas answer every question the same way
            worker.script.questions = own  # type: ignore[assignment]
        with Router([a.url, b.url], policy="consistent_hash", startup_timeout_s=60) as router:
            clients = [subprocess.Popen(
                [sys.executable, str(LOAD), "--api-base", router.api_base,
                 "--model", f"hosted_vllm/{SERVED_NAME}", "--programs", str(PROGRAMS),
                 "--prefix", f"c{k}-", "--mode", "vllm_priority", "--max-in-flight", "1",
                 "--program-budget", str(BUDGET), "--timeout-s", "240", "--no-reallocate"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for k in range(CLIENTS)]
            reports = []
            try:
                for client in clients:  # LiteLLM's imports take a while on a busy machine
                    out, err = client.communicate(timeout=400)
                    assert out, err[-2000:]
                    reports.append(json.loads(out))
            finally:
                for client in clients:
                    if client.poll() is None:
                        client.kill()
                        client.communicate()
    refused, endless = PROGRAMS // 25 + (PROGRAMS % 25 > 7), PROGRAMS // 40 + (PROGRAMS % 40 > 3)
    for report in reports:
        # Nothing left behind but the HTTP client's idle keep-alive connections to the router
        # (a scripted server closes each connection; the router keeps them open): at most one
        # per request that was in flight at once — in priority mode, one per program.
        assert report["tasks_left"] == 0, report
        assert report["sockets"][1] - report["sockets"][0] <= PROGRAMS, report
        assert report["fds"][1] - report["fds"][0] <= PROGRAMS, report
        assert report["errors"] == {"ServerRefused": refused}
        assert report["unexplained"] == [] and report["tasks_left"] == 0
        assert report["answered"] == PROGRAMS - refused
        assert report["stop_reasons"] == {"certain": PROGRAMS - refused - endless,
                                          "budget": endless}
        assert report["max_program_tokens"] <= BUDGET
    # On the replicas' side: both served, no question past its budget, every request tagged,
    # none still in flight. (The clients' warm-up programs are the workers' own script.)
    assert a.sessions and b.sessions
    spent = Counter({q: sum(e["usage"]["completion_tokens"] for e in s.log)
                     for q, s in own.items()})
    assert max(spent.values()) <= BUDGET
    assert sum(spent.values()) == sum(r["tokens"] for r in reports)
    assert all(isinstance(p, int) for s in own.values() for p in s.priorities)
    assert sum(len(s.priorities) for s in own.values()) >= CLIENTS * PROGRAMS
    assert all(s.active == 0 for s in own.values())
