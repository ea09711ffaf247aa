"""Replay: evaluate stopping rules on recorded probe traces, offline and in seconds.

Each method walks a trace's probes the way the live graph would meet them and stops where its
rule says: Dynasor-CoT presets use :func:`~dynasor_graph.probe_agreement` on every m-th probe
(chunk = m times the recorded chunk), ``entropy`` the normalised answer entropy of the last W
probes, ``sc`` the SC Certaindex over a problem's samples, and ``oracle`` stops at the first
probe after which the probe answer equals the final answer and never changes again.
``cot:T@C+transitions`` replays ``probe_at='transitions'`` (skipping a probe does not change
the reasoning): only the probes after chunks that complete a transition marker count. What
traces cannot replay is a probe *at* a transition token inside a chunk (DEER's placement):
they hold probes at chunk ends only. A trace that ended at the server's context window
(``context``) replays as one that spent its budget: the model did not finish, every method
meets its last probe, and that probe answers (``truncate:N`` beyond the window is that run)::

    traces = load_traces(Path("traces.jsonl"))
    rows, summary = replay_traces(traces, ["full", "oracle", "mid", "cot:2@32"])
    summary["mid"]["savings_vs_full"], summary["mid"]["share_of_oracle"]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from .._answers import equivalent
from .._probe import TRANSITION_MARKERS, crossed_transition
from ..certaindex import answer_entropy, cot_certaindex, decide
from ._methods import Method, parse_methods
from ._report import ResultRow, summarize
from ._traces import Trace, TraceProbe

DEFAULT_METHODS = ("full", "oracle", "mild", "low", "mid", "high", "crazy", "entropy:0.6@5")


@lru_cache(maxsize=65536)
def _same(a: str, b: str) -> bool:
    """:func:`equivalent`, cached: replay compares the same few answers many times."""
    return equivalent(a, b)


def _row(method: Method, trace: Trace, answer: str, tokens: int, probes: Iterable[TraceProbe],
         stop: str) -> ResultRow:
    used = list(probes)
    return ResultRow(
        id=trace.id, sample=trace.sample, method=method.name, correct=_same(answer, trace.gold),
        answer=answer, gold=trace.gold, reasoning_tokens=tokens,
        probe_prompt_tokens=sum(p.prompt_tokens for p in used),
        probe_completion_tokens=sum(p.completion_tokens for p in used),
        stop_reason=stop, wall_s=None)


def _full(method: Method, trace: Trace) -> ResultRow:
    """Run to the end; a budget or context-window stop pays for the one probe that gives its
    answer."""
    last = trace.probes[-1:] if trace.probe_answered else []
    return _row(method, trace, trace.answer, trace.reasoning_tokens, last, trace.stop_reason)


def _oracle(method: Method, trace: Trace) -> ResultRow:
    start = len(trace.probes)
    while start > 0 and _same(trace.probes[start - 1].answer, trace.answer):
        start -= 1
    if start == len(trace.probes) or trace.probes[start].tokens >= trace.reasoning_tokens:
        return _full(method, trace)
    stop = trace.probes[start]  # it knows when to stop; it pays for the one probe it answers by
    return _row(method, trace, stop.answer, stop.tokens, [stop], "certain")


def _truncate(method: Method, trace: Trace) -> ResultRow:
    if trace.reasoning_tokens <= method.budget and trace.stop_reason == "finished":
        return _full(method, trace)
    if trace.reasoning_tokens < method.budget and trace.stop_reason == "context":
        return _full(method, trace)  # the window ends it before N, on the same last probe
    if trace.settings.max_tokens <= method.budget:
        return _full(method, trace)
    at = [p for p in trace.probes if p.tokens == method.budget]
    if not at:
        raise ValueError(f"{method.name}: trace {trace.id!r} has no probe at {method.budget} "
                         f"tokens (recorded chunk {trace.settings.chunk_size})")
    return _row(method, trace, at[0].answer, method.budget, at, "budget")


def _every_mth(method: Method, trace: Trace) -> list[TraceProbe]:
    """The probes a graph with chunk ``method.chunk`` would have made on this trace."""
    recorded = trace.settings.chunk_size
    if method.chunk % recorded:
        raise ValueError(f"{method.name}: chunk {method.chunk} is not a multiple of the "
                         f"recorded chunk size {recorded} (trace {trace.id!r})")
    step, last = method.chunk // recorded, len(trace.probes) - 1
    return [p for i, p in enumerate(trace.probes)
            if (i + 1) % step == 0 or (i == last and trace.probe_answered)]


def _at_transitions(method: Method, trace: Trace, probes: list[TraceProbe]
                    ) -> list[TraceProbe]:
    """Of the probes a graph with chunk ``method.chunk`` meets, those ``probe_at=
    'transitions'`` makes: after a chunk whose text completes a transition marker, and the
    last one at the budget or the context window. Exact from the recorded reasoning and each
    probe's offset (``chars``)."""
    if any(p.chars is None for p in probes):
        raise ValueError(f"{method.name}: trace {trace.id!r} was recorded before probes "
                         "carried their reasoning offset (chars); record it again")
    markers = tuple(getattr(trace.settings, "transition_markers", None) or TRANSITION_MARKERS)
    kept, start = [], 0
    for probe in probes:
        end = int(probe.chars or 0)
        last = trace.probe_answered and probe is trace.probes[-1]
        if last or crossed_transition(trace.reasoning[:end], start, markers):
            kept.append(probe)
        start = end
    return kept


