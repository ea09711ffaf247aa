"""Self-consistency with Certaindex: majority vote over Dynasor-CoT paths that stops sampling
once the answers agree.

Each round, ``Send`` fans the paths still reasoning out to ``step`` (one chunk and one probe of
a Dynasor-CoT path, which may exit on its own probes). ``score`` then computes the answer
entropy Certaindex of the finished paths and routes: **exit** once ``detect_at`` paths have
finished and it reaches ``threshold`` (answer = the majority class); **continue** the paths
still reasoning; when all have finished below the threshold, **widen** by ``widen_by`` new
paths (``add_paths``), up to ``max_width``. ``max_total_tokens`` bounds the generated tokens
of all paths together::

    START → prepare ─Send→ step … → score ─continue─Send→ step
                                        ├─widen→ add_paths ─Send→ step
                                        └─exit→ finish → END

Usage::

    graph = create_sc(endpoint, SCConfig(width=4, max_width=8))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
    result["answer"], result["certaindex"], len(result["paths"]), result["usage"]
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, Send

from ._config import CoTConfig, Endpoint, SCConfig
from ._nodes import (
    chat_messages,
    finish_node,
    fresh_path,
    probe_node,
    reason_node,
    retry_policy,
    route,
)
from ._state import (
    CoTInput,
    CoTState,
    PathState,
    SCOutput,
    SCState,
    empty_usage,
    generated_tokens,
    sum_usage,
)
from .certaindex import answer_entropy, decide


class PathTask(TypedDict):
    """What ``Send`` hands ``step``: one path and the shared chat."""

    path: PathState
    chat: list[dict[str, str]]


def create_sc(
    endpoint: Endpoint,
    config: SCConfig | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str = "dynasor_sc",
) -> CompiledStateGraph[SCState, None, CoTInput, SCOutput]:
    """Build the self-consistency graph: Dynasor-CoT paths, widened while they disagree."""
    config = config or SCConfig()
    step_graph = _step_graph(endpoint, config.path)
    finish = finish_node()

    async def prepare(state: SCState) -> dict[str, Any]:
        chat = chat_messages(state, config.path.system_prompt)
        paths = _allocate([_new_path(i, config.path) for i in range(config.width)], config)
        return {"chat": chat, "paths": paths, "usage": empty_usage(), "certaindex": 0.0,
                "decision": "continue", "stop_reason": None, "answer": "",
                "budget_left": config.max_total_tokens}

    async def step(state: PathTask) -> dict[str, Any]:
        path = state["path"]
        result = await step_graph.ainvoke(cast(CoTState, {**path, "chat": state["chat"]}))
        result.pop("chat", None)
        return {"paths": [cast(PathState, {**result, "id": path["id"]})]}

    async def score(state: SCState) -> dict[str, Any]:
        paths = [await _stop_if_broke(p, config, finish) for p in _allocate(state["paths"], config)]
        answers = [p.get("answer", "") for p in paths if _finished(p)]
        certaindex, majority = answer_entropy(answers) if answers else (0.0, "")
        budget_left = _budget_left(paths, config)
        running = any(not _finished(p) for p in paths)
        room = len(paths) < config.max_width and budget_left > config.path.probe_max_tokens
        ready = len(answers) >= config.detect
        decision = decide(certaindex if ready else 0.0, config.threshold,
                          can_widen=not running and room)
        stop_reason = "certain" if decision == "exit" else None
        if decision == "continue" and not running:
            decision = "exit"
            stop_reason = "width" if len(paths) >= config.max_width else "budget"
        return {"paths": paths, "certaindex": certaindex, "answer": majority,
                "decision": decision, "stop_reason": stop_reason,
                "usage": sum_usage(p["usage"] for p in paths), "budget_left": budget_left}

    async def add_paths(state: SCState) -> dict[str, Any]:
        paths = state["paths"]
        affordable = state["budget_left"] // (config.path.probe_max_tokens + 1)
        room = min(config.widen_by, config.max_width - len(paths), affordable)
        new = [_new_path(len(paths) + i, config.path) for i in range(room)]
        return {"paths": _allocate([*paths, *new], config), "decision": "continue"}

    def run_paths(state: SCState) -> list[Send]:
        return [Send("step", {"path": p, "chat": state["chat"]})
                for p in state["paths"] if not _finished(p)]

    def after_score(state: SCState) -> Literal["exit", "widen"] | list[Send]:
        decision = state["decision"]
        return decision if decision in ("exit", "widen") else run_paths(state)

    retry = retry_policy(endpoint)
    builder = StateGraph(SCState, input_schema=CoTInput, output_schema=SCOutput)
    builder.add_node("prepare", prepare)
    builder.add_node("step", step, retry_policy=retry, input_schema=PathTask)
    builder.add_node("score", score)
    builder.add_node("add_paths", add_paths)
    builder.add_node("finish", _finish)
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", run_paths, ["step"])
    builder.add_edge("step", "score")
    builder.add_conditional_edges(
        "score", after_score, {"exit": "finish", "widen": "add_paths", "continue": "step"}
    )
    builder.add_conditional_edges("add_paths", run_paths, ["step"])
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    chunks = -(-config.path.max_tokens // config.path.chunk_size)
    widenings = -(-(config.max_width - config.width) // config.widen_by)
    return graph.with_config(recursion_limit=3 * chunks * (widenings + 1) + 10)


def _step_graph(
    endpoint: Endpoint, config: CoTConfig
) -> CompiledStateGraph[CoTState, None, CoTState, CoTState]:
    """One round of one path: reason a chunk, probe, and finish if either says exit."""
    retry = retry_policy(endpoint)
    builder = StateGraph(CoTState)
    builder.add_node("reason", reason_node(endpoint, config), retry_policy=retry)
    builder.add_node("probe", probe_node(endpoint, config), retry_policy=retry)
    builder.add_node("finish", finish_node())
    builder.add_edge(START, "reason")
    builder.add_conditional_edges("reason", route, {"continue": "probe", "exit": "finish"})
    builder.add_conditional_edges("probe", route, {"continue": END, "exit": "finish"})
    builder.add_edge("finish", END)
    return builder.compile(name="path")


def _new_path(index: int, config: CoTConfig) -> PathState:
    seed = None if config.seed is None else config.seed + index
    return PathState(**fresh_path(), id=index, seed=seed)


def _finished(path: PathState) -> bool:
    return path.get("decision") == "exit"


def _budget_left(paths: list[PathState], config: SCConfig) -> int:
    return config.max_total_tokens - sum(generated_tokens(p["usage"]) for p in paths)


def _allocate(paths: list[PathState], config: SCConfig) -> list[PathState]:
    """Share the budget left among the running paths for the next round: each may reason up
    to a chunk more, keeping room for its probe, so the total can never be exceeded."""
    running = [p for p in paths if not _finished(p)]
    if not running:
        return paths
    share = _budget_left(paths, config) // len(running)
    step = min(config.path.chunk_size, share - config.path.probe_max_tokens)
    return [p if _finished(p) else
            PathState(**{**p, "token_cap": p["usage"]["reasoning_tokens"] + max(step, 0)})
            for p in paths]


async def _stop_if_broke(path: PathState, config: SCConfig, finish: Any) -> PathState:
    """A running path whose share cannot pay for another token and its probe stops here,
    answering with its last probe, as Dynasor-CoT does at its budget."""
    if _finished(path) or path["token_cap"] > path["usage"]["reasoning_tokens"]:
        return path
    ended = PathState(**{**path, "stop_reason": "budget"})
    return PathState(**{**ended, **await finish(ended)})


async def _finish(state: SCState) -> dict[str, Any]:
    """The majority answer stands; paths still reasoning are left where they stopped."""
    return {"decision": "exit"}
