"""Every Certaindex measure on hand-computed values and edge cases, and the router's decision."""

from __future__ import annotations

import math

import pytest

from dynasor_graph.certaindex import (
    answer_entropy,
    combine,
    decide,
    logprob_confidence,
    probe_agreement,
    reward_certaindex,
    reward_concentration,
    softmax_weights,
    weighted_majority,
)
from dynasor_graph.cot import Probe


def probes(*answers: str, hesitant: tuple[int, ...] = ()) -> list[Probe]:
    return [Probe(tokens=64 * (i + 1), answer=a, confident=i not in hesitant, text=a + "}")
            for i, a in enumerate(answers)]


@pytest.mark.parametrize(
    ("answers", "hesitant", "window", "expected"),
    [
        ((), (), 3, 0.0),
        (("5",), (), 3, 1 / 3),  # fewer probes than the window count as missing
        (("5", "5"), (), 3, 2 / 3),
        (("5", "5", "5"), (), 3, 1.0),
        (("4", "5", "5", "5"), (), 3, 1.0),  # only the window counts
        (("5", "4", "5"), (), 3, 2 / 3),
        (("5", "5", "4"), (), 3, 1 / 3),
        (("5", "5", ""), (), 3, 0.0),  # latest empty
        (("5", "5", "5"), (2,), 3, 0.0),  # latest hesitant
        (("5", "5", "5"), (1,), 3, 2 / 3),  # a hesitant probe inside the window
        (("5", "", "5"), (), 3, 2 / 3),
        (("0.5", "\\frac{1}{2}", "1/2"), (), 3, 1.0),  # equivalence, not string equality
        (("7",), (), 1, 1.0),
    ],
)
def test_probe_agreement(answers: tuple[str, ...], hesitant: tuple[int, ...], window: int,
                         expected: float) -> None:
    assert probe_agreement(probes(*answers, hesitant=hesitant), window) == pytest.approx(expected)


def test_probe_agreement_is_one_exactly_when_exit_rule_holds() -> None:
    window = 3
    cases = [("5", "5", "5"), ("5", "5", "6"), ("", "", ""), ("5", "5"), ("1", "5", "5", "5")]
    for answers in cases:
        recent = probes(*answers)[-window:]
        rule = (len(recent) == window and all(p["answer"] and p["confident"] for p in recent)
                and len({p["answer"] for p in recent}) == 1)
        assert (probe_agreement(probes(*answers), window) == 1.0) is rule


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        probe_agreement(probes("1"), 0)


def test_decide() -> None:
    assert decide(1.0) == "exit"
    assert decide(0.99) == "continue"
    assert decide(0.5, threshold=0.5) == "exit"
    assert decide(0.2, threshold=0.7, can_widen=True) == "widen"


@pytest.mark.parametrize(
    ("answers", "expected", "majority"),
    [
        (["4"], 1.0, "4"),  # one sample: certain if it answered
        ([""], 0.0, ""),
        (["", "", ""], 0.0, ""),  # all empty: each empty answer is a class of its own
        (["1", "2", "3"], 0.0, "1"),  # all different; the tie goes to the first class
        (["2", "2.0", "4/2"], 1.0, "2"),  # math-verify equivalence
        (["1", "1", "2", "2"], 0.5, "1"),  # a two-way tie: H = ln 2 over ln 4
        (["1", "1", "1", "2"], 1 - (0.75 * math.log(4 / 3) + 0.25 * math.log(4)) / math.log(4),
         "1"),
    ],
)
def test_answer_entropy(answers: list[str], expected: float, majority: str) -> None:
    value, top = answer_entropy(answers)
    assert value == pytest.approx(expected)
    assert top == majority


def test_weighted_majority_pools_equivalent_answers() -> None:
    assert weighted_majority(["3", "5", "3.0"], [0.3, 0.5, 0.3]) == "3"  # 0.6 against 0.5
    assert weighted_majority(["3", "5"], [0.3, 0.5]) == "5"
    assert weighted_majority(["", ""], [1.0, 1.0]) == ""
    with pytest.raises(ValueError, match="one weight per answer"):
        weighted_majority(["3"], [1.0, 2.0])


def test_reward_certaindex_is_the_mean_or_the_max() -> None:
    assert reward_certaindex([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert reward_certaindex([0.2, 0.4, 0.9], "max") == 0.9
    assert reward_certaindex([]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward_certaindex([1.2])


def test_reward_concentration() -> None:
    assert reward_concentration([0.7]) == 0.0  # one branch: nothing to compare
    assert reward_concentration([0.5, 0.5, 0.5]) == pytest.approx(0.0)
    w = softmax_weights([1.0, 0.0], temperature=0.5)
    assert w == pytest.approx([math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1)])
    entropy = -sum(x * math.log(x) for x in w)
    assert reward_concentration([1.0, 0.0], 0.5) == pytest.approx(1 - entropy / math.log(2))
    assert reward_concentration([1.0, 0.0, 0.0], 0.01) > 0.99


def test_logprob_confidence_is_the_least_confident_window() -> None:
    # windows of two: (-1,-1) (-1,-3) (-3,-1): the lowest mean is -2
    assert logprob_confidence([-1, -1, -3, -1], window=2) == pytest.approx(math.exp(-2))
    assert logprob_confidence([-0.5], window=4) == pytest.approx(math.exp(-0.5))
    assert logprob_confidence([]) == 0.0
    with pytest.raises(ValueError, match="<= 0"):
        logprob_confidence([0.1])


def test_combine_is_one_only_when_every_signal_passes() -> None:
    assert combine((0.8, 0.7), (0.5, 0.4)) == 1.0
    assert combine((0.35, 0.7), (0.5, 0.4)) == pytest.approx(0.5)
    assert decide(combine((0.35, 0.7)), 1.0, can_widen=True) == "widen"
    with pytest.raises(ValueError, match="threshold"):
        combine((0.5, 0.0))
    with pytest.raises(ValueError, match="at least one"):
        combine()
