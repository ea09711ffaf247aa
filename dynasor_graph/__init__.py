"""dynasor-graph: Certaindex-driven early exit for reasoning graphs in LangGraph.

Reasoning models keep thinking after their answer has settled. Dynasor (arXiv 2412.20993)
measures how settled it is, the Certaindex in [0, 1], and stops spending compute once it is
high. Here the reasoning algorithms are LangGraph graphs, the Certaindex is a state field and
conditional edges route on it: ``exit``, ``continue`` or ``widen``.
"""

from . import certaindex
from ._answers import HESITATION_WORDS, equivalent, final_answer, is_confident, probe_answer
from ._bench import run_bench
from ._config import (
    DEFAULT_PROBE_SUFFIX,
    EFFORT_PRESETS,
    CoTConfig,
    Effort,
    Endpoint,
    ProbeSettings,
)
from ._datasets import DataFormatError, Problem, load_dataset
from ._default import default_endpoint
from ._errors import (
    DynasorError,
    EndpointError,
    EndpointUnreachable,
    LocalServerError,
    ServerRefused,
)
from ._replay import replay_traces
from ._state import CoTInput, CoTOutput, CoTState, Probe, StopReason, Usage, add_usage
from ._traces import Trace, load_traces, record_traces
from .certaindex import Decision, answer_entropy, decide, probe_agreement
from .cot import create_dynasor_cot, solve

__all__ = [
    "DEFAULT_PROBE_SUFFIX",
    "EFFORT_PRESETS",
    "HESITATION_WORDS",
    "CoTConfig",
    "CoTInput",
    "CoTOutput",
    "CoTState",
    "DataFormatError",
    "Decision",
    "DynasorError",
    "Effort",
    "Endpoint",
    "EndpointError",
    "EndpointUnreachable",
    "LocalServerError",
    "Probe",
    "ProbeSettings",
    "Problem",
    "ServerRefused",
    "StopReason",
    "Trace",
    "Usage",
    "add_usage",
    "answer_entropy",
    "certaindex",
    "create_dynasor_cot",
    "decide",
    "default_endpoint",
    "equivalent",
    "final_answer",
    "is_confident",
    "load_dataset",
    "load_traces",
    "probe_agreement",
    "probe_answer",
    "record_traces",
    "replay_traces",
    "run_bench",
    "solve",
]