def _cot(method: Method, trace: Trace) -> ResultRow:
    seen: list[TraceProbe] = []
    probes = _every_mth(method, trace)
    if method.min_confidence is not None and any(p.confidence is None for p in probes):
        raise ValueError(f"{method.name}: trace {trace.id!r} has probes without token "
                         "confidence (recorded in text mode, or before it was recorded)")
    for probe in _at_transitions(method, trace, probes) if method.transitions else probes:
        seen.append(probe)
        scored = [{"answer": p.answer, "confident": p.confident or not method.hesitation,
                   "confidence": p.confidence} for p in seen]
        certaindex = cot_certaindex(scored, int(method.threshold), method.min_confidence, _same)
        if decide(certaindex) == "exit":
            return _row(method, trace, probe.answer, probe.tokens, seen, "certain")
    return _row(method, trace, trace.answer, trace.reasoning_tokens, seen, trace.stop_reason)


def _entropy(method: Method, trace: Trace) -> ResultRow:
    for k in range(method.window, len(trace.probes) + 1):
        window = trace.probes[k - method.window : k]
        answers = [p.answer if p.confident else "" for p in window]
        certaindex, majority = answer_entropy(answers, _same)
        if certaindex >= method.threshold and majority:
            probe = window[-1]
            return _row(method, trace, majority, probe.tokens, trace.probes[:k], "certain")
    return _row(method, trace, trace.answer, trace.reasoning_tokens, trace.probes,
                trace.stop_reason)


def _sc(method: Method, samples: list[Trace]) -> ResultRow:
    """Self-consistency over a problem's samples; ``sc:X@D`` stops after D if certain."""
    used, stop = samples, "all_samples"
    if 0 < method.window < len(samples):
        certaindex, _ = answer_entropy([t.answer for t in samples[: method.window]], _same)
        if certaindex >= method.threshold:
            used, stop = samples[: method.window], "certain"
    _, answer = answer_entropy([t.answer for t in used], _same)
    fulls = [_full(method, t) for t in used]
    first = samples[0]
    return ResultRow(
        id=first.id, sample=None, method=method.name, correct=_same(answer, first.gold),
        answer=answer, gold=first.gold, reasoning_tokens=sum(t.reasoning_tokens for t in used),
        probe_prompt_tokens=sum(r["probe_prompt_tokens"] for r in fulls),
        probe_completion_tokens=sum(r["probe_completion_tokens"] for r in fulls),
        stop_reason=stop, wall_s=None)


_PER_TRACE = {"full": _full, "oracle": _oracle, "truncate": _truncate, "cot": _cot,
              "entropy": _entropy}


def default_methods(traces: Sequence[Trace]) -> list[str]:
    """The defaults that fit these traces: presets whose chunk the recorded chunk divides, and
    self-consistency when there are several samples per problem."""
    chunks = {t.settings.chunk_size for t in traces}
    methods = [name for name in DEFAULT_METHODS
               if all(m.chunk % c == 0 for m in parse_methods([name]) for c in chunks)]
    samples = max((t.sample + 1 for t in traces), default=1)
    if samples >= 3:
        methods += ["sc", f"sc:0.7@{max(2, samples // 2)}"]
    return methods


def replay_traces(traces: Sequence[Trace], methods: Sequence[str] | None = None,
                  ) -> tuple[list[ResultRow], dict[str, dict[str, Any]]]:
    """Replay ``methods`` (default: :func:`default_methods`) on ``traces``.

    ``full`` and ``oracle`` are always included (and ``sc`` with any ``sc:`` method), since
    savings and the share of the oracle's savings are measured against them; the share is
    ``None`` for self-consistency and when the oracle saves nothing.
    """
    if not traces:
        raise ValueError("no traces to replay")
    parsed = parse_methods(list(methods or default_methods(traces)))
    needed = ["full", "oracle"] + (["sc"] if any(m.kind == "sc" for m in parsed) else [])
    parsed = parse_methods(needed + [m.name for m in parsed])
    groups: dict[str, list[Trace]] = {}
    for trace in traces:
        groups.setdefault(trace.id, []).append(trace)
    rows: list[ResultRow] = []
    for method in parsed:
        if method.kind == "sc":
            rows += [_sc(method, sorted(g, key=lambda t: t.sample)) for g in groups.values()]
        else:
            rows += [_PER_TRACE[method.kind](method, t) for t in traces]
    summary = summarize(rows, [m.name for m in parsed], {m.name: m.baseline for m in parsed})
    oracle = summary["oracle"]["savings_vs_full"]
    for method in parsed:
        values = summary[method.name]
        # No share of nothing: when the oracle saves nothing (its one probe can cost more than
        # the reasoning it skips), the share is undefined.
        values["share_of_oracle"] = (
            values["savings_vs_full"] / oracle
            if method.kind != "sc" and oracle and oracle > 0
            and values["savings_vs_full"] is not None else None)
    return rows, summary
