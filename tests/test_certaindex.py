"""The CoT Certaindex (probe agreement) and the router's decision."""

from __future__ import annotations

import pytest

from dynasor_graph import Probe, decide, probe_agreement


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
