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
``certaindex = 1 - H / ln n`` (one non-empty answer: 1.0). See :func:`answer_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from ._answers import equivalent

Decision = Literal["continue", "exit", "widen"]


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


def decide(certaindex: float, threshold: float = 1.0, *, can_widen: bool = False) -> Decision:
    """Route on a Certaindex: ``exit`` once it reaches ``threshold``; below it ``widen`` where
    the algorithm can branch wider, else ``continue``."""
    if certaindex >= threshold:
        return "exit"
    return "widen" if can_widen else "continue"


def answer_entropy(
    answers: Sequence[str], same: Callable[[str, str], bool] = equivalent
) -> tuple[float, str]:
    """``1 - H / log n`` over equivalence classes of ``answers``, and the majority answer.

    An empty answer is its own class (it agrees with nothing). This is the SC Certaindex of the
    paper (§3.1); it also scores a window of probes for the ``entropy`` rule.
    """
    classes: list[list[str]] = []
    for answer in answers:
        home = next((c for c in classes if answer and same(c[0], answer)), None)
        if home is None:
            classes.append([answer])
        else:
            home.append(answer)
    valid = [c for c in classes if c[0]]
    majority = max(valid, key=len)[0] if valid else ""
    n = len(answers)
    if n < 2:
        return (1.0 if majority else 0.0), majority
    entropy = -sum(len(c) / n * math.log(len(c) / n) for c in classes)
    return 1 - entropy / math.log(n), majority
