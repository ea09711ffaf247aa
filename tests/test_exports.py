"""The public surface: everything in ``__all__`` exists, and nothing private leaks into it."""

from __future__ import annotations

import dynasor_graph


def test_all_exports_exist() -> None:
    for name in dynasor_graph.__all__:
        assert hasattr(dynasor_graph, name), name
    assert sorted(dynasor_graph.__all__, key=str.lower) == sorted(
        set(dynasor_graph.__all__), key=str.lower)
    assert not [n for n in dynasor_graph.__all__ if n.startswith("_")]


def test_import_does_not_load_litellm_or_vllm() -> None:
    import subprocess
    import sys

    code = ("import sys, dynasor_graph; "
            "print(sorted(m for m in ('litellm', 'vllm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
