"""Calibrate: choose the stopping rule that saves the most tokens on the user's own traces
while certifying, with a finite-sample guarantee, how much accuracy it may lose.

**The loss.** One trace per problem (sample 0 of each; the traces' problems are the i.i.d.
draws). Full reasoning's answer on trace ``i`` is graded ``F_i``; rule ``r`` replayed on the
same trace (:mod:`~dynasor_graph.eval._replay`: the stop the graph would make) is graded
``R_i(r)``. The *paired loss* is::

    L_i(r) = 1   if F_i and not R_i(r)     (the rule is wrong where full reasoning was right)
           = 0   otherwise

and the accuracy the rule loses against full reasoning is its population mean ``E[L(r)]``.
It bounds the drop in accuracy from above (``acc(full) - acc(r) = E[L] - E[gain] <= E[L]``,
where a gain is the rule right where full reasoning was wrong, never credited).

**The guarantee.** With probability at least ``1 - delta`` over the draw of the calibration
traces, the chosen rule has ``E[L(r)] <= eps``, for new problems from the same distribution,
run with the same model and settings.

**The procedure** (Learn-then-Test, Angelopoulos et al. 2021, with fixed-sequence testing):

1. Shuffle the problems (``seed``) and split them: ``holdout`` share held out (never used to
   choose, only to report the realized loss), ``order`` share of the rest to order the
   candidates, the rest to calibrate.
2. Candidates: every rule the CoT graph runs on these traces: chunk sizes that are multiples
   of the recorded one, agreement thresholds, the hesitation filter on and off, and probes
   after every chunk or only after chunks completing a transition (where the traces record
   each probe's reasoning offset), and no token-confidence threshold or one of 0.3, 0.5, 0.8
   (where every probe records its answer's token confidence).
3. Order them on the ordering split only: by estimated loss, then savings, keeping each rule
   that saves more than every rule before it (a chain from conservative to aggressive).
4. On the calibration split, test ``H_r: E[L(r)] > eps`` along that chain with the exact
   binomial p-value ``p_r = P(Binomial(n, eps) <= k_r)`` (scipy; ``p_r <= delta`` exactly when
   the one-sided Clopper-Pearson upper bound is at most ``eps``), by fixed-sequence testing at
   level ``delta`` (MAPIE's ``control_fwer``): stop at the first ``p_r > delta``. The rules
   before that stop are all within the bound together with probability ``1 - delta``
   (family-wise error control; the order came from other data), so the rule chosen among
   them, the one saving the most on the calibration split, is too.

If even a rule that never loses could not pass (``(1 - eps)^n > delta``, i.e. ``n <
ln(delta) / ln(1 - eps)`` calibration traces), or the first rule tested fails, it refuses with
:class:`CalibrationError`: full reasoning is then the only rule with a guarantee.

MAPIE's LTT controllers take a classifier's scores and a one-parameter threshold grid; our
hypotheses are stopping rules replayed on traces, so only its fixed-sequence procedure is
used, over scipy's exact binomial p-values.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..cot import EFFORT_PRESETS
from ._calibrated import CalibratedRule, CalibrationError, DataFile, Outcome, Rule, sha256
from ._methods import Method, parse_method
from ._replay import _PER_TRACE
from ._traces import Trace, load_traces

if TYPE_CHECKING:  # numpy comes with the eval extra: imported where used, not with the package
    import numpy as np
    from numpy.typing import NDArray

DEFAULT_THRESHOLDS = (1, 2, 3, 4, 5, 6, 8)
DEFAULT_MULTIPLES = (1, 2, 3, 4, 6, 8)
DEFAULT_CONFIDENCES: tuple[float | None, ...] = (None, 0.3, 0.5, 0.8)
Placement = Literal["chunks", "transitions"]


@dataclass(frozen=True)
class Table:
    """Every candidate replayed on every trace: full reasoning's grade and cost per trace, and
    each rule's (rows: traces, columns: rules). Cost: reasoning + probe completion tokens."""

    rules: list[Rule]
    full_correct: NDArray[np.bool_]
    full_cost: NDArray[np.float64]
    correct: NDArray[np.bool_]
    cost: NDArray[np.float64]

    @property
    def loss(self) -> NDArray[np.bool_]:
        """The paired loss ``L_i(r)``: wrong where full reasoning was right."""
        return self.full_correct[:, None] & ~self.correct

    def savings(self, rows: NDArray[np.int_]) -> NDArray[np.float64]:
        """Each rule's share of full reasoning's generated tokens saved on ``rows``."""
        import numpy as np
        full = float(self.full_cost[rows].sum())
        if not full:
            return np.zeros(len(self.rules))
        return np.asarray(1 - self.cost[rows].sum(axis=0) / full, dtype=np.float64)


