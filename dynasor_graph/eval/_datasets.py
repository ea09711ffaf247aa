"""Problem sets for evaluation: jsonl files, and a seeded generator of easy arithmetic.

A jsonl line is one problem: ``problem`` or ``question`` (text), ``answer`` (GSM8K's worked
solution ends in ``#### <number>``; the number is the gold answer) and optionally ``id`` /
``unique_id`` and ``level``. The spec ``generated:arithmetic?n=50&seed=0&level=mixed`` makes
``n`` word problems with exact integer answers instead, so a tiny model scores above zero::

    problems = load_dataset("../shared/data/gsm8k_dev.jsonl", limit=20)
    problems = load_dataset("generated:arithmetic?n=50&seed=0&level=1")
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from .._errors import DataFormatError

GENERATED_PREFIX = "generated:"
LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class Problem:
    """One problem: a unique id, the question text, the gold answer, and a difficulty level."""

    id: str
    question: str
    gold: str
    level: int | None = None


def load_dataset(spec: str, limit: int | None = None) -> list[Problem]:
    """The problems of a jsonl file or a ``generated:`` spec, the first ``limit`` of them."""
    if spec.startswith(GENERATED_PREFIX):
        problems = generate(spec)
    else:
        problems = read_jsonl(Path(spec), limit)
    return problems if limit is None else problems[:limit]


def read_jsonl(path: Path, limit: int | None = None) -> list[Problem]:
    """Read problems from ``path``; a malformed line raises :class:`DataFormatError`."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such dataset file")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            problem = _problem(line, f"{path.stem}-{number}", f"{path}:{number}")
            if problem.id in seen:
                raise DataFormatError(f"{path}:{number}: duplicate id {problem.id!r} "
                                      f"(first on line {seen[problem.id]})")
            seen[problem.id] = number
            problems.append(problem)
            if limit is not None and len(problems) >= limit:
                break
    return problems


def _problem(line: str, default_id: str, where: str) -> Problem:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataFormatError(f"{where}: not JSON ({exc})") from None
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = row.get("problem", row.get("question"))
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(f"{where}: needs a non-empty 'problem' or 'question' string")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataFormatError(f"{where}: needs an 'answer' (string or number)")
    gold = str(answer)
    if "####" in gold:  # GSM8K: a worked solution, the gold number after the last ####
        gold = gold.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold.strip():
        raise DataFormatError(f"{where}: the answer is empty")
    raw_id = row.get("id", row.get("unique_id", default_id))
    level = row.get("level")
    return Problem(id=str(raw_id), question=question.strip(), gold=gold.strip(),
                   level=level if isinstance(level, int) and not isinstance(level, bool) else None)


_NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Zoe", "Ken", "Ana")
_ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "cards")
_BOXES = ("boxes", "bags", "baskets", "jars", "shelves")


def generate(spec: str) -> list[Problem]:
    """Easy arithmetic word problems from ``generated:arithmetic?n=N&seed=S&level=L``.

    Level 1: one addition or subtraction of one-digit numbers. Level 2: one multiplication of
    one-digit numbers or one addition of two-digit numbers. Level 3: a product plus or minus a
    third number. ``level=mixed`` (the default) cycles 1, 2, 3. Same spec, same problems.
    """
    name, _, query = spec.removeprefix(GENERATED_PREFIX).partition("?")
    if name != "arithmetic":
        raise DataFormatError(f"{spec}: unknown generator {name!r} (known: arithmetic)")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - {"n", "seed", "level"})
    if unknown:
        raise DataFormatError(f"{spec}: unknown parameter {unknown[0]!r} (known: n, seed, level)")
    try:
        n, seed = int(params.get("n", "50")), int(params.get("seed", "0"))
    except ValueError:
        raise DataFormatError(f"{spec}: n and seed must be integers") from None
    level = params.get("level", "mixed")
    if n < 1 or level not in {"mixed", *map(str, LEVELS)}:
        raise DataFormatError(f"{spec}: needs n >= 1 and level 1, 2, 3 or mixed")
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        chosen = LEVELS[i % len(LEVELS)] if level == "mixed" else int(level)
        question, answer = _word_problem(rng, chosen)
        problems.append(Problem(id=f"arithmetic-{seed}-{i}", question=question,
                                gold=str(answer), level=chosen))
    return problems


def _word_problem(rng: random.Random, level: int) -> tuple[str, int]:
    who, item, box = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_BOXES)
    if level == 1:
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            return (f"{who} has {a} {item} and gets {b} more. "
                    f"How many {item} does {who} have?"), a + b
        a, b = max(a, b), min(a, b)
        return f"{who} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    if level == 2:
        if rng.random() < 0.5:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            return (f"{who} has {a} {box} with {b} {item} in each. "
                    f"How many {item} does {who} have in total?"), a * b
        a, b = rng.randint(10, 60), rng.randint(10, 39)
        return f"{who} has {a} {item} and buys {b} more. How many {item} does {who} have?", a + b
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return (f"{who} has {a} {box} with {b} {item} in each, and {c} loose {item}. "
                f"How many {item} does {who} have?"), a * b + c
    c = min(c, a * b - 1)  # something is left
    return (f"{who} has {a} {box} with {b} {item} in each and gives away {c} {item}. "
            f"How many {item} are left?"), a * b - c
