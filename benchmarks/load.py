"""Load: N concurrent Dynasor-CoT programs through one scheduler, then what they left behind.

Bounded and self-stopping: it runs ``--programs`` programs once (every program is cancelled
after ``--timeout-s``), prints a JSON report — answers, clear errors by type, tasks, sockets and
file descriptors before/after, tracemalloc peak — and exits 0 only if every program ended with
an answer or a clear error and nothing was left behind. Without ``--api-base`` it serves the
scripted loopback server of the tests (most programs settle, some are refused, a few never
settle and are stopped by their budget)::

    python benchmarks/load.py --programs 200 --max-in-flight 16
    python benchmarks/load.py --programs 50 --api-base http://127.0.0.1:8471/v1 \\
        --model smollm2-135m-instruct

With ``--api-base`` it is also one client process of a multi-process load (the test
``tests/test_priority_load.py`` starts several behind ``vllm-router``): ``--prefix`` makes its
questions (``{prefix}What is {i} + {i + 1}?``) and thread ids its own, ``--mode vllm_priority``
sends every request with its priority instead of queuing in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from dynasor_graph import CoTConfig, Endpoint, SchedulerConfig
from dynasor_graph.eval._load import LoadReport, run_load


@contextlib.contextmanager
def scripted(programs: int) -> Iterator[tuple[Endpoint, list[str]]]:
    """The tests' scripted server with the load test's per-question scripts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from scripted_server import SERVED_NAME, Script, ScriptedServer
    from test_load import load_script

    script = Script()
    questions = load_script(script)[:programs]
    with ScriptedServer(script) as server:
        yield Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=server.api_base,
                       timeout_s=30), questions


async def warm_then_load(endpoint: Endpoint, questions: list[str], scheduler: SchedulerConfig,
                         config: CoTConfig, timeout_s: float, thread_prefix: str | None = None,
                         warm_up: str | None = None) -> LoadReport:
    """One program first, so lazy imports (LiteLLM's: tens of seconds on a busy machine) count
    neither as the load's memory nor against its time: on ``warm_up`` if given (a question the
    load does not ask), else on the first question."""
    await run_load(endpoint, [warm_up or questions[0]], scheduler, config, timeout_s=timeout_s)
    return await run_load(endpoint, questions, scheduler, config, timeout_s=timeout_s,
                          thread_prefix=thread_prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=200, help="at most 200 when scripted")
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--program-budget", type=int, default=60, help="tokens per program")
    parser.add_argument("--timeout-s", type=float, default=300, help="bound on the whole run")
    parser.add_argument("--api-base", help="a real server instead of the scripted one")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--no-reallocate", dest="reallocate", action="store_false",
                        help="no lending: no program generates more than --program-budget")
    parser.add_argument("--mode", choices=["queue", "vllm_priority", "both"], default="queue")
    parser.add_argument("--prefix", default="", help="with --api-base: this client's questions "
                        "and thread ids (X-Session-ID) start with it")
    args = parser.parse_args()
    config = CoTConfig(chunk_size=4, max_tokens=64, certainty_threshold=2, seed=0)
    scheduler = SchedulerConfig(max_in_flight=args.max_in_flight, mode=args.mode,
                                program_budget=args.program_budget, reallocate=args.reallocate)
    with contextlib.ExitStack() as stack:
        if args.api_base:
            endpoint = Endpoint(model=args.model, api_base=args.api_base, timeout_s=120)
            questions = [f"{args.prefix}What is {i} + {i + 1}?" for i in range(args.programs)]
        else:
            endpoint, questions = stack.enter_context(scripted(args.programs))
        thread_prefix = f"{args.prefix}p" if args.api_base else None
        warm_up = f"{args.prefix}warm-up" if args.api_base else None
        report = asyncio.run(warm_then_load(endpoint, questions, scheduler, config,
                                            args.timeout_s, thread_prefix, warm_up))
    print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
