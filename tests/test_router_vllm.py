"""Several replicas behind the real ``vllm-router``.

- Fast (no vLLM): two small fake workers behind the router. With ``consistent_hash`` every
  request of a session (``X-Session-ID``, which every model call of a program carries: its
  thread's id, else its own key) reaches one worker, and Dynasor-CoT programs keep to their
  worker; with ``round_robin`` one session's requests alternate between the workers.
- Real (``vllm``): ``dynasor-graph serve-local --replicas 2 --scheduling-policy priority``
  (started once for the module) — two local vLLM replicas, each in priority mode (its own log
  shows vLLM's ``scheduling_policy``), and the router, one base URL; programs on threads run
  through a ``Scheduler(mode="vllm_priority")``, so every request carries its priority
  through the router; each program's requests all reach one replica (per-replica
  ``/metrics``), the programs' summed usage equals the sum of both replicas' token counters;
  ``dynasor-graph solve`` (no thread; CoT, and SC's paths) generates all its tokens on one
  replica; and SIGINT stops the router and both replicas.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import QUESTION, interrupt, run_cli
from scripted_server import SERVED_NAME, Worker

from dynasor_graph import CoTConfig, Endpoint, Scheduler, SchedulerConfig, create_cot
from dynasor_graph._state import sum_usage
from dynasor_graph.eval._metrics import counter_delta as delta
from dynasor_graph.eval._metrics import server_counters
from dynasor_graph.local._fleet import Router
from dynasor_graph.local._server import SERVED_MODEL_NAME, free_port


@pytest.fixture
def workers() -> Iterator[tuple[Worker, Worker]]:
    with Worker("a") as a, Worker("b") as b:
        yield a, b


def chat(router: Router, session: str) -> None:
    response = httpx.post(f"{router.api_base}/chat/completions", headers={"X-Session-ID": session},
                          json={"model": SERVED_NAME, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    response.raise_for_status()


def served_by(workers: tuple[Worker, ...], session: str) -> set[str]:
    return {w.name for w in workers for s in w.sessions if s == session}


async def test_consistent_hash_keeps_each_session_and_program_on_one_worker(
    workers: tuple[Worker, Worker],
) -> None:
    with Router([w.url for w in workers], policy="consistent_hash", startup_timeout_s=60) as router:
        sessions = [f"s{i}" for i in range(10)]
        for _ in range(3):
            for session in sessions:
                chat(router, session)
        assert all(len(served_by(workers, s)) == 1 for s in sessions)
        assert {name for s in sessions for name in served_by(workers, s)} == {"a", "b"}

        for worker in workers:  # count the programs' requests only
            worker.script.log.clear()
        endpoint = Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=router.api_base,
                            timeout_s=30, max_retries=1)
        config = CoTConfig(chunk_size=8, max_tokens=64, certainty_threshold=3)
        graph = create_cot(endpoint, config)
        threads = [f"program-{i}" for i in range(4)]
        results = await asyncio.gather(*(
            graph.ainvoke({"question": QUESTION}, {"configurable": {"thread_id": thread}})
            for thread in threads))
    for thread, result in zip(threads, results, strict=True):
        assert result["stop_reason"] == "certain"
        # three probes and their chunks, all on one worker
        assert len(served_by(workers, thread)) == 1
        assert sum(w.sessions.count(thread) for w in workers) == 6
    served = sum_usage([w.script.usage() for w in workers])
    assert sum_usage([r["usage"] for r in results]) == served


def test_round_robin_alternates_one_sessions_requests(
    workers: tuple[Worker, Worker],
) -> None:
    with Router([w.url for w in workers], policy="round_robin", startup_timeout_s=60) as router:
        for _ in range(6):
            chat(router, "s1")
    order = sorted((w.name, i) for w in workers for i, s in enumerate(w.sessions) if s == "s1")
    assert sorted(name for name, _ in order) == ["a", "a", "a", "b", "b", "b"]


# -- the real thing: two local vLLM replicas behind the router ---------------------------------

def replica_counters(base_url: str) -> dict[str, float]:
    """Token and request counters of one replica, summed over label sets."""
    return server_counters(base_url)


@dataclass(frozen=True)
class Fleet:
    """``serve-local --replicas 2``: the router's base URL and each replica's root URL and
    log."""

    router: str
    replicas: list[str]
    logs: list[str]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(model=f"hosted_vllm/{SERVED_MODEL_NAME}", api_base=self.router,
                        timeout_s=300, max_retries=1)

    def counters(self) -> list[dict[str, float]]:
        return [replica_counters(r) for r in self.replicas]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Two local vLLM replicas in priority mode behind the router, started once for this
    module the way a user starts them; SIGINT must stop the router and both replicas."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dynasor_graph", "serve-local", "--replicas", "2",
         "--port", str(port), "--scheduling-policy", "priority"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replicas: list[str] = []
    logs: list[str] = []
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().strip()
        if line != f"http://127.0.0.1:{port}/v1":
            pytest.fail(f"serve-local --replicas 2 did not start: {line!r}")
        while len(replicas) < 2:  # "replica i: http://127.0.0.1:P/v1 (log ...)", before the URL
            words = process.stderr.readline().split()
            if words[:1] == ["replica"]:
                replicas.append(words[2].removesuffix("/v1"))
                logs.append(words[4].removesuffix(")"))
        assert len(set(replicas)) == 2
        yield Fleet(line, replicas, logs)
    finally:
        code = interrupt(process, 120)
    assert code == 0, f"serve-local --replicas 2 exited with {code} on SIGINT"
    for url in [f"http://127.0.0.1:{port}", *replicas]:  # nothing listens any more
        host, _, replica_port = url.removeprefix("http://").partition(":")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(replica_port)), timeout=5).close()


@pytest.mark.vllm
async def test_serve_local_replicas_keeps_each_program_on_one_replica(fleet: Fleet) -> None:
    for log in fleet.logs:  # vLLM's own record of its flags, on both replicas
        with open(log, encoding="utf-8") as text:
            assert "'scheduling_policy': 'priority'" in text.read()
    router, replicas, endpoint = fleet.router, fleet.replicas, fleet.endpoint

    def landing(session: str) -> int:
        """The replica that serves a one-token request of ``session``."""
        before = fleet.counters()
        httpx.post(f"{router}/chat/completions", headers={"X-Session-ID": session},
                   json={"model": SERVED_MODEL_NAME, "max_tokens": 1,
                         "messages": [{"role": "user", "content": "hi"}]},
                   timeout=120).raise_for_status()
        grew = [i for i, r in enumerate(replicas)
                if delta(before[i], replica_counters(r))["vllm:request_success"] > 0]
        assert len(grew) == 1
        return grew[0]

    # Thread ids for three programs on both replicas (the hash ring depends on the ports).
    chosen: dict[int, list[str]] = {0: [], 1: []}
    for i in range(20):
        thread = f"program-{i}"
        chosen[await asyncio.to_thread(landing, thread)].append(thread)
        if len(chosen[0]) + len(chosen[1]) >= 3 and chosen[0] and chosen[1]:
            break
    assert chosen[0] and chosen[1]

    config = CoTConfig(chunk_size=16, max_tokens=64, certainty_threshold=2, seed=0)
    graph = create_cot(endpoint, config)
    scheduler = Scheduler(SchedulerConfig(mode="vllm_priority"))
    usages, start = [], fleet.counters()
    for replica, threads in chosen.items():
        for thread in threads:
            before = fleet.counters()
            tagged = len(scheduler.priority_log)
            result = (await scheduler.run(graph, {"question": QUESTION},
                                          {"configurable": {"thread_id": thread}})).output
            spent = [delta(before[i], replica_counters(r)) for i, r in enumerate(replicas)]
            usage = result["usage"]
            # every request the replica answered went out with a priority
            assert len(scheduler.priority_log) - tagged == (
                spent[replica]["vllm:request_success"])
            usages.append(usage)
            assert result["decision"] == "exit"
            # every request of the program on its replica, none on the other
            assert spent[1 - replica] == dict.fromkeys(spent[0], 0.0)
            assert spent[replica]["vllm:request_success"] >= 2
            assert spent[replica]["vllm:generation_tokens"] == (
                usage["reasoning_tokens"] + usage["probe_completion_tokens"])
    total = sum_usage(usages)
    spent_all = [delta(start[i], replica_counters(r)) for i, r in enumerate(replicas)]
    assert sum(s["vllm:generation_tokens"] for s in spent_all) == (
        total["reasoning_tokens"] + total["probe_completion_tokens"])
    assert sum(s["vllm:prompt_tokens"] for s in spent_all) == (
        total["reasoning_prompt_tokens"] + total["probe_prompt_tokens"])


@pytest.mark.vllm
@pytest.mark.parametrize("algorithm", [
    ["--chunk-size", "16", "--max-tokens", "64", "--threshold", "2"],
    ["--algorithm", "sc", "--width", "2", "--max-width", "2", "--chunk-size", "16",
     "--max-tokens", "32"],
], ids=["cot", "sc"])
def test_solve_without_a_thread_keeps_its_program_on_one_replica(
    fleet: Fleet, algorithm: list[str]
) -> None:
    # `dynasor-graph solve` runs no thread: its requests carry the program's own key, so every
    # token it generates (all paths of an SC program too) is on one replica.
    before = fleet.counters()
    done = run_cli("solve", QUESTION, "--api-base", fleet.router, "--model", SERVED_MODEL_NAME,
                   "--seed", "0", "--json", *algorithm)
    assert done.returncode == 0, done.stderr
    usage = json.loads(done.stdout)["usage"]
    spent = [delta(before[i], replica_counters(r)) for i, r in enumerate(fleet.replicas)]
    served = [i for i, s in enumerate(spent) if s["vllm:request_success"] > 0]
    assert len(served) == 1, spent
    one = served[0]
    assert spent[1 - one] == dict.fromkeys(spent[0], 0.0)
    assert spent[one]["vllm:generation_tokens"] == (
        usage["reasoning_tokens"] + usage["probe_completion_tokens"]
        + usage["discarded_tokens"]) > 0
    assert spent[one]["vllm:prompt_tokens"] == (
        usage["reasoning_prompt_tokens"] + usage["probe_prompt_tokens"])
