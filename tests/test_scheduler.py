"""The scheduler on scripted programs: admission order, in-flight cap, budgets, reallocation,
abstention, wall-clock limits, and a program that never ends next to short ones.

Each program has its own scripted question (``Script.questions``). With one slot and a server
delay of 50 ms, every program's next request is queued long before the slot frees, so the
admission order depends only on the policy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import run_all, with_fields
from scripted_server import Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    Scheduler,
    SchedulerConfig,
    ServerRefused,
    create_cot,
)
from dynasor_graph.scheduler import ProgramResult

SETTLES, HESITANT, SHORT = "5}", "5} wait", "7}"


def scripts(server: ScriptedServer, **probes: str) -> dict[str, Script]:
    """One script per question (named after the keyword), whose every probe replies the same."""
    own = {question: Script(probes=[reply]) for question, reply in probes.items()}
    server.script.questions.update(own)
    return own


def completion_tokens(script: Script) -> int:
    return sum(e["usage"]["completion_tokens"] for e in script.log)


async def test_certaindex_policy_finishes_the_settling_program_first_fifo_round_robins(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.delay_s = 0.05
    scripts(scripted, S=SETTLES, H1=HESITANT, H2=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=40, certainty_threshold=3, probe_max_tokens=4)
    logs = {}
    for policy in ("fifo", "certaindex"):
        scheduler = Scheduler(SchedulerConfig(policy=policy, max_in_flight=1))
        results = await run_all(scheduler, scripted_endpoint, config, ["S", "H1", "H2"])
        assert {q: r.stop_reason for q, r in results.items()} == {
            "S": "certain", "H1": "budget", "H2": "budget"}
        assert [results[q].requests for q in ("S", "H1", "H2")] == [6, 8, 8]
        assert scheduler.in_flight == 0
        logs[policy] = "".join(p[-1] for p in scheduler.admission_log)  # S1 → S, H1 → 1 …
    # Request-level FIFO: strict round robin, so the settling program ends 16th.
    assert logs["fifo"] == "S12" * 6 + "12" * 2
    # Certaindex: round robin while nobody has a signal; once two of S's three probes agree
    # (Certaindex 2/3 ≥ signal_below) S's next request goes ahead of every waiting one, so S
    # ends 14th. With one slot, the slot S frees goes to a waiting request before S can ask
    # again: S alternates with H1 and H2 rather than running alone.
    assert logs["certaindex"] == "S12" * 3 + "S1S2S" + "12" * 4


async def test_without_a_certaindex_signal_the_order_is_fifo(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    """Issue 12's regression: three programs whose probes never agree (Certaindex 0), no budget.
    The old key ranked them by tokens spent (most first: longest-attained-service first), so
    the third program waited until one of the first two had finished; now the order is FIFO."""
    scripted.script.delay_s = 0.05
    scripts(scripted, H1=HESITANT, H2=HESITANT, H3=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=30, certainty_threshold=2, probe_max_tokens=4)
    logs = {}
    for policy in ("fifo", "certaindex"):
        scheduler = Scheduler(SchedulerConfig(policy=policy, max_in_flight=1))
        await run_all(scheduler, scripted_endpoint, config, ["H1", "H2", "H3"])
        logs[policy] = "".join(p[-1] for p in scheduler.admission_log)
    assert logs["fifo"] == "123" * 6
    assert logs["certaindex"] == logs["fifo"]


@pytest.mark.parametrize("policy", ["fifo", "certaindex"])
async def test_gang_keeps_each_programs_place(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, policy: str
) -> None:
    """With ``gang`` a request's place is its program's start: the programs that started first
    hold the slot until they finish (the one slot alternates between the two oldest, since a
    program asks again only after its answer), and the third starts after them."""
    scripted.script.delay_s = 0.05
    scripts(scripted, H1=HESITANT, H2=HESITANT, H3=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=30, certainty_threshold=2, probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(policy=policy, max_in_flight=1, gang=True))
    await run_all(scheduler, scripted_endpoint, config, ["H1", "H2", "H3"])
    assert "".join(p[-1] for p in scheduler.admission_log) == "12" * 6 + "3" * 6


@pytest.mark.parametrize("deadline_s", [None, 2.0])
async def test_a_late_program_goes_behind_programs_within_their_deadline(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, deadline_s: float | None
) -> None:
    """H1 runs alone past its soft deadline; H2 and H3 arrive then. With ``deadline_s`` their
    12 requests go before H1's next ones (a request of H1 slips in only when neither has one
    waiting as the slot frees); without it the three share the slot in turn."""
    scripted.script.delay_s = 0.1
    scripts(scripted, H1=HESITANT, H2=HESITANT, H3=HESITANT)
    scheduler = Scheduler(SchedulerConfig(policy="fifo", max_in_flight=1, deadline_s=deadline_s))
    long = create_cot(scripted_endpoint, CoTConfig(chunk_size=10, max_tokens=200,
                                                   certainty_threshold=2, probe_max_tokens=4))
    short = create_cot(scripted_endpoint, CoTConfig(chunk_size=10, max_tokens=30,
                                                    certainty_threshold=2, probe_max_tokens=4))

    async def later(question: str) -> ProgramResult:
        await asyncio.sleep(2.2)
        return await scheduler.run(short, {"question": question}, program_id=question)

    h1, h2, h3 = await asyncio.gather(scheduler.run(long, {"question": "H1"}, program_id="H1"),
                                      later("H2"), later("H3"))
    assert [r.requests for r in (h1, h2, h3)] == [40, 6, 6]
    log = "".join(p[-1] for p in scheduler.admission_log)
    first = min(log.index("2"), log.index("3"))
    last = max(log.rindex("2"), log.rindex("3"))
    interleaved = log[first:last + 1].count("1")
    if deadline_s is None:
        assert interleaved >= 5, log  # H1 keeps its turn
    else:
        assert interleaved <= 2, log  # H2 and H3 before the late program


async def test_starved_requests_escalate_to_request_order(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.delay_s = 0.05
    scripts(scripted, S=SETTLES, H1=HESITANT, H2=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=40, certainty_threshold=3, probe_max_tokens=4)
    # Every wait is "long": the oldest request goes first, whatever its program's priority.
    scheduler = Scheduler(SchedulerConfig(max_in_flight=1, starvation_s=1e-9))
    await run_all(scheduler, scripted_endpoint, config, ["S", "H1", "H2"])
    assert "".join(p[-1] for p in scheduler.admission_log) == "S12" * 6 + "12" * 2


class Concurrency(Script):
    """Counts the requests the server is answering at once."""

    def __init__(self) -> None:
        super().__init__(probes=[SHORT])
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        try:
            return super().reply(body)
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize("policy", ["fifo", "certaindex"])
async def test_never_more_requests_in_flight_than_the_cap(
    scripted_endpoint: Endpoint, policy: str
) -> None:
    script = Concurrency()
    with ScriptedServer(script) as server:
        endpoint = with_fields(scripted_endpoint, api_base=server.api_base)
        scheduler = Scheduler(SchedulerConfig(policy=policy, max_in_flight=3))
        config = CoTConfig(chunk_size=4, max_tokens=40, certainty_threshold=2)
        results = await run_all(scheduler, endpoint, config, [f"q{i}" for i in range(8)])
    assert script.peak == 3
    assert all(r.answer == "7" and r.stop_reason == "certain" for r in results.values())
    assert sum(r.tokens for r in results.values()) == completion_tokens(script)
    assert scheduler.in_flight == 0


async def test_a_settled_programs_unused_budget_goes_to_an_uncertain_one(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.delay_s = 0.02
    config = CoTConfig(chunk_size=10, max_tokens=1000, certainty_threshold=1,
                       probe_max_tokens=4)
    spent = {}
    for reallocate in (False, True):
        own = scripts(scripted, A=SETTLES, B=HESITANT)
        scheduler = Scheduler(SchedulerConfig(max_in_flight=1, program_budget=40,
                                              global_token_budget=80, reallocate=reallocate))
        results = await run_all(scheduler, scripted_endpoint, config, ["A", "B"])
        a, b = results["A"], results["B"]
        # A settles at its first probe: 10 reasoning + 1 probe token of its 40.
        assert (a.stop_reason, a.answer, a.tokens) == ("certain", "5", 11)
        assert (b.stop_reason, b.stopped_by_scheduler, b.answer) == ("budget", True, "5")
        assert (a.tokens, b.tokens) == (completion_tokens(own["A"]), completion_tokens(own["B"]))
        # The output's usage is the graph's own: what the server reported for B's requests.
        usage = b.output["usage"]
        assert usage["reasoning_tokens"] + usage["probe_completion_tokens"] == b.tokens
        assert a.tokens + b.tokens <= 80
        spent[reallocate] = b.tokens
    # B's rounds cost 10 + 2 tokens (a chunk reserves 10, a probe 4). On its own 40 it stops
    # before the 4th chunk (36 + 10 > 40); with A's 29 unused tokens (limit 69) before the 6th.
    assert spent == {False: 36, True: 60}


async def test_a_global_budget_smaller_than_the_allotments_is_shared(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripts(scripted, **{f"H{i}": HESITANT for i in range(3)})
    config = CoTConfig(chunk_size=10, max_tokens=1000, probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(max_in_flight=2, program_budget=40,
                                          global_token_budget=50))
    results = await run_all(scheduler, scripted_endpoint, config, ["H0", "H1", "H2"])
    assert all(r.stop_reason == "budget" for r in results.values())
    total = sum(r.tokens for r in results.values())
    assert total == completion_tokens(scripted.script) <= 50
    assert results["H2"].tokens == 0  # nothing was left for the third program
    assert scheduler.pool == 50 - total


async def test_hopeless_programs_abstain_and_settling_ones_do_not(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripts(scripted, S=SETTLES, H=HESITANT)
    config = CoTConfig(chunk_size=10, max_tokens=1000, certainty_threshold=2,
                       probe_max_tokens=4)
    scheduler = Scheduler(SchedulerConfig(max_in_flight=2, program_budget=100,
                                          abstain_after=0.3, abstain_below=0.5))
    results = await run_all(scheduler, scripted_endpoint, config, ["S", "H"])
    s, h = results["S"], results["H"]
    assert (s.stop_reason, s.answer, s.stopped_by_scheduler) == ("certain", "5", False)
    # H's Certaindex stays 0 (hesitant probes): it stops at its first request past 30 tokens.
    assert (h.stop_reason, h.answer, h.stopped_by_scheduler) == ("abstained", "", True)
    assert h.tokens == 10 + 2 + 10 + 2 + 10 and h.output["decision"] == "exit"


async def test_an_endless_program_is_bounded_and_does_not_starve_short_ones(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    """A program that never settles nor ends (a "reasoning bomb") next to short ones."""
    scripted.script.delay_s = 0.01
    scripts(scripted, endless="5} hmm", **{f"s{i}": SHORT for i in range(5)})
    bomb = create_cot(scripted_endpoint, CoTConfig(chunk_size=8, max_tokens=1_000_000))
    short = create_cot(scripted_endpoint, CoTConfig(chunk_size=8, max_tokens=64,
                                                            certainty_threshold=2))
    # No lending here: with it, the bomb would also get what the short programs left unused.
    for limits in ({"program_budget": 400, "reallocate": False}, {"timeout_s": 2.0}):
        scheduler = Scheduler(SchedulerConfig(max_in_flight=1, **limits))
        finished: list[str] = []

        async def run(graph: Any, question: str, scheduler: Scheduler = scheduler,
                      finished: list[str] = finished) -> ProgramResult:
            result = await scheduler.run(graph, {"question": question}, program_id=question)
            finished.append(question)
            return result

        endless = asyncio.create_task(run(bomb, "endless"))
        await asyncio.sleep(0.1)  # the endless program is already reasoning
        shorts = await asyncio.gather(*(run(short, f"s{i}") for i in range(5)))
        assert all((r.answer, r.stop_reason) == ("7", "certain") for r in shorts)
        assert not endless.done()
        result = await endless
        assert finished[-1] == "endless"
        assert result.stopped_by_scheduler and result.answer == "5"
        if "program_budget" in limits:
            assert result.stop_reason == "budget"
            assert 400 - 20 < result.tokens <= 400  # stops before a request that would not fit
        else:
            assert result.stop_reason == "timeout"


async def test_endpoint_errors_propagate_and_leave_the_scheduler_clean(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.refuse_message = "This model's maximum context length is 8192 tokens"
    scheduler = Scheduler(SchedulerConfig(max_in_flight=1))
    graph = create_cot(scripted_endpoint, CoTConfig(chunk_size=8, max_tokens=32))
    results = await asyncio.gather(*(scheduler.run(graph, {"question": f"q{i}"})
                                     for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ServerRefused) and "maximum context length" in str(r)
               for r in results)
    assert scheduler.in_flight == 0 and not scheduler._waiting


def test_budgets_are_validated() -> None:
    with pytest.raises(ValueError, match="need a program_budget"):
        SchedulerConfig(global_token_budget=100)
    with pytest.raises(ValueError, match="max_in_flight"):
        SchedulerConfig(max_in_flight=0)
