"""Token-exact continuation against text-mode continuation, under real chat templates.

Starts the real local vLLM (SmolLM2-135M on the CPU) once per chat template — SmolLM2's own and
each real template in ``tests/chat_templates`` (``--chat-template``), one server at a time —
and runs the same programs in both modes: ``Endpoint(continuation="text")`` (chat completions
continuing the assistant turn: the "before") and ``continuation="tokens"`` (``/tokenize`` once,
then ``/v1/completions`` with token ids: the "after"). The programs are Dynasor-CoT on a fixed
set of generated arithmetic problems, seeded, with a fixed budget and no early exit
(``certainty_threshold=64``), run one at a time.

Every model call is wrapped (``_token_route.complete`` / ``complete_tokens``) to read vLLM's
``/metrics`` before and after it: one request in flight, so the counter deltas are that
request's. Per template and mode it reports:

- the prefix-cache hit rate of the probe requests (cache hits / cache queries, in tokens), and
  in token mode its ceiling: vLLM caches whole ``--block-size`` blocks only, so a probe can at
  best be served the full blocks of what the previous request computed (its prompt and output
  but the last sampled token); never the suffix. The prefix cache is reset before each mode;
- the prompt tokens per probe;
- the share of requests whose prompt is token-exact: ``prompt_tokens`` equals the first
  rendered prompt (``/tokenize`` with the chat, generation prompt on) plus every token the
  program generated before it, plus the probe suffix's tokens for a probe. Text mode is held to
  the same expectation (as ``tests/test_thinking_vllm.py`` does).

    python benchmarks/continuation_bench.py                          # 6 problems, all templates
    python benchmarks/continuation_bench.py --n 3 --out benchmarks/out/continuation

Writes ``--out``/continuation.json and continuation.md (the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dynasor_graph import CoTConfig, Endpoint, EndpointError, _probe, _token_route, create_cot
from dynasor_graph._endpoint import Completion
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX
from dynasor_graph.eval import load_dataset
from dynasor_graph.eval._metrics import server_counters
from dynasor_graph.local import SERVED_MODEL_NAME, LocalServer

TEMPLATES = Path(__file__).resolve().parents[1] / "tests" / "chat_templates"
BLOCK = 32  # the local server's --block-size
COUNTERS = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:prompt_tokens",
            "vllm:generation_tokens")


@dataclass
class Request:
    """One model call and what the server counted for it."""

    kind: str  # "reason" or "probe"
    prompt_tokens: int
    completion_tokens: int
    expected_prompt: int
    cache_hits: float
    cache_queries: float
    cacheable: int  # full blocks of what earlier requests of the program computed


@dataclass
class Program:
    problem: str
    stop_reason: str | None = None
    error: str | None = None
    requests: list[Request] = field(default_factory=list)


async def counters(root: str) -> dict[str, float]:
    """The server's :data:`COUNTERS` (the library's one ``/metrics`` reader)."""
    return await asyncio.to_thread(server_counters, root, COUNTERS, timeout_s=30)


async def lengths(endpoint: Endpoint, question: str) -> tuple[int, int]:
    """The rendered first prompt's and the probe suffix's token counts, from ``/tokenize``."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = await client.post(endpoint.server_root + "/tokenize", json={
            "model": endpoint.served_name, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": question}]})
        suffix = await client.post(endpoint.server_root + "/tokenize", json={
            "model": endpoint.served_name, "prompt": DEFAULT_PROBE_SUFFIX,
            "add_special_tokens": False})
    return len(first.json()["tokens"]), len(suffix.json()["tokens"])


