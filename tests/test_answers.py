"""Answer parsing, whole-word hesitation and equivalence."""

from __future__ import annotations

import pytest

from dynasor_graph._answers import equivalent, final_answer, is_confident, probe_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42} \\]", "42"),
        ("\\frac{1}{2}} \\]", "\\frac{1}{2}"),
        ("\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("  7 }", "7"),
        ("}", ""),
        ("no closing brace at all", ""),
        ("{unbalanced", ""),
        ("{a}{b", ""),
        ("", ""),
        ("\x00\x01\x02 5\x7f}", "5"),
        ("9" * 1000 + "}", ""),  # huge: junk, not an answer
    ],
)
def test_probe_answer(text: str, expected: str) -> None:
    assert probe_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "confident"),
    [
        ("42}", True),
        ("I know it is 42}", True),  # "know" contains "no" but is not the word "no"
        ("nothing but 4", False),  # "but" as a word
        ("butter 4", True),
        ("Hmm, 42", False),
        ("WAIT 42", False),
        ("hold on", False),
        ("Okay 42", False),
        ("no.", False),
        ("holder 5", True),
    ],
)
def test_is_confident_whole_words(text: str, confident: bool) -> None:
    assert is_confident(text) is confident


def test_is_confident_custom_words() -> None:
    assert is_confident("maybe 4", ("maybe",)) is False
    assert is_confident("wait 4", ()) is True


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("12", "12", True),
        ("12", "12.0", True),
        ("\\frac{1}{2}", "0.5", True),
        ("1/2", "\\frac12", True),
        ("12", "13", False),
        ("", "", False),
        ("", "12", False),
        ("x+1", "1+x", True),
        ("\\text{Paris}", "paris", True),
        ("Paris", "London", False),
        ("1,000", "1000", True),
        ("012", "12", True),
        ("-07", "-7", True),
        ("-7", "7", False),
    ],
)
def test_equivalent(a: str, b: str, same: bool) -> None:
    assert equivalent(a, b) is same
    assert equivalent(b, a) is same


def test_integers_are_compared_without_math_verify() -> None:
    from dynasor_graph._answers import _parse

    before = _parse.cache_info()
    assert equivalent("4100", "4101") is False
    assert equivalent("-4100", "4100") is False
    after = _parse.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # never parsed


def test_equivalent_survives_junk() -> None:
    assert equivalent("\\frac{", "\\frac{") is True  # same text, unparsable
    assert equivalent("\\frac{", "}}{{") is False
    assert equivalent("__import__('os').system('true')", "0") is False


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so the result is \\boxed{17}.", "17"),
        ("\\boxed{1} then \\boxed{\\frac{2}{3}}", "\\frac{2}{3}"),
        ("3 apples and 4 pears make 7.", "7"),
        ("total 1,250.", "1250"),
        ("no numbers here", ""),
    ],
)
def test_final_answer(text: str, answer: str) -> None:
    assert final_answer(text) == answer
