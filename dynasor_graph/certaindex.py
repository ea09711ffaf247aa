"""Certaindex: how settled a reasoning program is, as a number in [0, 1].

Every measure here maps its evidence to [0, 1]; graphs store the value in the state field
``certaindex`` and route on it with :func:`decide` (``exit`` / ``continue`` / ``widen``).

Probe agreement (Dynasor-CoT, paper §2.1). With window ``w`` (``certainty_threshold``) and
the last ``w`` probes ``p_{k-w+1} .. p_k`` (``p_k`` the latest)::

    valid(p)     = p.answer != "" and p.confident
    certaindex   = 0                                                   if not valid(p_k)
                 = |{ j in window : valid(p_j) and p_j.answer ≡ p_k.answer }| / w   otherwise

``≡`` is :func:`dynasor_graph.equivalent` (math-verify, else normalised text). Fewer than
``w`` probes count as missing, so the value reaches 1.0 exactly when the reference exit rule
holds: the last ``w`` probes are all non-empty, confident and equivalent.

Answer entropy (self-consistency, paper §3.1). Group ``n`` answers into equivalence classes
``C_i`` (an empty answer is a class of its own); ``H = -Σ |C_i|/n · ln(|C_i|/n)`` and
``certaindex = 1 - H / ln n`` (one non-empty answer: 1.0). See :func:`answer_entropy`; for
free-text answers pass ``same=`` :func:`dynasor_graph.embeddings.similar_meaning` (an optional
extra) instead of the math-verify equivalence.

Reward (tree search, paper §3.1). Rewards ``r_1 .. r_n`` in [0, 1] of the finished paths::

    reward_certaindex(r, "mean") = Σ r_i / n        (MCTS, paper)
    reward_certaindex(r, "max")  = max r_i          (Rebase, paper)

How concentrated the reward mass is, over the weights ``w_i = softmax(r_i / T)``:
``reward_concentration = 1 - H(w) / ln n`` (1.0: one branch takes all; 0.0: all alike).

Token confidence (DeepConf-style), where the server returns log-probabilities: the geometric
mean probability of the tokens in the least confident window of ``window`` tokens,
``exp(min_windows mean log p)``. See :func:`logprob_confidence`.

A probe's own token confidence is that geometric mean over its answer's tokens only
(``dynasor_graph._probe.answer_confidence``); :func:`cot_certaindex` joins the lowest one in
the window to probe agreement when ``CoTConfig.min_probe_confidence`` is set.

Combining (paper App. B.1: certain only when every signal passes its threshold)::

    combine((c_1, θ_1), .., (c_k, θ_k)) = min_j min(1, c_j / θ_j)

which reaches 1.0 exactly when every ``c_j ≥ θ_j``, so every algorithm routes with
``decide(combined, 1.0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from ._answers import equivalent

Decision = Literal["continue", "exit", "widen"]
"""Where a conditional edge goes next: stop and answer, reason on, or branch wider."""

StopReason = Literal["certain", "finished", "answered", "budget", "context", "width",
                     "exhausted", "repeated_tool_call", "timeout", "abstained"]
"""Why a program stopped, one vocabulary for every algorithm: its Certaindex reached the
threshold (``certain``); the model ended by itself (``finished``), after closing its thinking
and writing its answer (``answered``: a reasoning model done on its own); the token budget ran out
(``budget``); the reasoning filled the server's context window, so no further request could fit
(``context``); every allowed path was spent (``width``); a tree had nothing left to expand
(``exhausted``); an agent step only repeated earlier tool calls (``repeated_tool_call``); or
a scheduler stopped it (``timeout``, ``abstained``)."""


class ProbeLike(Protocol):
    """What a probe must offer to be scored: its parsed answer and confidence."""

    def __getitem__(self, key: str, /) -> object: ...


def probe_agreement(
    probes: Sequence[ProbeLike],
    window: int,
    same: Callable[[str, str], bool] = equivalent,
) -> float:
    """Certaindex of a chain of thought from its recent probes (formula in the module doc)."""
    if window < 1:
        raise ValueError("window must be at least 1")
    recent = list(probes)[-window:]
    if not recent:
        return 0.0
    latest = recent[-1]

    def valid(p: ProbeLike) -> bool:
        return bool(p["answer"]) and bool(p["confident"])

    if not valid(latest):
        return 0.0
    answer = str(latest["answer"])
    agreeing = sum(1 for p in recent if valid(p) and same(str(p["answer"]), answer))
    return agreeing / window


def cot_certaindex(
    probes: Sequence[ProbeLike],
    window: int,
    min_confidence: float | None = None,
    same: Callable[[str, str], bool] = equivalent,
) -> float:
    """The Dynasor-CoT stopping signal, written once for the graph and for ``replay``.

    Probe agreement over the last ``window`` probes; with ``min_confidence`` it is joined by
    :func:`combine` with the lowest token confidence among those probes (``None`` counts as
    0), so it reaches 1.0 exactly when the window agrees and every probe in it is at least
    that sure of its answer's tokens.
    """
    agreement = probe_agreement(probes, window, same)
    if min_confidence is None:
        return agreement
    recent = list(probes)[-window:]
    lowest = min((_token_confidence(p) for p in recent), default=0.0)
    return combine((agreement, 1.0), (lowest, min_confidence))


def _token_confidence(probe: ProbeLike) -> float:
    try:
        value = probe["confidence"]
    except KeyError:
        return 0.0
    return float(value) if isinstance(value, int | float) else 0.0


def decide(certaindex: float, threshold: float = 1.0, *, can_widen: bool = False) -> Decision:
    """Route on a Certaindex: ``exit`` once it reaches ``threshold``; below it ``widen`` where
    the algorithm can branch wider, else ``continue``."""
    if certaindex >= threshold:
        return "exit"
    return "widen" if can_widen else "continue"


def route_on(
    certaindex: float,
    threshold: float = 1.0,
    *,
    can_widen: bool = False,
    stops: Sequence[tuple[StopReason, bool]] = (),
) -> tuple[Decision, StopReason | None]:
    """The routing rule every algorithm shares: the decision and, on exit, why.

    ``exit`` (``certain``) once the Certaindex reaches ``threshold``; else the first of
    ``stops`` whose condition holds ends the run with its reason (a spent budget, no paths
    left…); else ``widen`` where the algorithm can branch wider, else ``continue``.
    """
    decision = decide(certaindex, threshold, can_widen=can_widen)
    if decision == "exit":
        return "exit", "certain"
    for reason, hit in stops:
        if hit:
            return "exit", reason
    return decision, None


def answer_entropy(
    answers: Sequence[str], same: Callable[[str, str], bool] = equivalent
) -> tuple[float, str]:
    """``1 - H / log n`` over equivalence classes of ``answers``, and the majority answer.

    An empty answer is its own class (it agrees with nothing). This is the SC Certaindex of the
    paper (§3.1); it also scores a window of probes for the ``entropy`` rule.
    """
    classes = _classes(answers, same)
    majority = weighted_majority(answers, same=same)
    n = len(answers)
    if n < 2:
        return (1.0 if majority else 0.0), majority
    entropy = -sum(len(c) / n * math.log(len(c) / n) for c in classes)
    return max(0.0, 1 - entropy / math.log(n)), majority  # no -2e-16 from rounding


def weighted_answer_entropy(
    answers: Sequence[str], weights: Sequence[float],
    same: Callable[[str, str], bool] = equivalent,
) -> tuple[float, str]:
    """:func:`answer_entropy` over the *weighted* answer distribution (DeepConf's
    confidence-weighted vote): class shares ``w(C_i) / Σ w``, ``1 - H / ln n``, and the
    class with the most weight. Equal weights give :func:`answer_entropy` exactly."""
    if len(weights) != len(answers) or any(w < 0 for w in weights):
        raise ValueError("give one non-negative weight per answer")
    majority = weighted_majority(answers, weights, same)
    total, n = float(sum(weights)), len(answers)
    if n < 2 or total <= 0:
        return (1.0 if majority and total > 0 else 0.0), majority
    shares = [sum(weights[i] for i in c) / total for c in _classes(answers, same)]
    entropy = -sum(s * math.log(s) for s in shares if s > 0)
    return max(0.0, 1 - entropy / math.log(n)), majority


def weighted_majority(
    answers: Sequence[str],
    weights: Sequence[float] | None = None,
    same: Callable[[str, str], bool] = equivalent,
) -> str:
    """The non-empty answer whose equivalence class has the largest total weight (default 1
    each; ties go to the class seen first); ``""`` when every answer is empty."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError("give one weight per answer")
    weight = list(weights) if weights is not None else [1.0] * len(answers)
    best, best_weight = "", -math.inf
    for members in _classes(answers, same):
        total = sum(weight[i] for i in members)
        if answers[members[0]] and total > best_weight:
            best, best_weight = answers[members[0]], total
    return best


