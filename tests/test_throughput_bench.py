"""``benchmarks/throughput_bench.py`` against the scripted token server: each mode's generated
tokens counted from usage are the tokens the server's ``/metrics`` counter moved by during that
mode (the warm-up and the other modes left out), plain makes exactly ``max_tokens`` per program
and no probes, and the per-answer figures are the programs' own. No program exits early, so
the overlapped streams run to the budget and every token sent is received (an exit's
discarded tokens depend on timing: the real-vLLM run measures them). Counts only, no
timing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from scripted_server import SERVED_NAME, ScriptedServer, tokens

from dynasor_graph import Endpoint

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput_bench.py"
MAX_TOKENS, CHUNK = 16, 8
PROBE = "7} because"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("throughput_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_each_mode_counts_what_the_server_generated_during_it(
        scripted: ScriptedServer) -> None:
    bench = load_bench()
    scripted.token_api = True
    scripted.script.probes = [PROBE]  # every probe agrees, but 2 probes are below threshold 3
    endpoint = Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=scripted.api_base,
                        timeout_s=10, continuation="tokens", client="openai")
    args = bench.parse_args([
        "--programs", "2", "3", "--max-tokens",
        str(MAX_TOKENS), "--chunk", str(CHUNK), "--threshold", "3", "--timeout", "120",
        "--repeats", "2", "--settle-s", "0", "--dataset", "generated:arithmetic?n=4&seed=0",
        "--no-progress"])
    report = await bench.bench(endpoint, args)

    probe = len(tokens(PROBE)) * (MAX_TOKENS // CHUNK)  # probe tokens of one program
    rows = {(r["N"], r["mode"], r["repeat"]): r for r in report["rows"]}
    modes = ("plain", "sequential", "overlapped")
    assert list(rows) == [(n, mode, repeat) for n in (2, 3) for repeat in (0, 1)
                          for mode in modes]
    for (n, mode, repeat), row in rows.items():
        per_program = MAX_TOKENS + (probe if mode != "plain" else 0)
        assert row["tokens_metrics"] == row["tokens_usage"] == n * per_program, row
        assert row["used_per_answer"] == per_program
        assert row["reasoning_per_answer"] == MAX_TOKENS
        assert row["discarded"] == 0 and not row["timed_out"] and not row["errors"]
        assert len(report["latencies_s"][f"{n} {mode} #{repeat}"]) == n
    assert rows[2, "plain", 1]["stops"] == {"length": 2}
    assert rows[3, "sequential", 0]["stops"] == {"budget": 3}
    assert rows[3, "overlapped", 0]["stops"] == {"budget": 3}
    assert rows[3, "sequential", 1]["scheduler_tokens"] == 3 * (MAX_TOKENS + probe)
    assert rows[3, "overlapped", 1]["scheduler_tokens"] == 3 * (MAX_TOKENS + probe)
    # overlapped: one stream per program, its tokens all sent
    streams = scripted.streams
    assert len(streams) == 1 + 2 * (2 + 3)  # the warm-up's, then every run's
    assert all(s.tokens == s.sent == MAX_TOKENS and not s.disconnected for s in streams)
    assert [(m["N"], m["mode"], m["runs"]) for m in report["medians"]] == [
        (n, mode, 2) for n in (2, 3) for mode in modes]
    # Everything the server generated is in a row, but the warm-up (one program per mode).
    served = sum(e["usage"]["completion_tokens"] for e in scripted.script.log)
    warm_up = MAX_TOKENS + 2 * (MAX_TOKENS + probe)
    assert served - warm_up == sum(r["tokens_metrics"] for r in rows.values())
    assert report["skipped"] == [] and report["prefix_cache_reset"] is False  # no such route
