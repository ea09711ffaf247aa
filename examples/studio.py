"""Graph factories for LangGraph Studio (``langgraph dev``); ``langgraph.json`` lists them.

Each factory builds its graph per run from the run's configuration: the server comes from
``configurable`` (``api_base``, ``model``), else ``$DYNASOR_API_BASE`` and ``$DYNASOR_MODEL``,
else the embedded local vLLM on ``http://127.0.0.1:8471/v1`` (start it with ``dynasor-graph
serve-local``). So Studio users point the graphs at their own vLLM without editing code.

The API key comes from ``$DYNASOR_API_KEY`` only, set where the graph server runs. LangGraph
copies ``configurable`` values into every checkpoint's metadata (and ``langgraph dev`` keeps
them in its run store), so a secret there would be written down in plain text: a run whose
``configurable`` carries ``api_key`` (or any ``*_key``, ``*_token``, ``*_secret``,
``*_password``) or an ``api_base`` with credentials in it is refused with a ``ValueError``.

    LANGSMITH_TRACING=false LANGGRAPH_CLI_NO_ANALYTICS=1 \\
        langgraph dev --no-browser --no-reload --host 127.0.0.1 --port 2024

Graphs: ``dynasor_cot`` (configurable ``effort``, ``max_tokens``, ``chunk_size``,
``certainty_threshold``), ``dynasor_sc``, ``dynasor_mcts`` and ``dynasor_rebase`` (configurable
``width``, ``max_width``, ``token_budget``, ``seed``; the tree searches score steps with an
LLM judge on the same endpoint), ``agent`` (``create_agent`` with early stop; ``tool_choice``
``none`` for servers without a tool-call parser) and ``agent_graph`` (the same loop by hand).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from pydantic import SecretStr

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    MCTSConfig,
    RebaseConfig,
    SCConfig,
    create_cot,
    create_mcts,
    create_rebase,
    create_sc,
)
from dynasor_graph.agents import EarlyStopConfig
from dynasor_graph.cot import CoTInput, CoTOutput, CoTState
from dynasor_graph.rewards import JudgeReward

# langgraph dev loads this file by path: make its sibling example importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent import ToolChoice, build_agent, build_graph

# Import the model clients while Studio loads the graphs, not on the event loop during a run:
# langgraph dev rejects the file access of a first import there as a blocking call.
for _module in ("litellm", "langchain_litellm", "math_verify"):
    importlib.import_module(_module)

DEFAULT_API_BASE = "http://127.0.0.1:8471/v1"  # `dynasor-graph serve-local`
DEFAULT_MODEL = "hosted_vllm/smollm2-135m-instruct"
_SECRET_WORDS = ("key", "apikey", "token", "secret", "password", "credentials")


def _configurable(config: RunnableConfig) -> dict[str, Any]:
    return dict(config.get("configurable") or {})


def refuse_secrets(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``configurable`` carries a secret: it would be checkpointed.

    Run parameters named like ``api_key``, ``key`` or ``*_token`` are refused, and an
    ``api_base`` with ``user:password@``. HTTP headers that the LangGraph server copies into
    ``configurable`` itself (``x-*``; it already leaves out ``x-api-key``) are not parameters
    of these graphs and are left alone.
    """
    for name, value in options.items():
        if name.startswith(("x-", "__", "langgraph_", "langsmith")):
            continue
        if name.lower().replace("-", "_").split("_")[-1] in _SECRET_WORDS:
            raise ValueError(
                f"configurable[{name!r}] looks like a secret, and LangGraph writes configurable "
                "values into checkpoint metadata in plain text: set $DYNASOR_API_KEY where the "
                "graph server runs instead")
        if name == "api_base" and isinstance(value, str) and (
                urlsplit(value).username or urlsplit(value).password):
            raise ValueError("configurable['api_base'] carries credentials (user:password@); "
                             "set $DYNASOR_API_KEY where the graph server runs instead")


def endpoint_from(config: RunnableConfig) -> Endpoint:
    """The run's endpoint: ``api_base`` and ``model`` from ``configurable``, else
    ``$DYNASOR_API_BASE`` / ``$DYNASOR_MODEL``, else the local vLLM; the key from
    ``$DYNASOR_API_KEY`` only (never ``configurable``: see :func:`refuse_secrets`)."""
    options = _configurable(config)
    refuse_secrets(options)

    def pick(field: str, variable: str, default: str) -> str:
        return str(options.get(field) or os.environ.get(variable) or default)

    return Endpoint(model=pick("model", "DYNASOR_MODEL", DEFAULT_MODEL),
                    api_base=pick("api_base", "DYNASOR_API_BASE", DEFAULT_API_BASE),
                    api_key=SecretStr(os.environ.get("DYNASOR_API_KEY") or "EMPTY"))


def dynasor_cot(config: RunnableConfig) -> CompiledStateGraph[CoTState, None, CoTInput, CoTOutput]:
    """Dynasor-CoT; ``configurable``: ``effort`` and any :class:`CoTConfig` field overrides."""
    options = _configurable(config)
    overrides = {k: options[k] for k in ("max_tokens", "chunk_size", "certainty_threshold",
                                         "seed") if options.get(k) is not None}
    settings = CoTConfig.from_effort(options.get("effort") or "mid", **overrides)
    return create_cot(endpoint_from(config), settings)


def _shape(config: RunnableConfig) -> dict[str, Any]:
    options = _configurable(config)
    return {k: options[k] for k in ("width", "max_width", "token_budget", "seed")
            if options.get(k) is not None}


def dynasor_sc(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Self-consistency over Dynasor-CoT paths (small defaults that suit the CPU model)."""
    shape = _shape(config)
    path = CoTConfig(chunk_size=32, certainty_threshold=2, max_tokens=256,
                     seed=shape.pop("seed", None))
    return create_sc(endpoint_from(config),
                     SCConfig.model_validate({"path": path, "width": 3, **shape}))


def dynasor_mcts(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """MCTS scored by an LLM judge on the same endpoint."""
    endpoint = endpoint_from(config)
    settings = MCTSConfig.model_validate({"chunk_size": 32, "max_depth": 4, **_shape(config)})
    return create_mcts(endpoint, JudgeReward(endpoint), settings)


def dynasor_rebase(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Rebase scored by an LLM judge on the same endpoint."""
    endpoint = endpoint_from(config)
    settings = RebaseConfig.model_validate({"chunk_size": 32, "max_depth": 4, **_shape(config)})
    return create_rebase(endpoint, JudgeReward(endpoint), settings)


def _agent_settings(config: RunnableConfig) -> EarlyStopConfig:
    options = _configurable(config)
    return EarlyStopConfig.model_validate(
        {k: options[k] for k in ("certainty_threshold", "min_steps", "dry_run")
         if options.get(k) is not None})


def agent(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The example tool agent (``create_agent`` + early-stop middleware)."""
    tool_choice: ToolChoice = "none" if _configurable(config).get("tool_choice") == "none" \
        else "auto"
    return build_agent(endpoint_from(config), _agent_settings(config), tool_choice=tool_choice)


def agent_graph(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The example tool agent as a hand-built loop with ``early_stop_node``."""
    return build_graph(endpoint_from(config), _agent_settings(config))
