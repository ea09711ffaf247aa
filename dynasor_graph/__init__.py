"""dynasor-graph: Certaindex-driven early exit for reasoning graphs in LangGraph.

Reasoning models keep thinking after their answer has settled. Dynasor (arXiv 2412.20993)
measures how settled it is, the Certaindex in [0, 1], and stops spending compute once it is
high. Here the reasoning algorithms are LangGraph graphs, the Certaindex is a state field and
conditional edges route on it: ``exit``, ``continue`` or ``widen``.
"""

from . import certaindex, rewards
from ._algorithms import ALGORITHMS, Algorithm, create_graph, solve
from ._answers import HESITATION_WORDS, equivalent, final_answer, is_confident, probe_answer
from ._bench import run_bench
from ._config import (
    DEFAULT_PROBE_SUFFIX,
    EFFORT_PRESETS,
    CoTConfig,
    Effort,
    Endpoint,
    MCTSConfig,
    ProbeSettings,
    RebaseConfig,
    SCConfig,
    TreeConfig,
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
from ._scheduler import ProgramResult, Scheduler, SchedulerConfig
from ._state import (
    CoTInput,
    CoTOutput,
    CoTState,
    MultiPathOutput,
    PathState,
    Probe,
    SCOutput,
    SCState,
    StopReason,
    TreeNode,
    TreeOutput,
    TreeState,
    Usage,
    add_usage,
)
from ._traces import Trace, load_traces, record_traces
from .certaindex import (
    Decision,
    answer_entropy,
    combine,
    decide,
    logprob_confidence,
    probe_agreement,
    reward_certaindex,
    reward_concentration,
    weighted_majority,
)
from .cot import create_dynasor_cot
from .mcts import create_mcts
from .rebase import create_rebase
from .rewards import ClassifierReward, FunctionReward, JudgeReward, Reward, RewardModel
from .sc import create_sc

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PROBE_SUFFIX",
    "EFFORT_PRESETS",
    "HESITATION_WORDS",
    "Algorithm",
    "ClassifierReward",
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
    "FunctionReward",
    "JudgeReward",
    "LocalServerError",
    "MCTSConfig",
    "MultiPathOutput",
    "PathState",
    "Probe",
    "ProbeSettings",
    "Problem",
    "ProgramResult",
    "RebaseConfig",
    "Reward",
    "RewardModel",
    "SCConfig",
    "SCOutput",
    "SCState",
    "Scheduler",
    "SchedulerConfig",
    "ServerRefused",
    "StopReason",
    "Trace",
    "TreeConfig",
    "TreeNode",
    "TreeOutput",
    "TreeState",
    "Usage",
    "add_usage",
    "answer_entropy",
    "certaindex",
    "combine",
    "create_dynasor_cot",
    "create_graph",
    "create_mcts",
    "create_rebase",
    "create_sc",
    "decide",
    "default_endpoint",
    "equivalent",
    "final_answer",
    "is_confident",
    "load_dataset",
    "load_traces",
    "logprob_confidence",
    "probe_agreement",
    "probe_answer",
    "record_traces",
    "replay_traces",
    "reward_certaindex",
    "reward_concentration",
    "rewards",
    "run_bench",
    "solve",
    "weighted_majority",
]