def _classes(answers: Sequence[str], same: Callable[[str, str], bool]) -> list[list[int]]:
    """Indices of ``answers`` grouped by equivalence; each empty answer is a class alone."""
    classes: list[list[int]] = []
    for i, answer in enumerate(answers):
        home = next((c for c in classes if answer and same(answers[c[0]], answer)), None)
        if home is None:
            classes.append([i])
        else:
            home.append(i)
    return classes


def _unit(values: Sequence[float], what: str) -> list[float]:
    listed = [float(v) for v in values]
    if any(not 0.0 <= v <= 1.0 for v in listed):
        raise ValueError(f"{what} must lie in [0, 1], got {listed}")
    return listed


def reward_certaindex(rewards: Sequence[float], how: Literal["mean", "max"] = "mean") -> float:
    """The mean (MCTS) or max (Rebase) of the finished paths' rewards in [0, 1]; 0.0 if none."""
    listed = _unit(rewards, "rewards")
    if not listed:
        return 0.0
    return max(listed) if how == "max" else sum(listed) / len(listed)


def reward_concentration(rewards: Sequence[float], temperature: float = 0.1) -> float:
    """``1 - H(w) / ln n`` for ``w = softmax(r / temperature)``: 1.0 when one branch takes
    the whole reward mass, 0.0 when all branches are alike (and for fewer than two)."""
    weights = softmax_weights(rewards, temperature)
    if len(weights) < 2:
        return 0.0
    entropy = -sum(w * math.log(w) for w in weights if w > 0)
    return max(0.0, 1 - entropy / math.log(len(weights)))


