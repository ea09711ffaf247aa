"""The client's own cost per Dynasor-CoT round (reasoning chunk + probe), and its ceiling.

A zero-latency loopback server that speaks vLLM's token API (``/tokenize``, ``/v1/completions``
with token-id prompts, ``return_token_ids`` and ``logprobs.text_offset``) and its chat API
(``/v1/chat/completions``, for text mode) answers every request at once with canned JSON; it
runs in its own process (uvicorn + a bare ASGI app), so its CPU is not the client's. Against
it, the client process runs:

- **graph**: Dynasor-CoT programs through the package (LangGraph + the endpoint adapter), with
  a fixed budget and no early exit, so every program runs the same number of rounds; token
  mode (``continuation="tokens"``: the default client, LiteLLM; ``tokens+callback``, the same
  with a no-op LiteLLM callback set, so through ``litellm.atext_completion``;
  ``tokens+openai``, ``Endpoint(client="openai")``) and text mode;
- **httpx**: the same requests (same bodies) from a plain httpx loop: the floor.

Each is run for 1 program and for ``--programs`` concurrent programs, with a short prompt and
with ``--long`` tokens (default 8192) already in the prompt (the server renders the chat to
that many ids; in text mode the question is that many words). Reported: rounds per second
(wall) and ms of client CPU per round (``time.process_time``). ``--processes N`` also runs N
client processes at once against the same server (``--scale-mode``, default ``tokens``) and
sums their rounds per second.
``--profile`` writes a cProfile of the graph run (50 programs, token mode).

    python benchmarks/client_overhead.py                       # all figures, ~1 min
    python benchmarks/client_overhead.py --processes 1 2 --out benchmarks/out/overhead
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

CHUNK = 32
PROBE_TOKENS = 20
RENDERED = 40  # ids of a short rendered chat


# --- the zero-latency server ------------------------------------------------------------

def _words(n: int, start: int = 1000) -> tuple[list[int], str, list[int]]:
    ids = list(range(start, start + n))
    pieces = [f"w{i} " for i in ids]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return ids, "".join(pieces), offsets


def make_app() -> Callable[..., Awaitable[None]]:
    """A bare ASGI app answering vLLM's token and chat APIs at once (no model)."""
    import orjson

    suffix_ids = list(range(500, 500 + len(DEFAULT_PROBE_SUFFIX.split())))
    probe_text = "12} \\]"

    def completion(prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
        if max_tokens == PROBE_TOKENS:
            ids, text, offsets, finish = [7, 8], probe_text, [0, 3], "stop"
        else:
            ids, text, offsets = _words(max_tokens)
            finish = "length"
        return {"id": "cmpl-0", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish,
                             "token_ids": ids, "logprobs": {
                                 "text_offset": offsets, "tokens": None,
                                 "token_logprobs": None, "top_logprobs": None}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                          "total_tokens": prompt_tokens + len(ids)}}

    def chat(prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
        if max_tokens == PROBE_TOKENS:
            text, n, finish = probe_text, 2, "stop"
        else:
            text, n, finish = _words(max_tokens)[1], max_tokens, "length"
        return {"id": "chat-0", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": finish, "message": {
                    "role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                          "total_tokens": prompt_tokens + n}}

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks) or b"{}")
        path = scope["path"]
        if path == "/tokenize":
            if "messages" in body:  # "LONG=<n>" in the question renders to n ids
                text = body["messages"][-1]["content"]
                n = int(text[5:].split()[0]) if text.startswith("LONG=") else RENDERED
                payload: dict[str, Any] = {"tokens": list(range(2000, 2000 + n))}
            else:
                payload = {"tokens": suffix_ids if body["prompt"] == DEFAULT_PROBE_SUFFIX
                           else list(range(len(body["prompt"].split())))}
        elif path == "/v1/completions":
            payload = completion(len(body["prompt"][0]), body["max_tokens"])
        elif path == "/v1/chat/completions":
            words = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
            payload = chat(words, body["max_tokens"])
        else:
            payload = {"error": {"message": f"no {path}"}}
        data = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": 200 if "error" not in payload
                    else 404, "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(make_app(), host="127.0.0.1", port=port, log_level="error",
                access_log=False, loop="uvloop", http="httptools")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """The zero-latency server in a child process, stopped on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", str(self.port)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/tokenize", json={"prompt": "a"}, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the zero-latency server did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- the client runs ---------------------------------------------------------------------

def question(long: int, mode: str) -> str:
    if not long:
        return "What is 2 + 3?"
    return f"LONG={long} tokens" if mode == "tokens" else "w " * long


class Clock:
    """Client CPU and wall time from ``start()`` (called once a run's setup is done: the graph
    compiled, the httpx client built) to ``stop()``; optionally profiled."""

    def __init__(self, profile: bool = False) -> None:
        self.profiler = cProfile.Profile() if profile else None
        self.cpu = self.wall = 0.0

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        if self.profiler:
            self.profiler.enable()

    def stop(self) -> None:
        if self.profiler:
            self.profiler.disable()
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


async def graph_run(url: str, mode: str, programs: int, rounds: int, long: int,
                    clock: Clock | None = None) -> int:
    mode, _, client = mode.partition("+")  # "tokens+openai": Endpoint(client="openai")
    if client == "callback":
        # The default client with a LiteLLM callback set (one that does nothing): every call
        # then goes through litellm.atext_completion, as it did before the handler route.
        import litellm
        from litellm.integrations.custom_logger import CustomLogger

        saved, litellm.callbacks = litellm.callbacks, [CustomLogger()]
        try:
            return await graph_run(url, f"{mode}+litellm", programs, rounds, long, clock)
        finally:
            litellm.callbacks = saved
    endpoint = Endpoint.model_validate({"model": "m", "api_base": f"{url}/v1",
                                        "continuation": mode, "client": client or "litellm",
                                        "max_retries": 0, "timeout_s": 600})
    config = CoTConfig(chunk_size=CHUNK, max_tokens=CHUNK * rounds, certainty_threshold=64,
                       probe_max_tokens=PROBE_TOKENS, seed=0)
    graph = create_cot(endpoint, config)
    clock = clock or Clock()
    clock.start()
    results = await asyncio.gather(*(graph.ainvoke({"question": question(long, mode)})
                                     for _ in range(programs)))
    clock.stop()
    return sum(len(r["probes"]) for r in results)


async def httpx_run(url: str, mode: str, programs: int, rounds: int, long: int,
                    clock: Clock | None = None) -> int:
    """The same requests as the graph's, from a plain httpx loop."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        messages = [{"role": "user", "content": question(long, mode)}]

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = await client.post(path, json=body)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

        suffix = (await post("/tokenize", {"model": "m", "prompt": DEFAULT_PROBE_SUFFIX,
                                           "add_special_tokens": False}))["tokens"]

        async def tokens_program() -> int:
            prompt = (await post("/tokenize", {"model": "m", "messages": messages,
                                               "add_generation_prompt": True}))["tokens"]
            generated: list[int] = []
            common = {"model": "m", "temperature": 0.6, "top_p": 0.95, "seed": 0,
                      "return_token_ids": True, "logprobs": 0}
            for _ in range(rounds):
                chunk = await post("/v1/completions", {**common, "max_tokens": CHUNK,
                                                       "prompt": [prompt + generated]})
                generated += chunk["choices"][0]["token_ids"]
                await post("/v1/completions", {**common, "max_tokens": PROBE_TOKENS,
                                               "prompt": [prompt + generated + suffix]})
            return rounds

        async def text_program() -> int:
            reasoning = ""
            common = {"model": "m", "temperature": 0.6, "top_p": 0.95, "seed": 0}
            for _ in range(rounds):
                turn, flags = (([*messages, {"role": "assistant", "content": reasoning}],
                                {"add_generation_prompt": False, "continue_final_message": True})
                               if reasoning else (messages, {"add_generation_prompt": True}))
                chunk = await post("/v1/chat/completions", {**common, **flags, "messages": turn,
                                                            "max_tokens": CHUNK})
                reasoning += chunk["choices"][0]["message"]["content"]
                await post("/v1/chat/completions", {
                    **common, "add_generation_prompt": False, "continue_final_message": True,
                    "max_tokens": PROBE_TOKENS, "messages": [*messages, {
                        "role": "assistant", "content": reasoning + DEFAULT_PROBE_SUFFIX}]})
            return rounds

        program = tokens_program if mode == "tokens" else text_program
        clock = clock or Clock()
        clock.start()
        done = sum(await asyncio.gather(*(program() for _ in range(programs))))
        clock.stop()
        return done