class Meter:
    """Wraps the adapter's two generation calls; one request at a time, so the ``/metrics``
    deltas around a call are that call's."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.program: Program | None = None
        self.first = self.suffix = self.generated = 0
        self.originals = (vars(_token_route)["complete"], vars(_probe)["complete"],
                          _token_route.complete_tokens)

    def start(self, program: Program, first: int, suffix: int) -> None:
        self.program, self.first, self.suffix, self.generated = program, first, suffix, 0

    async def measured(self, probe: bool, call: Callable[[], Awaitable[Completion]]
                       ) -> Completion:
        before = await counters(self.root)
        reply = await call()
        after = await counters(self.root)
        seen = {key: after[key] - before[key] for key in COUNTERS}
        # what an earlier request of this program computed: its prompt and output, but the
        # output's last token (sampled, never fed back); the cache holds whole blocks of it
        computed = self.first + self.generated - (1 if self.generated else 0)
        request = Request(
            kind="probe" if probe else "reason", prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            expected_prompt=self.first + self.generated + (self.suffix if probe else 0),
            cache_hits=seen["vllm:prefix_cache_hits"],
            cache_queries=seen["vllm:prefix_cache_queries"],
            cacheable=BLOCK * (computed // BLOCK) if self.generated else 0)
        assert self.program is not None
        self.program.requests.append(request)
        if not probe:
            self.generated += reply.completion_tokens
        return reply

    def install(self) -> None:
        complete, probe_complete, complete_tokens = self.originals

        async def text(*args: Any, **kwargs: Any) -> Completion:
            prefix: str = args[2]
            return await self.measured(prefix.endswith(DEFAULT_PROBE_SUFFIX),
                                       lambda: complete(*args, **kwargs))

        async def text_probe(*args: Any, **kwargs: Any) -> Completion:
            return await self.measured(True, lambda: probe_complete(*args, **kwargs))

        async def tokens(endpoint: Endpoint, prompt: Any, **kwargs: Any) -> Completion:
            probe = len(prompt) != self.first + self.generated  # the suffix was appended
            return await self.measured(probe, lambda: complete_tokens(endpoint, prompt,
                                                                      **kwargs))

        vars(_token_route)["complete"] = text
        vars(_probe)["complete"] = text_probe
        vars(_token_route)["complete_tokens"] = tokens

    def uninstall(self) -> None:
        for module, name, original in zip((_token_route, _probe, _token_route),
                                          ("complete", "complete", "complete_tokens"),
                                          self.originals, strict=True):
            vars(module)[name] = original


def summarize(template: str, mode: str, programs: list[Program]) -> dict[str, Any]:
    requests = [r for p in programs for r in p.requests]
    probes = [r for r in requests if r.kind == "probe"]
    hits = sum(r.cache_hits for r in probes)
    queries = sum(r.cache_queries for r in probes)
    exact = sum(1 for r in requests if r.prompt_tokens == r.expected_prompt)
    return {
        "template": template, "mode": mode, "programs": len(programs),
        "errors": sum(1 for p in programs if p.error), "requests": len(requests),
        "probes": len(probes),
        "probe_hit_rate": hits / queries if queries else 0.0,
        "probe_hit_ceiling": (sum(r.cacheable for r in probes) / queries) if queries else 0.0,
        "reason_hit_rate": (sum(r.cache_hits for r in requests if r.kind == "reason")
                            / max(1.0, sum(r.cache_queries for r in requests
                                           if r.kind == "reason"))),
        "prompt_tokens_per_probe": (sum(r.prompt_tokens for r in probes) / len(probes)
                                    if probes else 0.0),
        "token_exact_share": exact / len(requests) if requests else 0.0,
        "prompt_tokens_sent": sum(r.prompt_tokens for r in requests),
        "prompt_tokens_expected": sum(r.expected_prompt for r in requests),
    }


async def run_mode(server: LocalServer, mode: str, questions: list[tuple[str, str]],
                   config: CoTConfig) -> list[Program]:
    endpoint = Endpoint(model=SERVED_MODEL_NAME, api_base=server.api_base, timeout_s=600,
                        max_retries=0, continuation="text" if mode == "text" else "tokens")
    graph = create_cot(endpoint, config, early_exit=False)
    async with httpx.AsyncClient(timeout=60) as client:  # each mode starts from a cold cache
        (await client.post(endpoint.server_root + "/reset_prefix_cache")).raise_for_status()
    meter = Meter(endpoint.server_root)
    meter.install()
    programs = []
    try:
        for problem_id, question in questions:
            first, suffix = await lengths(endpoint, question)
            program = Program(problem=problem_id)
            meter.start(program, first, suffix)
            try:
                result = await graph.ainvoke({"question": question})
                program.stop_reason = result.get("stop_reason")
            except EndpointError as exc:  # e.g. R1's template refusing a continued </think>
                program.error = f"{type(exc).__name__}: {exc}"[:300]
            programs.append(program)
    finally:
        meter.uninstall()
    return programs


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| template | mode | requests (probes) | probe cache hit rate | full-block "
             "ceiling | prompt tokens per probe | token-exact requests | prompt tokens sent / "
             "token-exact sum | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ceiling = f"{r['probe_hit_ceiling']:.3f}" if r["mode"] == "tokens" else "n/a"
        lines.append(
            f"| {r['template']} | {r['mode']} | {r['requests']} ({r['probes']}) | "
            f"{r['probe_hit_rate']:.3f} | {ceiling} | {r['prompt_tokens_per_probe']:.1f} | "
            f"{r['token_exact_share']:.0%} | {r['prompt_tokens_sent']} / "
            f"{r['prompt_tokens_expected']} | {r['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="generated arithmetic problems")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--templates", nargs="*", default=["smollm2", *sorted(
        p.stem for p in TEMPLATES.glob("*.jinja"))])
    parser.add_argument("--out", default="benchmarks/out/continuation")
    args = parser.parse_args()
    config = CoTConfig(chunk_size=args.chunk_size, max_tokens=args.max_tokens,
                       certainty_threshold=64, seed=0)
    questions = [(p.id, p.question)
                 for p in load_dataset(f"generated:arithmetic?n={args.n}&seed=0")]
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache between the modes
    rows, raw = [], {}
    for template in args.templates:
        extra = () if template == "smollm2" else (
            "--chat-template", str(TEMPLATES / f"{template}.jinja"))
        with LocalServer(extra_args=extra) as server:
            for mode in ("text", "tokens"):
                start = time.perf_counter()
                programs = asyncio.run(run_mode(server, mode, questions, config))
                row = summarize(template, mode, programs)
                row["seconds"] = round(time.perf_counter() - start, 1)
                rows.append(row)
                raw[f"{template}/{mode}"] = [asdict(p) for p in programs]
                print(table([row]).splitlines()[-1], f"{row['seconds']} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": SERVED_MODEL_NAME, "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs, {platform.platform()}", "n": args.n,
              "chunk_size": args.chunk_size, "max_tokens": args.max_tokens,
              "block_size": BLOCK, "rows": rows, "programs": raw}
    (out / "continuation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "continuation.md").write_text(table(rows) + "\n", encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
