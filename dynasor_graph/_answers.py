"""Reading answers out of model text: probe answers, hesitation, equivalence.

Model output is only ever parsed as data (brace matching, regular expressions and
math-verify's LaTeX parser); nothing here executes it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

HESITATION_WORDS: tuple[str, ...] = ("wait", "hold", "but", "okay", "no", "hmm")
"""Words that mark a probe as not confident (the Dynasor reference list)."""

_MAX_ANSWER_CHARS = 256  # a longer "answer" is junk; keep parsing cheap and bounded


def probe_answer(text: str) -> str:
    """Return the text before the first ``}`` that closes no ``{`` (nested braces allowed).

    The probe prompt ends inside ``\\boxed{``, so the model's answer is whatever comes before
    the brace that closes it. No such brace (unfinished or unbalanced output) gives ``""``.
    """
    end = answer_end(text)
    return "" if end is None else _clean(text[:end])


def answer_end(text: str) -> int | None:
    """Where the probe's answer ends: the index of the first ``}`` that closes no ``{``."""
    depth = 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return i
            depth -= 1
    return None


def _clean(answer: str) -> str:
    """Strip whitespace and drop control characters (binary junk) from an answer."""
    kept = "".join(c for c in answer if unicodedata.category(c)[0] != "C" or c in " \t")
    kept = kept.strip()
    return kept if len(kept) <= _MAX_ANSWER_CHARS else ""


def is_confident(text: str, hesitation_words: Iterable[str] = HESITATION_WORDS) -> bool:
    """True unless ``text`` contains a hesitation word as a whole word (case-insensitive).

    Whole words on purpose: the reference tests substrings, so "know" counted as "no".
    """
    words = [re.escape(w) for w in hesitation_words if w]
    if not words:
        return True
    pattern = r"\b(?:" + "|".join(words) + r")\b"
    return re.search(pattern, text, flags=re.IGNORECASE) is None


def last_boxed(text: str) -> str:
    """Return the content of the last ``\\boxed{...}`` in ``text`` (``""`` if none)."""
    start = text.rfind("\\boxed{")
    while start != -1:
        answer = probe_answer(text[start + len("\\boxed{") :])
        if answer:
            return answer
        start = text.rfind("\\boxed{", 0, start)
    return ""


def final_answer(text: str) -> str:
    """The answer a finished reasoning text gives: its last boxed answer, else its last number."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


def normalize(answer: str) -> str:
    """A plain-text normal form: no spaces, ``$``, trailing period or ``\\text{}`` wrappers."""
    answer = re.sub(r"\\text\{([^{}]*)\}", r"\1", answer)
    answer = answer.replace("$", "").replace("\\!", "").replace("\\,", "")
    answer = re.sub(r"\s+", "", answer).lower().rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", answer):
        answer = answer.replace(",", "")
    return answer


_INTEGER = re.compile(r"-?\d+")


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple[object, ...]:
    from math_verify import parse  # lazy: sympy-heavy import

    # parsing_timeout=None: math-verify's timeout uses SIGALRM, which fails outside the main
    # thread (LangGraph runs sync work in executors); inputs are short, so the cost is bounded.
    try:
        return tuple(parse(f"\\boxed{{{answer}}}", parsing_timeout=None))
    except Exception:  # math-verify raises many types on odd LaTeX; any failure = unparsed
        return ()


@lru_cache(maxsize=8192)
def equivalent(a: str, b: str) -> bool:
    """True when two answers are mathematically equal (math-verify), else by normal form.

    Cached: a window of probes compares the same answers round after round.

    Empty answers are never equivalent to anything. Two integers are compared as integers,
    without math-verify (its sympy parse is most of a round's client CPU when answers change).
    When either side does not parse as mathematics, the normalised strings are compared instead.
    """
    if not a or not b:
        return False
    plain_a, plain_b = normalize(a), normalize(b)
    if plain_a == plain_b:
        return True
    if _INTEGER.fullmatch(plain_a) and _INTEGER.fullmatch(plain_b):
        return int(plain_a) == int(plain_b)  # no sympy for the common case (AIME, GSM8K)
    parsed_a, parsed_b = _parse(a), _parse(b)
    if not parsed_a or not parsed_b:
        return False
    from math_verify import verify

    try:
        return bool(
            verify(list(parsed_a), list(parsed_b), timeout_seconds=None)
            and verify(list(parsed_b), list(parsed_a), timeout_seconds=None)
        )
    except Exception:
        return False
