"""200 concurrent programs through one scheduler against the scripted server: every program
ends with an answer or a clear error, and nothing outlives the run (tasks, sockets, fds);
memory stays bounded. Counts are bounded; there are no timing assertions."""

from __future__ import annotations

import pytest
from scripted_server import Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, SchedulerConfig
from dynasor_graph.eval._load import run_load

pytestmark = pytest.mark.slow  # minutes of load: `make test`, not `make test-fast`

PROGRAMS = 200


def load_script(script: Script) -> list[str]:
    """200 questions: most settle after 2 to 4 probes, every 25th is refused, every 40th never
    settles (stopped by its budget); the first 6 requests fail with a 503 (retried)."""
    questions = [f"What is {i} + 1?" for i in range(PROGRAMS)]
    for i, question in enumerate(questions):
        if i % 25 == 7:
            script.questions[question] = Script(refuse_message="prompt too long")
        elif i % 40 == 3:
            script.questions[question] = Script(probes=["1} hmm"])
        else:
            script.questions[question] = Script(probes=["wait"] * (i % 3) + [f"{i + 1}}}"])
    script.fail_next = [503] * 6
    return questions


async def test_two_hundred_programs_end_cleanly_and_leave_nothing_behind(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    questions = load_script(scripted.script)
    config = CoTConfig(chunk_size=4, max_tokens=64, certainty_threshold=2)
    scheduler = SchedulerConfig(max_in_flight=16, program_budget=60)
    warm = await run_load(scripted_endpoint, questions[:2], scheduler, config)  # lazy imports
    assert warm.ok, warm
    first = await run_load(scripted_endpoint, questions, scheduler, config)
    assert first.ok, first
    refused, endless = PROGRAMS // 25, PROGRAMS // 40
    assert first.errors == {"ServerRefused": refused}
    assert first.answered == PROGRAMS - refused
    assert first.stop_reasons == {"certain": PROGRAMS - refused - endless, "budget": endless}
    # Every token the programs report is one the server reported (the log holds every request).
    served = sum(e["usage"]["completion_tokens"] for e in scripted.script.log)
    assert first.tokens == served - warm.tokens
    assert first.tasks_left == 0
    assert first.sockets[1] <= first.sockets[0] and first.fds[1] <= first.fds[0]
    # Python allocations at the peak, the in-process scripted server and its log included.
    assert first.peak_mb < 64
