"""``SchedulerConfig(mode="vllm_priority")`` on the scripted server: every model call of a
program carries the priority its policy gives it, read back from the request bodies the server
received. The priority is the request's send time in deciseconds since ``PRIORITY_EPOCH``,
advanced by ``starvation_s * closeness``; so ``priority - 10 * (arrival - epoch)`` (the
*advance*, in deciseconds, negative) isolates the policy's decision from the clock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import run_all, with_fields
from scripted_server import Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, Scheduler, SchedulerConfig, create_cot
from dynasor_graph.scheduler import LATE_S, PRIORITY_EPOCH

SETTLES, HESITANT = "5}", "5} wait"
SLACK = 5  # deciseconds between a request's priority (at send) and its arrival, at most


class Recording(Script):
    """Records, for every request, its program (last user message), priority and arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int | None, float]] = []
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arrival = time.time()
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        with self.lock:
            self.seen.append((user, body.get("priority"), arrival))
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay_s)
        try:
            return super().reply(body)
        finally:
            with self.lock:
                self.active -= 1

    def advances(self, program: str) -> list[float]:
        """The advance (deciseconds) of each of ``program``'s requests, in arrival order."""
        return [priority - (arrival - PRIORITY_EPOCH) * 10
                for user, priority, arrival in self.seen
                if user == program and priority is not None]


@pytest.fixture
def recording(scripted_endpoint: Endpoint) -> Any:
    script = Recording()
    with ScriptedServer(script) as server:
        yield script, with_fields(scripted_endpoint, api_base=server.api_base)


async def own(script: Recording, endpoint: Endpoint, **probes: str) -> None:
    """Script the programs; one warm-up program first (LiteLLM's lazy imports would otherwise
    delay the first request by a second, between its priority and its arrival)."""
    script.questions.update({q: Script(probes=[reply]) for q, reply in probes.items()})
    script.questions["warm-up"] = Script(probes=[SETTLES])
    await create_cot(endpoint, CoTConfig(chunk_size=4, max_tokens=4)).ainvoke(
        {"question": "warm-up"})
    script.seen.clear()


async def test_a_settling_program_gets_lower_priorities_hesitant_ones_keep_fifo(
    recording: tuple[Recording, Endpoint],
) -> None:
    script, endpoint = recording
    await own(script, endpoint, S=SETTLES, H1=HESITANT, H2=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=40, certainty_threshold=3, probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(mode="vllm_priority", starvation_s=30))
    results = await run_all(scheduler, endpoint, config, ["S", "H1", "H2"])
    assert results["S"].stop_reason == "certain"
    # Every request carried an int priority; the log holds the same numbers, in send order.
    assert all(isinstance(p, int) for _, p, _ in script.seen)
    assert sorted(p for _, p in scheduler.priority_log) == sorted(p for _, p, _ in script.seen)
    # S: chunk, probe (Certaindex 1/3: no signal), chunk, probe (2/3), chunk, probe (exit).
    # Up to its second probe S keeps its FIFO place; then it goes 30 s x 2/3 = 200 ds ahead.
    s = script.advances("S")
    assert len(s) == 6
    assert all(-SLACK <= a <= 1 for a in s[:4])
    assert all(-200 - SLACK <= a <= -199 for a in s[4:])
    # The hesitant programs never give a signal (no budget): FIFO, their priority = send time.
    for hesitant in ("H1", "H2"):
        assert len(script.advances(hesitant)) == 8
        assert all(-SLACK <= a <= 1 for a in script.advances(hesitant))


async def test_little_budget_left_raises_priority_and_the_guard_bounds_it(
    recording: tuple[Recording, Endpoint],
) -> None:
    """A hesitant program with a budget moves ahead as its budget runs out (SRPT on the budget
    left), never by more than ``starvation_s``; under ``fifo`` nothing moves ahead."""
    script, endpoint = recording
    await own(script, endpoint, H=HESITANT, F=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=1000, probe_max_tokens=4)
    certaindex = Scheduler(SchedulerConfig(mode="vllm_priority", program_budget=60,
                                           starvation_s=30, signal_below=0))
    h = (await run_all(certaindex, endpoint, config, ["H"]))["H"]
    assert h.stop_reason == "budget" and h.tokens <= 60
    advances = script.advances("H")
    # The closeness of each request is the share of the budget spent before it was sent.
    spent, expected = 0, []
    for kind in [e["kind"] for e in script.questions["H"].log]:
        expected.append(-300 * spent / 60)
        spent += 10 if kind == "reason" else 2
    assert len(advances) == len(expected)
    assert all(e - SLACK <= a <= e + 1 for a, e in zip(advances, expected, strict=True))
    assert advances == sorted(advances, reverse=True)  # ever further ahead
    assert min(advances) >= -300 - SLACK  # the guard: never more than starvation_s
    fifo = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority", program_budget=60))
    await run_all(fifo, endpoint, config, ["F"])
    assert all(-SLACK <= a <= 1 for a in script.advances("F"))


