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
      _endpoint.py                        the Endpoint config and the per-program hooks
      _token_route.py  _text_route.py     the two ways to continue a program (LiteLLM → vLLM)
      _context.py                         the server's context window, learned and kept to
      _http.py  _errors.py                connections; the errors and their translation
      rewards.py  agents.py  scheduler.py reward models; agent early stop; many programs
      eval/  local/                       evaluation tooling; the embedded local vLLM

The root holds what most programs use; the rest lives in its module: states and outputs in
:mod:`dynasor_graph.cot` / :mod:`~dynasor_graph.sc` / :mod:`~dynasor_graph.mcts`, the measures
in :mod:`dynasor_graph.certaindex`, reward models in :mod:`dynasor_graph.rewards`, agent early
stop in :mod:`dynasor_graph.agents`, evaluation in :mod:`dynasor_graph.eval`, the local server
in :mod:`dynasor_graph.local`.
"""

from ._algorithms import Algorithm, create_graph, solve
from ._endpoint import Endpoint
from ._errors import (
    DynasorError,
    EndpointError,
    EndpointUnreachable,
    ServerBusy,
    ServerRefused,
)
from ._probe import ProbeConfig
from ._state import Usage, add_usage
from .cot import CoTConfig, certaindex_condition, create_cot, probe_node
from .mcts import MCTSConfig, create_mcts
from .rebase import RebaseConfig, create_rebase
from .sc import SCConfig, create_sc
from .scheduler import Scheduler, SchedulerConfig

__all__ = [
    "Algorithm",
    "CoTConfig",
    "DynasorError",
    "Endpoint",
    "EndpointError",
    "EndpointUnreachable",
    "MCTSConfig",
    "ProbeConfig",
    "RebaseConfig",
    "SCConfig",
    "Scheduler",
    "SchedulerConfig",
    "ServerBusy",
    "ServerRefused",
    "Usage",
    "add_usage",
    "certaindex_condition",
    "create_cot",
    "create_graph",
    "create_mcts",
    "create_rebase",
    "create_sc",
    "probe_node",
    "solve",
]
