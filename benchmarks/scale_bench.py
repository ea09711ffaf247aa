"""Dynasor-CoT at reasoning-model length: client CPU per round and checkpoint bytes per program.

One program reasons to a fixed budget (1K, 4K, 16K, 32K tokens by default) against the tests'
scripted token server (``tests/scripted_server.py``, token API, probes that never agree, so
every program runs ``budget / chunk`` rounds), which runs in its OWN process so that its CPU is
not the client's. For each length and each way of keeping the run:

- ``memory``: no checkpointer (the reasoning log is the state);
- ``sqlite``: ``AsyncSqliteSaver``, the log kept in the state (checkpoint bytes quadratic);
- ``sqlite+store``: ``AsyncSqliteSaver`` and ``AsyncSqliteStore``, the log in the store (one
  item per chunk and probe; checkpoint bytes linear);
- ``postgres+store``: ``AsyncPostgresSaver`` and ``AsyncPostgresStore`` on a throwaway
  PostgreSQL server (``tests/pg_server.py``): that saver writes a channel's value only when it
  changed, where the SQLite saver rewrites every channel at every superstep;

it reports the client's CPU per round (``time.process_time`` over the run / rounds), the bytes
the databases hold after the run (SQLite: the files on disk, checkpoints + store; PostgreSQL:
the growth of ``pg_database_size`` over the run, tables, indexes and TOAST), the bytes of the
ids and text the program holds (4 bytes an id + the UTF-8 text), their ratio, and the client
process's peak RSS. ``--client`` picks the token route's client (``litellm`` or ``openai``).

    python benchmarks/scale_bench.py                                  # ~10 min
    python benchmarks/scale_bench.py --lengths 1024 4096 --modes sqlite+store --client openai
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from dynasor_graph import CoTConfig, Endpoint, create_cot

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODES = ("memory", "sqlite", "sqlite+store", "postgres+store")

SERVER = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from scripted_server import Script, ScriptedServer
script = Script(probes=[str(i) + "}} " for i in range(100_000)], max_model_len=1_000_000)
with ScriptedServer(script, token_api=True, keep_alive=True) as server:
    print(server.port, flush=True)
    def forget() -> None:  # the benchmark reads no request log: keep the server's memory flat
        while True:
            time.sleep(0.5)
            del server.requests[:], script.log[:]
    threading.Thread(target=forget, daemon=True).start()
    sys.stdin.read()
"""


async def database_size(uri: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")
        row = await (await conn.execute("SELECT pg_database_size(current_database())")).fetchone()
        assert row is not None
        return int(row[0])


async def one_program(endpoint: Endpoint, config: CoTConfig, mode: str,
                      folder: Path, postgres: str | None = None) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    thread: RunnableConfig = {"configurable": {"thread_id": f"scale-{folder.name}"}}
    start_cpu, start = time.process_time(), time.perf_counter()
    stored = 0
    if mode == "memory":
        result = await create_cot(endpoint, config).ainvoke({"question": "What is 2 + 3?"})
    elif mode == "postgres+store":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from langgraph.store.postgres.aio import AsyncPostgresStore

        assert postgres is not None
        async with (AsyncPostgresSaver.from_conn_string(postgres) as pg_saver,
                    AsyncPostgresStore.from_conn_string(postgres) as pg_store):
            await pg_saver.setup()
            await pg_store.setup()
            before = await database_size(postgres)
            start_cpu, start = time.process_time(), time.perf_counter()
            graph = create_cot(endpoint, config, checkpointer=pg_saver, store=pg_store)
            result = await graph.ainvoke({"question": "What is 2 + 3?"}, thread)
            stored = await database_size(postgres) - before
    else:
        async with AsyncSqliteSaver.from_conn_string(str(folder / "checkpoints.db")) as saver:
            if mode == "sqlite":
                graph = create_cot(endpoint, config, checkpointer=saver)
                result = await graph.ainvoke({"question": "What is 2 + 3?"}, thread)
            else:
                async with AsyncSqliteStore.from_conn_string(str(folder / "store.db")) as store:
                    await store.setup()
                    graph = create_cot(endpoint, config, checkpointer=saver, store=store)
                    result = await graph.ainvoke({"question": "What is 2 + 3?"}, thread)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    rounds = len(result["probes"])
    held = 4 * result["usage"]["reasoning_tokens"] + len(result["response"].encode())
    stored = stored or sum(p.stat().st_size for p in folder.glob("*.db"))
    return {"tokens": result["usage"]["reasoning_tokens"], "rounds": rounds,
            "cpu_ms_per_round": round(1000 * cpu / rounds, 2), "wall_s": round(wall, 2),
            "stored_mb": round(stored / 1e6, 3), "held_mb": round(held / 1e6, 3),
            "ratio": round(stored / held, 1) if stored else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--client", choices=("litellm", "openai"), default="litellm")
    parser.add_argument("--state-max", type=int, default=16384,
                        help="longest run of mode sqlite (quadratic: 228 MB at 32K)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(TESTS))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        endpoint = Endpoint(model="scripted", api_base=f"http://127.0.0.1:{port}/v1",
                            continuation="tokens", client=args.client, timeout_s=60)
        warm = CoTConfig(chunk_size=args.chunk, max_tokens=2 * args.chunk)
        with tempfile.TemporaryDirectory() as tmp:
            await one_program(endpoint, warm, "memory", Path(tmp))  # imports, connections
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
              f"client={args.client}, chunk={args.chunk}, threshold 3, probes never agree")
        rows: list[dict[str, Any]] = []
        databases = contextlib.ExitStack()
        postgres = None
        if "postgres+store" in args.modes:
            sys.path.insert(0, str(TESTS))
            from pg_server import temp_postgres

            postgres = databases.enter_context(temp_postgres("scale"))
        with databases:
            await run_lengths(args, endpoint, postgres, rows)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)


async def run_lengths(args: argparse.Namespace, endpoint: Endpoint, postgres: str | None,
                      rows: list[dict[str, Any]]) -> None:
    """One program per length and mode, each row printed as it comes."""
    for tokens in args.lengths:
        for mode in args.modes:
            if mode == "sqlite" and tokens > args.state_max:
                continue
            config = CoTConfig(chunk_size=args.chunk, max_tokens=tokens,
                               certainty_threshold=3)
            with tempfile.TemporaryDirectory() as tmp:
                row = {"mode": mode, **await one_program(endpoint, config, mode, Path(tmp),
                                                         postgres)}
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