@dataclass(frozen=True)
class Selection:
    """What the test did: the tested chain (column indices), each one's p-value, how many
    passed before the first failure, and the chosen column."""

    chain: list[int]
    p_values: list[float]
    certified: int
    chosen: int


def candidates(chunk: int, max_tokens: int, thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
               multiples: Sequence[int] = DEFAULT_MULTIPLES,
               placements: Sequence[Placement] = ("chunks",),
               confidences: Sequence[float | None] = (None,)) -> list[Rule]:
    """The rules the graph can run on traces recorded every ``chunk`` tokens."""
    return [Rule(chunk_size=m * chunk, certainty_threshold=t, hesitation_filter=h, probe_at=p,
                 min_probe_confidence=c)
            for m in multiples if m * chunk <= max_tokens for t in thresholds
            for h in (True, False) for p in placements for c in confidences]


def search_space(traces: Sequence[Trace], thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
                 multiples: Sequence[int] = DEFAULT_MULTIPLES) -> list[Rule]:
    """The candidates these traces can replay: transition placement where every probe carries
    its reasoning offset, token-confidence thresholds where every probe carries its answer's
    confidence."""
    probes = [p for t in traces for p in t.probes]
    placements: tuple[Placement, ...] = (
        ("chunks", "transitions") if all(p.chars is not None for p in probes) else ("chunks",))
    confidences = (DEFAULT_CONFIDENCES if all(p.confidence is not None for p in probes)
                   else (None,))
    settings = traces[0].settings
    return candidates(settings.chunk_size, settings.max_tokens, thresholds, multiples,
                      placements, confidences)


def _method(rule: Rule) -> Method:
    return Method(rule.method, "cot", threshold=rule.certainty_threshold,
                  chunk=rule.chunk_size, hesitation=rule.hesitation_filter,
                  transitions=rule.probe_at == "transitions",
                  min_confidence=rule.min_probe_confidence)


def evaluate(traces: Sequence[Trace], rules: Sequence[Rule]) -> Table:
    """Replay full reasoning and every rule on every trace (the graph's stops, exactly)."""
    import numpy as np

    full = [_PER_TRACE["full"](parse_method("full"), t) for t in traces]
    rows = [[_PER_TRACE["cot"](_method(r), t) for r in rules] for t in traces]
    return Table(
        rules=list(rules),
        full_correct=np.array([r["correct"] for r in full], dtype=bool),
        full_cost=np.array([r["reasoning_tokens"] + r["probe_completion_tokens"]
                            for r in full], dtype=np.float64),
        correct=np.array([[r["correct"] for r in row] for row in rows], dtype=bool),
        cost=np.array([[r["reasoning_tokens"] + r["probe_completion_tokens"] for r in row]
                       for row in rows], dtype=np.float64))


def minimum_traces(eps: float, delta: float) -> int:
    """Calibration traces below which no rule can pass: ``(1 - eps)^n > delta``."""
    return math.ceil(math.log(delta) / math.log1p(-eps) - 1e-12)


