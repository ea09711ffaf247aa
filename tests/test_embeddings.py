"""Answer entropy over free-text answers, clustered by meaning with the packaged
all-MiniLM-L6-v2 (the ``embeddings`` extra, loaded offline on the CPU)."""

from __future__ import annotations

import math

import pytest

from dynasor_graph.certaindex import answer_entropy
from dynasor_graph.embeddings import similar_meaning

ANSWERS = ["The capital of France is Paris.", "Paris is the capital of France", "Paris",
           "It is Berlin.", "Berlin"]


@pytest.mark.slow  # loads all-MiniLM-L6-v2 on the CPU
def test_similar_meaning_clusters_paraphrases_that_exact_matching_keeps_apart() -> None:
    exact, _ = answer_entropy(ANSWERS)
    assert exact == 0.0  # five different strings: five classes
    by_meaning, majority = answer_entropy(ANSWERS, similar_meaning())
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))  # 3 Paris, 2 Berlin
    assert by_meaning == pytest.approx(1 - entropy / math.log(5))
    assert majority == ANSWERS[0]


def test_threshold_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        similar_meaning(threshold=0.0)
