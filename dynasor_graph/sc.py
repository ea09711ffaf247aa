"""Self-consistency with Certaindex: majority vote over Dynasor-CoT paths that stops sampling
once the answers agree.

Each round, ``Send`` fans the paths still reasoning out to ``step`` (one chunk and one probe of
a Dynasor-CoT path, which may exit on its own probes). ``score`` then computes the answer
entropy Certaindex of the finished paths and routes: **exit** once ``detect_at`` paths have
finished and it reaches ``threshold`` (answer = the majority class); **continue** the paths
still reasoning; when all have finished below the threshold, **widen** by ``widen_by`` new
paths (``add_paths``), up to ``max_width``. ``token_budget`` bounds the generated tokens
of all paths together; a path that fills the server's context window ends with its last
probe's answer (stop reason ``context``, as is the run's when every path ended so).
``vote="weighted"`` or ``"filtered"`` (DeepConf) weighs each finished path by its confidence,
the geometric-mean probability of its reasoning tokens, and stops on the weighted answer
distribution::

    START → prepare ─Send→ step … → score ─continue─Send→ step
                                        ├─widen→ add_paths ─Send→ step
                                        └─exit→ finish → END

Usage::

    graph = create_sc(endpoint, SCConfig(width=4, max_width=8))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
    result["answer"], result["certaindex"], len(result["paths"]), result["usage"]
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer, Send
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._compat import renamed_fields
from ._endpoint import Endpoint, keyed, new_session_id, retry_policy
from ._state import (
    CoTInput,
    MultiPathOutput,
    chat_messages,
    empty_usage,
    generated_tokens,
    merge_by_id,
    sum_usage,
)
from ._stream import discard_stream
from ._thinking import detect
from ._token_route import render_chat
from .certaindex import answer_entropy, route_on, weighted_answer_entropy
from .cot import (
    CoTConfig,
    CoTState,
    certaindex_condition,
    finish_node,
    fresh_path,
    path_confidence,
    probe_node,
    reason_node,
)

__all__ = [
    "PathState",
    "SCConfig",
    "SCOutput",
    "SCState",
    "create_sc",
]


class SCConfig(BaseModel):
    """Self-consistency over Dynasor-CoT paths: how many, when to widen, when to exit.

    The paper's SC detects at 5 samples with threshold 0.7 (MATH, GSM8K); ``width=max_width``
    with ``detect_at=max_width`` is plain fixed-n majority voting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: CoTConfig = Field(default_factory=CoTConfig, description="How each path reasons")
    width: int = Field(default=4, ge=1, le=256, description="Paths launched at the start")
    max_width: int = Field(default=8, ge=1, le=256, description="Paths never exceeded")
    widen_by: int = Field(default=2, ge=1, le=256, description="Paths added by one widen")
    detect_at: int | None = Field(
        default=None, ge=1, le=256, description="Finished paths needed to exit (default width)"
    )
    threshold: float = Field(default=0.7, gt=0, le=1, description="Answer-entropy Certaindex")
    vote: Literal["majority", "weighted", "filtered"] = Field(
        default="majority", description="majority: one vote a path (the paper); weighted: "
        "each path votes with its confidence (geometric-mean token probability, DeepConf), and "
        "the Certaindex is the weighted answer entropy; filtered: only the most confident "
        "keep_share of the finished paths vote, weighted. Needs token-exact continuation")
    keep_share: float = Field(default=0.9, gt=0, le=1,
                              description="filtered: share of finished paths that vote")
    token_budget: int = Field(
        default=16384, ge=1, le=10_000_000,
        description="Generated tokens (reasoning + probes) of all paths together, never exceeded",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_fields(data, {"max_total_tokens": "token_budget"}, cls.__name__)

    @model_validator(mode="after")
    def _widths(self) -> SCConfig:
        if self.width > self.max_width:
            raise ValueError("width must not exceed max_width")
        if self.detect_at is not None and self.detect_at > self.max_width:
            raise ValueError("detect_at must not exceed max_width")
        if self.token_budget < self.width * (self.path.probe_max_tokens + 1):
            raise ValueError("token_budget must pay each first path a token and a probe")
        return self

    @property
    def detect(self) -> int:
        """Finished paths needed before the Certaindex may end the run."""
        return self.detect_at if self.detect_at is not None else self.width


class PathState(CoTState, total=False):
    """One chain of thought of a multi-path program (without the shared ``chat``)."""

    id: int


class SCOutput(MultiPathOutput, total=False):
    """Self-consistency's output: also every path, finished or cut short."""

    paths: Annotated[list[PathState], merge_by_id]


class SCState(CoTInput, SCOutput, total=False):
    """Self-consistency's state: the shared chat (and its rendered prompt) and the paths."""

    chat: list[dict[str, str]]
    prompt_ids: list[int] | None
    session_id: str
    """The program's key (uuid4 hex made in ``prepare`` unless given), shared by its paths: the
    ``X-Session-ID`` of their requests when the run has no thread; with a path's id, the key
    of the path's live stream (overlapped probing)."""


class PathTask(TypedDict):
    """What ``Send`` hands ``step``: one path and the shared chat, prompt and session key."""

    path: PathState
    chat: list[dict[str, str]]
    prompt_ids: list[int] | None
    session_id: str


def create_sc(
    endpoint: Endpoint,
    config: SCConfig | None = None,
    *,
    checkpointer: Checkpointer = None,
    store: BaseStore | None = None,
    name: str = "dynasor_sc",
) -> CompiledStateGraph[SCState, None, CoTInput, SCOutput]:
    """Build the self-consistency graph: Dynasor-CoT paths, widened while they disagree.

    Args:
        endpoint: the vLLM (OpenAI-compatible) server every request goes to.
        config: paths (each a :class:`CoTConfig`), widths, the answer-entropy threshold and
            the total token budget; default :class:`SCConfig`.
        checkpointer: LangGraph checkpointer for durable, resumable runs.
        store: LangGraph store for the paths' reasoning logs (see :func:`create_cot`): with
            one, checkpoint bytes grow linearly in the paths' reasoning.
        name: the graph's name (in Studio and as a subgraph).

    Returns:
        A compiled graph reading ``question`` or ``messages`` and returning
        :class:`SCOutput`: the majority answer, its Certaindex, decision, stop reason,
        summed usage, every path and the budget left.

    Example:
        >>> graph = create_sc(endpoint, SCConfig(width=4, max_width=8))  # doctest: +SKIP
        >>> result = await graph.ainvoke({"question": "What is 2 + 3?"})  # doctest: +SKIP
    """
    config = config or SCConfig()
    step_graph = _step_graph(endpoint, config.path)
    finish = finish_node(endpoint)

    async def prepare(state: SCState) -> dict[str, Any]:
        fmt = await detect(endpoint)
        chat = fmt.chat(endpoint, chat_messages(state, config.path.system_prompt))
        paths = _allocate([_new_path(i, config.path) for i in range(config.width)], config)
        # Rendered once: every path continues the same prompt, so the cache shares it too.
        prompt_ids = await render_chat(endpoint, chat)
        return {"chat": chat, "prompt_ids": prompt_ids, "paths": paths,
                "session_id": state.get("session_id") or new_session_id(),
                "usage": empty_usage(), "certaindex": 0.0,
                "decision": "continue", "stop_reason": None, "answer": "",
                "budget_left": config.token_budget, "thinking_format": fmt.describe()}

    async def step(state: PathTask) -> dict[str, Any]:
        path = state["path"]
        result = await step_graph.ainvoke(cast(PathState, {
            **path, "chat": state["chat"], "prompt_ids": state["prompt_ids"],
            "session_id": state.get("session_id", "")}))
        for shared in ("chat", "prompt_ids", "session_id"):
            result.pop(shared, None)
        return {"paths": [cast(PathState, {**result, "id": path["id"]})]}

    async def score(state: SCState) -> dict[str, Any]:
        paths = [await _stop_if_broke(p, config, finish) for p in _allocate(state["paths"], config)]
        answers = [p.get("answer", "") for p in paths if _finished(p)]
        certaindex, majority = _vote([p for p in paths if _finished(p)], config)
        budget_left = _budget_left(paths, config)
        running = any(not _finished(p) for p in paths)
        room = len(paths) < config.max_width and budget_left > config.path.probe_max_tokens
        ready = len(answers) >= config.detect
        can_widen = not running and room
        stuck = not running and not can_widen
        walled = all(p.get("stop_reason") == "context" for p in paths)  # all hit the window
        decision, stop_reason = route_on(
            certaindex if ready else 0.0, config.threshold, can_widen=can_widen,
            stops=[("context", stuck and walled),
                   ("width", stuck and len(paths) >= config.max_width), ("budget", stuck)])
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
        return [Send("step", {"path": p, "chat": state["chat"],
                              "prompt_ids": state.get("prompt_ids"),
                              "session_id": state.get("session_id", "")})
                for p in state["paths"] if not _finished(p)]

    def after_score(state: SCState) -> Literal["exit", "widen"] | list[Send]:
        decision = state["decision"]
        return decision if decision in ("exit", "widen") else run_paths(state)

    builder = StateGraph(SCState, input_schema=CoTInput, output_schema=SCOutput)
    builder.add_node("prepare", keyed(prepare, start=True), retry_policy=retry_policy(endpoint))
    # No RetryPolicy here: the step's own reason and probe nodes retry each request once;
    # retrying the whole step around them would multiply attempts and lose counted tokens.
    builder.add_node("step", step, input_schema=PathTask)
    builder.add_node("score", score)
    builder.add_node("add_paths", add_paths)
    builder.add_node("finish", _finish_paths)
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", run_paths, ["step"])
    builder.add_edge("step", "score")
    builder.add_conditional_edges(
        "score", after_score, {"exit": "finish", "widen": "add_paths", "continue": "step"}
    )
    builder.add_conditional_edges("add_paths", run_paths, ["step"])
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, store=store, name=name)
    chunks = -(-config.path.max_tokens // config.path.chunk_size)
    widenings = -(-(config.max_width - config.width) // config.widen_by)
    return graph.with_config(recursion_limit=3 * chunks * (widenings + 1) + 10)


def _step_graph(
    endpoint: Endpoint, config: CoTConfig
) -> CompiledStateGraph[PathState, None, PathState, PathState]:
    """One round of one path: reason a chunk, probe, and finish if either says exit."""
    retry = retry_policy(endpoint)
    builder = StateGraph(PathState)
    # input_schema: the nodes see the path's id (its live stream's key), which CoTState lacks.
    builder.add_node("reason", reason_node(endpoint, config), retry_policy=retry,
                     input_schema=PathState)
    builder.add_node("probe", probe_node(endpoint, config), retry_policy=retry,
                     input_schema=PathState)
    builder.add_node("finish", finish_node(endpoint), input_schema=PathState)
    builder.add_edge(START, "reason")
    builder.add_conditional_edges("reason", certaindex_condition,
                                  {"continue": "probe", "exit": "finish"})
    builder.add_conditional_edges("probe", certaindex_condition,
                                  {"continue": END, "exit": "finish"})
    builder.add_edge("finish", END)
    return builder.compile(name="path")


def _vote(finished: list[PathState], config: SCConfig) -> tuple[float, str]:
    """The Certaindex and answer of the finished paths' vote (``config.vote``)."""
    answers = [p.get("answer", "") for p in finished]
    if not answers:
        return 0.0, ""
    if config.vote == "majority":
        return answer_entropy(answers)
    weights = [path_confidence(p) for p in finished]
    if any(w is None for w in weights):
        raise ValueError(f"vote={config.vote!r} needs the paths' token log-probabilities: "
                         "token-exact continuation (/v1/completions), not text mode")
    scored = list(zip(answers, [float(w or 0.0) for w in weights], strict=True))
    if config.vote == "filtered":  # the most confident, in path order
        keep = max(1, math.ceil(config.keep_share * len(scored)))
        kept = sorted(range(len(scored)), key=lambda i: -scored[i][1])[:keep]
        scored = [scored[i] for i in sorted(kept)]
    return weighted_answer_entropy([a for a, _ in scored], [w for _, w in scored])


def _new_path(index: int, config: CoTConfig) -> PathState:
    seed = None if config.seed is None else config.seed + index
    return PathState(**fresh_path(), id=index, seed=seed)


def _finished(path: PathState) -> bool:
    return path.get("decision") == "exit"


def _budget_left(paths: list[PathState], config: SCConfig) -> int:
    return config.token_budget - sum(generated_tokens(p["usage"]) for p in paths)


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


async def _finish_paths(state: SCState) -> dict[str, Any]:
    """The majority answer stands; paths still reasoning are left where they stopped (their
    live streams, in overlapped probing, closed and what they ran ahead counted)."""
    session = state.get("session_id", "")
    paths = []
    for path in state["paths"]:
        usage = path["usage"]
        if not _finished(path):
            usage = await discard_stream({**path, "session_id": session}, usage)
        paths.append(path if usage is path["usage"] else PathState(**{**path, "usage": usage}))
    return {"decision": "exit", "paths": paths, "usage": sum_usage(p["usage"] for p in paths)}
