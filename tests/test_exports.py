"""The public surface: exactly these names, each of which exists, and nothing private.

Pinned like httpx's ``test_exported_members``: adding or removing a public name is a decision,
made here on purpose, not a side effect of an import.
"""

from __future__ import annotations

from types import ModuleType

import pytest

import dynasor_graph
import dynasor_graph.cot
import dynasor_graph.eval
import dynasor_graph.local
import dynasor_graph.mcts
import dynasor_graph.rebase
import dynasor_graph.sc

ROOT = [
    "Algorithm", "CoTConfig", "DynasorError", "Endpoint", "EndpointError", "EndpointUnreachable",
    "MCTSConfig", "ProbeConfig", "RebaseConfig", "SCConfig", "Scheduler", "SchedulerConfig",
    "ServerBusy", "ServerRefused", "Usage", "add_usage", "certaindex_condition", "create_cot",
    "create_graph", "create_mcts", "create_rebase", "create_sc", "probe_node", "solve",
]
EVAL = [
    "CalibratedRule", "Calibration", "CalibrationError", "DEFAULT_METHODS", "DataFormatError",
    "LoadReport", "Problem", "ResultRow", "Trace", "TraceProbe", "calibrate", "load_dataset",
    "load_traces", "record_trace", "record_traces", "replay_traces", "run_bench", "run_load",
    "table", "write_report",
]
LOCAL = [
    "CLASSIFIER_MODEL_NAME", "LOCAL_PORT", "LocalServer", "LocalServerError", "SERVED_MODEL_NAME",
    "default_endpoint", "ensure_model", "free_port", "serve_forever",
]
COT = [
    "CoTConfig", "CoTInput", "CoTOutput", "CoTState", "EFFORT_PRESETS", "Effort", "Probe",
    "certaindex_condition", "create_cot", "finish_node", "prepare_node", "probe_node",
    "reason_node",
]
SC = ["PathState", "SCConfig", "SCOutput", "SCState", "create_sc"]
MCTS = ["MCTSConfig", "TreeNode", "TreeOutput", "TreeState", "create_mcts"]
REBASE = ["RebaseConfig", "TreeOutput", "TreeState", "beam_counts", "create_rebase"]


@pytest.mark.parametrize(("module", "names"), [(dynasor_graph, ROOT),
                                                (dynasor_graph.eval, EVAL),
                                                (dynasor_graph.local, LOCAL),
                                                (dynasor_graph.cot, COT),
                                                (dynasor_graph.sc, SC),
                                                (dynasor_graph.mcts, MCTS),
                                                (dynasor_graph.rebase, REBASE)])
def test_exported_members(module: ModuleType, names: list[str]) -> None:
    assert sorted(module.__all__) == sorted(names)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_the_root_stays_small() -> None:
    """The root holds what most programs use (langgraph.prebuilt exports 6): at most 25."""
    assert len(dynasor_graph.__all__) <= 25


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
