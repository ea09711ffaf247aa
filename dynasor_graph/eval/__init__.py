"""Evaluation tooling, apart from the library: datasets, probe traces, offline replay of
stopping rules, live benchmarks, scheduler load runs and their reports.

- :func:`load_dataset` reads jsonl problem sets (or generates easy arithmetic);
- :func:`record_traces` reasons to the budget probing after every chunk (resumable jsonl);
- :func:`replay_traces` evaluates stopping rules on those traces in seconds;
- :func:`calibrate` picks the most saving rule whose accuracy loss against full reasoning is
  certified (Learn-then-Test, Clopper-Pearson) and returns the :class:`CalibratedRule` to save;
- :func:`run_bench` runs methods live (optionally under a :class:`~dynasor_graph.Scheduler`);
- :func:`run_load` drives many programs through a scheduler and reports what it saw.

Needs the ``eval`` extra (tqdm progress bars, the matplotlib plots, scipy and MAPIE)::

    problems = load_dataset("generated:arithmetic?n=20")
    traces = await record_traces(endpoint, problems, CoTConfig(chunk_size=32), Path("t.jsonl"))
    rows, summary = replay_traces(traces)
"""

from .._errors import DataFormatError
from ._bench import DEFAULT_METHODS, run_bench
from ._calibrate import Calibration, calibrate
from ._calibrated import CalibratedRule, CalibrationError
from ._datasets import Problem, load_dataset
from ._load import LoadReport, run_load
from ._replay import replay_traces
from ._report import ResultRow, table, write_report
from ._traces import Trace, TraceProbe, load_traces, record_trace, record_traces

__all__ = [
    "DEFAULT_METHODS",
    "CalibratedRule",
    "Calibration",
    "CalibrationError",
    "DataFormatError",
    "LoadReport",
    "Problem",
    "ResultRow",
    "Trace",
    "TraceProbe",
    "calibrate",
    "load_dataset",
    "load_traces",
    "record_trace",
    "record_traces",
    "replay_traces",
    "run_bench",
    "run_load",
    "table",
    "write_report",
]
