"""The public surface: exactly these names, each of which exists, and nothing private.

Pinned like httpx's ``test_exported_members``: adding or removing a public name is a decision,
made here on purpose, not a side effect of an import.
"""

from __future__ import annotations

from types import ModuleType

import pytest

import dynasor_graph
import dynasor_graph.eval
import dynasor_graph.local

ROOT = [
    "ALGORITHMS", "Algorithm", "CoTConfig", "CoTInput", "CoTOutput", "CoTState",
    "DataFormatError", "Decision", "DynasorError", "Endpoint", "EndpointError",
    "EndpointUnreachable", "LocalServerError", "MCTSConfig", "Probe", "ProbeConfig",
    "ProbeSettings",
    "RebaseConfig", "SCConfig", "SCOutput", "Scheduler", "SchedulerConfig", "ServerBusy",
    "ServerRefused", "StopReason", "TreeOutput", "Usage", "add_usage", "certaindex",
    "certaindex_condition", "create_cot", "create_dynasor_cot", "create_graph", "create_mcts",
    "create_rebase", "create_sc", "probe_node", "rewards", "solve",
]
EVAL = [
    "DEFAULT_METHODS", "LoadReport", "Problem", "ResultRow", "Trace", "TraceProbe",
    "load_dataset", "load_traces", "record_trace", "record_traces", "replay_traces", "run_bench",
    "run_load", "table", "write_report",
]
LOCAL = [
    "CLASSIFIER_MODEL_NAME", "LOCAL_PORT", "LocalServer", "SERVED_MODEL_NAME",
    "default_endpoint", "ensure_model", "free_port", "serve_forever",
]


@pytest.mark.parametrize(("module", "names"), [(dynasor_graph, ROOT),
                                                (dynasor_graph.eval, EVAL),
                                                (dynasor_graph.local, LOCAL)])
def test_exported_members(module: ModuleType, names: list[str]) -> None:
    assert sorted(module.__all__) == sorted(names)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


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
