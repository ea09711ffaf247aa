"""vLLM's own counters, read from its ``/metrics``: what evaluation and tests compare usage to.

Token counts come from the server, never estimated. :func:`server_counters` sums each named
series over its label sets (engines, models, reasons) — ``vllm:prompt_tokens`` reads
``vllm:prompt_tokens_total``; a gauge such as ``vllm:num_requests_running`` reads as is::

    before = server_counters(server_root)
    ...  # run programs
    spent = counter_delta(before, server_counters(server_root))
    spent["vllm:generation_tokens"]  # == reasoning + probe completion tokens of the run
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

TOKEN_COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:prefix_cache_hits",
                  "vllm:prefix_cache_queries", "vllm:request_success")
"""The series most comparisons need: tokens in and out, prefix-cache hits and queries."""


def server_counters(server_root: str, names: Iterable[str] = TOKEN_COUNTERS,
                    *, timeout_s: float = 10.0) -> dict[str, float]:
    """Each of ``names`` summed over its label sets, from ``{server_root}/metrics``."""
    totals = dict.fromkeys(names, 0.0)
    text = httpx.get(f"{server_root.rstrip('/')}/metrics", timeout=timeout_s).text
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series = line.split("{", 1)[0].split(" ", 1)[0]
        name = series.removesuffix("_total")
        if name in totals and (series.endswith("_total") or series == name):
            totals[name] += float(line.rsplit(" ", 1)[-1])
    return totals


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each counter moved between two readings."""
    return {name: after[name] - before[name] for name in before}
