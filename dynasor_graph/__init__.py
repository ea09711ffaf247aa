"""dynasor-graph: Certaindex-driven early exit for reasoning graphs in LangGraph.

Reasoning models keep thinking after their answer has settled. Dynasor (arXiv 2412.20993)
measures how settled it is, the Certaindex in [0, 1], and stops spending compute once it is
high. Here the reasoning algorithms are LangGraph graphs, the Certaindex is a state field and
conditional edges route on it: ``exit``, ``continue`` or ``widen``.

The package, by room::

    dynasor_graph/
      cot.py  sc.py  mcts.py  rebase.py   one algorithm each: config, state, nodes, factory
      _tree.py                            what MCTS and Rebase share
      _probe.py  certaindex.py            the probe; the Certaindex measures and route_on
      _endpoint.py                        the endpoint adapter (LiteLLM → vLLM), errors
      rewards.py  agents.py  scheduler.py reward models; agent early stop; many programs
      eval/  local/                       evaluation tooling; the embedded local vLLM
"""

from . import certaindex, rewards
from ._algorithms import ALGORITHMS, Algorithm, create_graph, solve
from ._endpoint import Endpoint
from ._errors import (
    DataFormatError,
    DynasorError,
    EndpointError,
    EndpointUnreachable,
    LocalServerError,
    ServerBusy,
    ServerRefused,
)
from ._probe import ProbeConfig, ProbeSettings
from ._state import CoTInput, Probe, Usage, add_usage
from ._tree import TreeOutput
from .certaindex import Decision, StopReason
from .cot import (
    CoTConfig,
    CoTOutput,
    CoTState,
    certaindex_condition,
    create_cot,
    create_dynasor_cot,
    probe_node,
)
from .mcts import MCTSConfig, create_mcts
from .rebase import RebaseConfig, create_rebase
from .sc import SCConfig, SCOutput, create_sc
from .scheduler import Scheduler, SchedulerConfig

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "CoTConfig",
    "CoTInput",
    "CoTOutput",
    "CoTState",
    "DataFormatError",
    "Decision",
    "DynasorError",
    "Endpoint",
    "EndpointError",
    "EndpointUnreachable",
    "LocalServerError",
    "MCTSConfig",
    "Probe",
    "ProbeConfig",
    "ProbeSettings",
    "RebaseConfig",
    "SCConfig",
    "SCOutput",
    "Scheduler",
    "SchedulerConfig",
    "ServerBusy",
    "ServerRefused",
    "StopReason",
    "TreeOutput",
    "Usage",
    "add_usage",
    "certaindex",
    "certaindex_condition",
    "create_cot",
    "create_dynasor_cot",
    "create_graph",
    "create_mcts",
    "create_rebase",
    "create_sc",
    "probe_node",
    "rewards",
    "solve",
]