async def test_gang_gives_every_request_its_programs_start(
    recording: tuple[Recording, Endpoint],
) -> None:
    """With ``gang`` every request of a program carries its program's start (the same number
    for each hesitant request, whenever it is sent), advanced like the request-level key."""
    script, endpoint = recording
    await own(script, endpoint, S=SETTLES, H=HESITANT)
    script.delay_s = 0.05
    config = CoTConfig(chunk_size=10, max_tokens=40, certainty_threshold=3, probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(mode="vllm_priority", starvation_s=30, gang=True))
    before = int((time.time() - PRIORITY_EPOCH) * 10)
    await run_all(scheduler, endpoint, config, ["S", "H"])
    sent = {program: [p for user, p, _ in script.seen if user == program]
            for program in ("S", "H")}
    h = sent["H"]
    assert len(h) == 8 and len(set(h)) == 1 and before <= h[0] <= before + SLACK
    # S: its start for the four requests without a signal, then 30 s x 2/3 = 200 ds ahead of it.
    s = sent["S"]
    assert len(s) == 6 and len(set(s[:4])) == 1 and before <= s[0] <= before + SLACK
    assert all(s[0] - 201 <= p <= s[0] - 199 for p in s[4:])
    # H's requests arrived over more than 3 deciseconds: a request-level key would have moved.
    arrivals = [arrival for user, _, arrival in script.seen if user == "H"]
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_a_late_programs_requests_go_a_day_back(
    recording: tuple[Recording, Endpoint],
) -> None:
    """With ``deadline_s`` the requests a program sends after its soft deadline carry a
    priority :data:`LATE_S` later than their send time; the ones before it their send time."""
    script, endpoint = recording
    await own(script, endpoint, H=HESITANT)
    script.delay_s = 0.05
    config = CoTConfig(chunk_size=10, max_tokens=100, certainty_threshold=2, probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(policy="fifo", mode="vllm_priority", deadline_s=0.4))
    result = (await run_all(scheduler, endpoint, config, ["H"]))["H"]
    assert result.stop_reason == "budget" and result.requests == 20  # answered, not stopped
    # Each request: at its send time (on time) or a day later (late); once late, late. The
    # run takes at least 20 x 0.05 s, so both kinds occur.
    kinds = [0 if -SLACK <= a <= 1 else 1 if LATE_S * 10 - SLACK <= a <= LATE_S * 10 + 1
             else None for a in script.advances("H")]
    assert len(kinds) == 20 and kinds == sorted(kinds) and kinds[0] == 0 and kinds[-1] == 1


async def test_priority_mode_sends_at_once_and_keeps_program_level_decisions(
    recording: tuple[Recording, Endpoint],
) -> None:
    """No in-process queue (max_in_flight is the queue's: ignored), while budgets and
    abstention stay in the client; the queue mode sends no priority at all."""
    script, endpoint = recording
    script.delay_s = 0.05
    await own(script, endpoint, S=SETTLES, H=HESITANT, **{f"q{i}": SETTLES for i in range(6)})
    config = CoTConfig(chunk_size=10, max_tokens=1000, certainty_threshold=2,
                       probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(mode="vllm_priority", max_in_flight=1,
                                          program_budget=100, abstain_after=0.3))
    results = await run_all(scheduler, endpoint, config, ["S", "H", *(f"q{i}" for i in range(6))])
    assert script.peak > 1
    assert (results["S"].stop_reason, results["S"].answer) == ("certain", "5")
    assert (results["H"].stop_reason, results["H"].answer) == ("abstained", "")
    assert all(r.tokens <= 100 for r in results.values())
    assert scheduler.in_flight == 0
    script.seen.clear()
    queue = Scheduler(SchedulerConfig(max_in_flight=2))
    await run_all(queue, endpoint, config, ["q0", "q1"])
    assert script.seen and all(p is None for _, p, _ in script.seen)
