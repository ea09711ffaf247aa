"""Datasets: the shared jsonl format, GSM8K's gold number, the arithmetic generator, bad lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dynasor_graph.eval import DataFormatError, Problem, load_dataset


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_problem_or_question_and_gsm8k_gold(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        json.dumps({"id": "g1", "question": "How many?",
                    "answer": "3 + 4 = <<3+4=7>>7\n#### 1,234"}),
        "",
        json.dumps({"unique_id": "m/1.json", "problem": " Find x. ", "answer": "\\frac{1}{2}",
                    "level": 2}),
        json.dumps({"problem": "AMC", "answer": 27.0}),
    )
    assert load_dataset(str(path)) == [
        Problem("g1", "How many?", "1234"),
        Problem("m/1.json", "Find x.", "\\frac{1}{2}", level=2),
        Problem("set-4", "AMC", "27.0"),  # no id: the file's stem and the line number
    ]
    assert [p.id for p in load_dataset(str(path), limit=2)] == ["g1", "m/1.json"]


def test_reads_the_shared_gsm8k_slice() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_dev.jsonl"
    if not shared.exists():
        pytest.skip("the shared data folder is not beside the project")
    problems = load_dataset(str(shared), limit=5)
    assert len(problems) == 5 and all(re.fullmatch(r"-?\d+", p.gold) for p in problems)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"answer": "1"}', "needs a non-empty 'problem' or 'question' string"),
        ('{"question": "  ", "answer": "1"}', "needs a non-empty 'problem' or 'question'"),
        ('{"question": "q"}', "needs an 'answer' (string or number)"),
        ('{"question": "q", "answer": null}', "needs an 'answer'"),
        ('{"question": "q", "answer": "#### "}', "the answer is empty"),
        ('{"id": "a", "question": "q", "answer": "2"}', "duplicate id 'a' (first on line 1)"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(tmp_path: Path, line: str,
                                                  message: str) -> None:
    path = write(tmp_path, '{"id": "a", "question": "q", "answer": "1"}', "", line)
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.jsonl: no such dataset file"):
        load_dataset(str(tmp_path / "nope.jsonl"))


def solve(question: str) -> int:
    """Recompute a generated problem's answer from its text, template by template."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if "in each" in question:
        a, b, *rest = numbers
        if "loose" in question:
            return a * b + rest[0]
        return a * b - rest[0] if "gives away" in question else a * b
    a, b = numbers
    return a - b if "gives away" in question else a + b


def test_generated_arithmetic_is_seeded_exact_and_levelled() -> None:
    problems = load_dataset("generated:arithmetic?n=60&seed=3")
    assert problems == load_dataset("generated:arithmetic?n=60&seed=3")
    assert problems != load_dataset("generated:arithmetic?n=60&seed=4")
    assert [p.level for p in problems[:6]] == [1, 2, 3, 1, 2, 3]
    assert len({p.id for p in problems}) == 60 and problems[0].id == "arithmetic-3-0"
    for problem in problems:
        assert int(problem.gold) == solve(problem.question), problem
        assert int(problem.gold) > 0 or problem.level == 1  # level 1 may give 0
    level_1 = load_dataset("generated:arithmetic?n=20&seed=0&level=1")
    assert {p.level for p in level_1} == {1}
    assert all(max(map(int, re.findall(r"\d+", p.question))) <= 9 for p in level_1)
    assert len(load_dataset("generated:arithmetic?n=20&seed=0", limit=7)) == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("generated:algebra?n=5", "unknown generator 'algebra'"),
        ("generated:arithmetic?count=5", "unknown parameter 'count'"),
        ("generated:arithmetic?n=five", "n and seed must be integers"),
        ("generated:arithmetic?level=4", "level 1, 2, 3 or mixed"),
        ("generated:arithmetic?n=0", "needs n >= 1"),
    ],
)
def test_a_bad_generator_spec_is_explained(spec: str, message: str) -> None:
    with pytest.raises(DataFormatError, match=re.escape(message)):
        load_dataset(spec)