RUNNERS = {"graph": graph_run, "httpx": httpx_run}


def timed(path: str, url: str, mode: str, programs: int, rounds: int, long: int,
          profile: Path | None = None) -> dict[str, Any]:
    runner = RUNNERS[path]
    asyncio.run(runner(url, mode, min(programs, 4), 2, long))  # warm up imports and pools
    clock = Clock(profile=profile is not None)
    done = asyncio.run(runner(url, mode, programs, rounds, long, clock))
    if clock.profiler and profile:
        clock.profiler.dump_stats(str(profile))
    cpu, wall = clock.cpu, clock.wall
    return {"path": path, "mode": mode, "programs": programs, "long": long, "rounds": done,
            "rounds_per_s": round(done / wall, 1), "cpu_ms_per_round": round(1000 * cpu / done, 2)}


def child(args: argparse.Namespace) -> None:
    """One client process of a multi-process run: warms up, waits for the common start time,
    runs, and prints its rounds and wall-clock start and end as JSON."""
    asyncio.run(graph_run(args.url, args.scale_mode, 4, 2, 0))
    time.sleep(max(0.0, args.start_at - time.time()))
    start = time.time()
    done = asyncio.run(graph_run(args.url, args.scale_mode, args.programs, args.rounds, 0))
    print(json.dumps({"rounds": done, "start": start, "end": time.time()}))