def upper_bound(losses: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound on the loss at confidence ``1 - delta``."""
    from scipy.stats import beta

    return 1.0 if losses >= n else float(beta.ppf(1 - delta, losses + 1, n - losses))


def certify(table: Table, order: NDArray[np.int_], calibration: NDArray[np.int_],
            eps: float, delta: float) -> Selection:
    """Order on ``order`` rows, test in fixed sequence on ``calibration`` rows, choose.

    Raises :class:`CalibrationError` when too few calibration rows or no rule passes.
    """
    import numpy as np
    from mapie.risk_control import control_fwer
    from scipy.stats import binom

    n = len(calibration)
    needed = minimum_traces(eps, delta)
    if n < needed:
        raise CalibrationError(
            f"{n} calibration traces cannot certify an accuracy loss <= {eps:g} at confidence "
            f"{1 - delta:g}: even a rule that never loses needs at least {needed}")
    loss = table.loss
    estimated, saved = loss[order].mean(axis=0), table.savings(order)
    chain: list[int] = []
    for column in sorted(range(len(table.rules)), key=lambda c: (estimated[c], saved[c])):
        if saved[column] > 0 and (not chain or saved[column] > saved[chain[-1]]):
            chain.append(column)
    if not chain:
        raise CalibrationError("no candidate rule saves tokens on the ordering split")
    k = loss[calibration][:, chain].sum(axis=0)
    p_values = [float(p) for p in binom.cdf(k, n, eps)]
    passed = control_fwer(np.array(p_values), delta, fwer_method="fixed_sequence")
    if len(passed) == 0:
        first = table.rules[chain[0]]
        raise CalibrationError(
            f"no rule certified: the first rule tested, {first.method}, lost {int(k[0])} of "
            f"{n} calibration traces (Clopper-Pearson bound {upper_bound(int(k[0]), n, delta):.3f}"
            f" > {eps:g}); only full reasoning is certified: record more traces or allow a "
            "larger loss")
    certified = [chain[i] for i in passed]
    on_calibration = table.savings(calibration)
    chosen = max(certified, key=lambda c: on_calibration[c])
    return Selection(chain=chain, p_values=p_values, certified=len(certified), chosen=chosen)


def split(n: int, holdout: float, order: float, seed: int,
          ) -> tuple[NDArray[np.int_], NDArray[np.int_], NDArray[np.int_]]:
    """Seeded shuffle of ``range(n)`` into (ordering, calibration, held-out) row indices."""
    import numpy as np

    if not 0 <= holdout < 1 or not 0 < order < 1:
        raise ValueError("holdout must lie in [0, 1) and order in (0, 1)")
    rows = np.random.default_rng(seed).permutation(n)
    held = round(holdout * n)
    rest = rows[held:]
    ordering = max(1, round(order * len(rest)))
    return rest[:ordering], rest[ordering:], rows[:held]


@dataclass(frozen=True)
class Calibration:
    """The certified rule (what the config file holds) and every candidate's figures on the
    calibration split, for the plot."""

    rule: CalibratedRule
    table: Table
    selection: Selection
    calibration_rows: NDArray[np.int_]


def _outcome(correct: NDArray[np.bool_], losses: NDArray[np.bool_], saved: float,
             bound: float | None = None) -> Outcome:
    n = len(correct)
    return Outcome(n=n, losses=int(losses.sum()), loss=float(losses.mean()) if n else 0.0,
                   accuracy=float(correct.mean()) if n else 0.0, savings=saved,
                   upper_bound=bound)


def one_per_problem(traces: Sequence[Trace]) -> list[Trace]:
    """Sample 0 of each problem (the lowest sample where 0 is missing), sorted by id: the
    split then depends on the problems and the seed, not on the order traces were written."""
    best: dict[str, Trace] = {}
    for trace in traces:
        if trace.id not in best or trace.sample < best[trace.id].sample:
            best[trace.id] = trace
    return [best[key] for key in sorted(best)]


def calibrate(
    paths: Sequence[Path],
    max_accuracy_loss: float,
    confidence: float,
    *,
    holdout: float = 0.3,
    order: float = 0.3,
    seed: int = 0,
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
    multiples: Sequence[int] = DEFAULT_MULTIPLES,
) -> Calibration:
    """Certify the most saving stopping rule on the traces in ``paths`` (procedure and
    guarantee in the module docstring); raises :class:`CalibrationError` when it cannot."""
    eps, delta = max_accuracy_loss, 1 - confidence
    if not 0 < eps < 1 or not 0 < delta < 1:
        raise ValueError("max_accuracy_loss and confidence must lie strictly between 0 and 1")
    if not paths:
        raise ValueError("give at least one traces file")
    loaded = [(path, load_traces(path)) for path in paths]
    traces = one_per_problem([t for _, file in loaded for t in file])
    if not traces:
        raise CalibrationError("the traces files hold no traces")
    settings = _common_settings(traces)
    ordering, calibration_rows, held = split(len(traces), holdout, order, seed)
    needed = minimum_traces(eps, delta)
    if len(calibration_rows) < needed:
        total = next(n for n in range(needed, 100 * needed + 1000)
                     if len(split(n, holdout, order, seed)[1]) >= needed)
        raise CalibrationError(
            f"too few traces for the bound: {len(traces)} problems leave "
            f"{len(calibration_rows)} for calibration (holdout {holdout:g}, order {order:g}), "
            f"but certifying an accuracy loss <= {eps:g} at confidence {confidence:g} needs at "
            f"least {needed} even for a rule that never loses: record at least {total} "
            "problems, or allow a larger loss or a lower confidence")
    rules = search_space(traces, thresholds, multiples)
    table = evaluate(traces, rules)
    selection = certify(table, ordering, calibration_rows, eps, delta)
    chosen = selection.chosen
    losses = table.loss
    cal_k = int(losses[calibration_rows, chosen].sum())
    outcome = _outcome(table.correct[calibration_rows, chosen], losses[calibration_rows, chosen],
                       float(table.savings(calibration_rows)[chosen]),
                       upper_bound(cal_k, len(calibration_rows), delta))
    held_outcome = (_outcome(table.correct[held, chosen], losses[held, chosen],
                             float(table.savings(held)[chosen])) if len(held) else None)
    report_rows = held if len(held) else calibration_rows
    rule = CalibratedRule(
        model=settings["model"],
        data=[DataFile(path=str(path), sha256=sha256(path), traces=len(file))
              for path, file in loaded],
        settings=settings, max_accuracy_loss=eps, confidence=confidence, seed=seed,
        n_traces=len(traces), n_order=len(ordering), n_calibration=len(calibration_rows),
        n_holdout=len(held), rule=rules[chosen], calibration=outcome, holdout=held_outcome,
        compared=_compared(traces, report_rows, settings["chunk_size"]),
        candidates=len(rules), tested=len(selection.chain), certified=selection.certified,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    return Calibration(rule=rule, table=table, selection=selection,
                       calibration_rows=calibration_rows)


def _common_settings(traces: Sequence[Trace]) -> dict[str, Any]:
    """The recorded settings, which must agree across the traces on what the rule depends on."""
    first = traces[0].settings.model_dump()
    for trace in traces[1:]:
        other = trace.settings.model_dump()
        for key in ("model", "chunk_size", "max_tokens"):
            if other.get(key) != first.get(key):
                raise CalibrationError(
                    f"traces disagree on {key}: {first.get(key)!r} and {other.get(key)!r} "
                    f"(trace {trace.id!r}); calibrate one model and setting at a time")
    return first


def _compared(traces: Sequence[Trace], rows: NDArray[np.int_], chunk: int,
              ) -> dict[str, Outcome]:
    """full, oracle and the presets the traces can replay, on ``rows``."""
    import numpy as np

    names = ["full", "oracle"] + [p for p, (_, c) in EFFORT_PRESETS.items() if c % chunk == 0]
    subset = [traces[i] for i in rows]
    full = [_PER_TRACE["full"](parse_method("full"), t) for t in subset]
    full_cost = sum(r["reasoning_tokens"] + r["probe_completion_tokens"] for r in full)
    full_ok = np.array([r["correct"] for r in full], dtype=bool)
    out: dict[str, Outcome] = {}
    for name in names:
        method = parse_method(name)
        got = [_PER_TRACE[method.kind](method, t) for t in subset]
        ok = np.array([r["correct"] for r in got], dtype=bool)
        cost = sum(r["reasoning_tokens"] + r["probe_completion_tokens"] for r in got)
        out[name] = _outcome(ok, full_ok & ~ok, 1 - cost / full_cost if full_cost else 0.0)
    return out