def softmax_weights(rewards: Sequence[float], temperature: float = 0.1) -> list[float]:
    """``softmax(r_i / temperature)``: how Rebase shares its width among frontier nodes."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    listed = _unit(rewards, "rewards")
    if not listed:
        return []
    top = max(listed)
    exps = [math.exp((r - top) / temperature) for r in listed]
    total = sum(exps)
    return [e / total for e in exps]


def logprob_confidence(logprobs: Sequence[float], window: int = 2048) -> float:
    """Geometric-mean token probability of the least confident ``window``-token stretch
    (DeepConf's lowest group confidence, mapped to [0, 1]); 0.0 for no tokens."""
    if window < 1:
        raise ValueError("window must be at least 1")
    listed = [float(lp) for lp in logprobs]
    if any(lp > 0 for lp in listed):
        raise ValueError("log-probabilities must be <= 0")
    if not listed:
        return 0.0
    size = min(window, len(listed))
    running = sum(listed[:size])
    lowest = running
    for i in range(size, len(listed)):
        running += listed[i] - listed[i - size]
        lowest = min(lowest, running)
    return math.exp(lowest / size)


def combine(*signals: tuple[float, float]) -> float:
    """``min_j min(1, c_j / θ_j)`` over ``(certaindex, threshold)`` pairs: 1.0 exactly when
    every signal reaches its threshold (AND, paper App. B.1)."""
    if not signals:
        raise ValueError("combine needs at least one (certaindex, threshold) pair")
    values = []
    for value, threshold in signals:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
        values.append(min(1.0, value / threshold))
    return min(values)