def processes(url: str, n: int, programs: int, rounds: int, mode: str) -> dict[str, Any]:
    """``n`` client processes of ``programs`` programs each, started together: their rounds
    over the span from the first start to the last end."""
    start_at = time.time() + 30  # after every child has imported and warmed up
    children = [subprocess.Popen([sys.executable, __file__, "--child", "--url", url,
                                  "--programs", str(programs), "--rounds", str(rounds),
                                  "--start-at", str(start_at), "--scale-mode", mode],
                                 stdout=subprocess.PIPE)
                for _ in range(n)]
    reports = [json.loads(c.communicate()[0]) for c in children]
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return {"processes": n, "mode": mode, "programs_per_process": programs,
            "rounds": sum(r["rounds"] for r in reports),
            "rounds_per_s": round(sum(r["rounds"] for r in reports) / span, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--programs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=16, help="rounds per program")
    parser.add_argument("--long", type=int, default=8192, help="tokens already in the prompt")
    parser.add_argument("--modes", nargs="*", default=["tokens", "tokens+openai", "text"],
                        help="tokens (the default client, LiteLLM), tokens+callback (the same "
                        "with a no-op LiteLLM callback set: through litellm.atext_completion), "
                        "tokens+openai (Endpoint(client='openai')), text")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--scale-mode", default="tokens",
                        help="the mode the N-process runs use")
    parser.add_argument("--profile", help="write a cProfile of the 50-program token graph run")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.child:
        child(args)
        return
    rows = []
    with Server() as server:
        for mode in args.modes:
            for long in (0, args.long):
                for programs in (1, args.programs):
                    for path in ("graph", "httpx") if "+" not in mode else ("graph",):
                        profile = (Path(args.profile) if args.profile and path == "graph"
                                   and mode == "tokens" and programs > 1 and not long
                                   else None)
                        row = timed(path, server.url, mode, programs, args.rounds, long,
                                    profile)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        scaling = [processes(server.url, n, args.programs, args.rounds, args.scale_mode)
                   for n in args.processes]
        for row in scaling:
            print(json.dumps(row), flush=True)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
              f"{platform.platform()}", "chunk": CHUNK, "rounds_per_program": args.rounds,
              "rows": rows, "processes": scaling}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
