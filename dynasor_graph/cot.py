"""Dynasor-CoT: chain-of-thought that stops once its probed answer has settled.

The graph reasons in chunks of ``chunk_size`` tokens; after each chunk ``probe`` forces an
immediate answer and scores the recent probes into the state's ``certaindex``; the router exits
when it reaches 1.0 (the last ``certainty_threshold`` probes confident and equivalent), when
the model finishes by itself, when ``max_tokens`` is spent, or when no further chunk and its
probe fit in the server's context window (``max_model_len``, token mode)::

    START → prepare → reason ─continue→ probe ─continue→ reason …
                         └─exit→ finish ←exit─┘ → END

Key pieces: :class:`CoTConfig` (with the effort presets), the nodes
:func:`reason_node`, :func:`probe_node`, :func:`finish_node`, the router
:func:`certaindex_condition`, and the factory :func:`create_cot`.

Usage::

    graph = create_cot(Endpoint(model="hosted_vllm/my-model",
                                api_base="http://127.0.0.1:8000/v1"))
    result = await graph.ainvoke({"question": "What is 2 + 3?"})
    result["answer"], result["certaindex"], result["usage"]
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer
from pydantic import Field

from ._answers import final_answer
from ._endpoint import Endpoint, keyed, new_session_id, retry_policy
from ._probe import (
    TRANSITION_MARKERS,
    ProbeConfig,
    ask_probe,
    chunk_room,
    crossed_transition,
    emit_probe_event,
)
from ._state import CoTInput, Probe, Usage, chat_messages, empty_usage
from ._stream import discard_stream, stream_key, take_chunk
from ._thinking import ThinkingFormat, detect
from ._token_route import extend, render_chat
from ._transcript import Log, LogRef, add_chunk, add_probe, forget_log, logged, read_log
from .certaindex import Decision, StopReason, cot_certaindex, route_on

__all__ = [
    "EFFORT_PRESETS",
    "CoTConfig",
    "CoTInput",
    "CoTOutput",
    "CoTState",
    "Effort",
    "Probe",
    "certaindex_condition",
    "create_cot",
    "finish_node",
    "prepare_node",
    "probe_node",
    "reason_node",
]

Effort = Literal["mild", "low", "mid", "high", "crazy"]
Probing = Literal["sequential", "overlapped"]

EFFORT_PRESETS: dict[str, tuple[int, int]] = {
    "mild": (8, 64),
    "low": (5, 64),
    "mid": (3, 64),
    "high": (2, 64),
    "crazy": (2, 32),
}
"""effort → (certainty_threshold, chunk_size), as in the Dynasor reference."""

FINAL_ANSWER_HEADER = "**Final Answer**\n\n\\[ \\boxed{"


class CoTConfig(ProbeConfig):
    """How Dynasor-CoT reasons, probes and stops. Defaults are the reference's (effort ``mid``)."""

    chunk_size: int = Field(default=64, ge=1, le=8192, description="Tokens reasoned between probes")
    certainty_threshold: int = Field(
        default=3, ge=1, le=64, description="Consecutive agreeing confident probes needed to exit"
    )
    max_tokens: int = Field(
        default=2048, ge=1, le=1_000_000, description="Budget of reasoning tokens, never exceeded"
    )
    temperature: float = Field(default=0.6, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    system_prompt: str | None = Field(default=None, description="Prepended as a system message")
    min_probe_confidence: float | None = Field(
        default=None, gt=0, le=1, description="Also require every probe in the window to be "
        "at least this sure of its answer's tokens (geometric-mean probability; needs "
        "token-exact continuation, which returns log-probabilities). None: agreement only")
    probe_at: Literal["chunks", "transitions"] = Field(
        default="chunks", description="chunks: probe after every chunk (the reference); "
        "transitions: only after a chunk that completes a transition marker (and at the "
        "budget), so probes follow the model's own turns (DEER)")
    transition_markers: tuple[str, ...] = Field(
        default=TRANSITION_MARKERS, description="What counts as a transition for "
        "probe_at='transitions' (case-sensitive substrings)")
    probing: Probing = Field(
        default="sequential", description="sequential: each chunk is its own request and the "
        "probe waits for it; overlapped: the reasoning is one streamed request and each probe "
        "is a side request forked at the chunk boundary while the stream keeps decoding "
        "(token mode only; text mode probes sequentially)")
    resubmit_every: int | None = Field(
        default=None, ge=1, le=100_000, description="Overlapped probing: close and re-submit "
        "the stream every this many chunks, so its vLLM priority follows the scheduler's "
        "policy (a request's priority is fixed at submission); None keeps one stream")


    @classmethod
    def from_effort(cls, effort: Effort, **overrides: object) -> CoTConfig:
        """A config from a named preset (threshold, chunk size) plus any overrides."""
        if effort not in EFFORT_PRESETS:
            raise ValueError(f"effort must be one of {sorted(EFFORT_PRESETS)}, not {effort!r}")
        threshold, chunk = EFFORT_PRESETS[effort]
        values: dict[str, object] = {"certainty_threshold": threshold, "chunk_size": chunk}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @classmethod
    def from_calibration(cls, path: str | Path, **overrides: object) -> CoTConfig:
        """The settings that run the rule ``dynasor-graph calibrate`` certified in ``path``
        (the recorded sampling and probe settings, the rule's chunk size, threshold and
        hesitation filter); ``overrides`` may only set ``seed``."""
        from .eval._calibrated import CalibratedRule  # the eval package imports this module

        return CalibratedRule.load(Path(path)).cot_config(**overrides)


class CoTOutput(TypedDict, total=False):
    """What Dynasor-CoT hands back, to the caller or to a parent graph."""

    answer: str
    response: str
    certaindex: float
    decision: Decision
    stop_reason: StopReason | None
    probes: list[Probe]
    usage: Usage
    thinking_format: str
    """The thinking format the run used, and how it was found (or why it is plain)."""


class CoTState(CoTInput, CoTOutput, total=False):
    """The full Dynasor-CoT state: input, output, and the chat and reasoning so far."""

    chat: list[dict[str, str]]
    prompt_ids: list[int] | None
    """The chat rendered once through the model's chat template (``None`` in text mode)."""
    token_ids: list[int]
    """Every token this program generated, in order: request k's prompt is ``prompt_ids +``
    these (token-exact continuation)."""
    reasoning: str
    token_cap: int
    """Reasoning tokens the next chunk may reach, below ``max_tokens``: a multi-path parent
    sets it each round to share one total budget among its paths."""
    seed: int | None
    """This path's sampling seed, overriding the config's (parents give each path its own)."""
    chunk_start: int
    """Characters of reasoning before the latest chunk: where ``probe_at='transitions'``
    looks for a transition from."""
    logprob_sum: float
    """Sum of the reasoning tokens' log-probabilities (token-exact continuation only)."""
    logprob_tokens: int
    """How many reasoning tokens ``logprob_sum`` covers: their geometric-mean probability is
    the path's confidence (:func:`path_confidence`, DeepConf's average trace confidence)."""
    session_id: str
    """The program's key (a uuid4 hex made in ``prepare`` unless given): the ``X-Session-ID``
    of its requests when the run has no thread, its live stream's key in the per-process
    registry (overlapped probing), and its reasoning log's."""
    log: LogRef
    """Where the program's reasoning log is when the graph has a LangGraph store: then
    ``token_ids`` and ``reasoning`` stay empty and ``probes`` holds the last
    ``certainty_threshold`` until ``finish`` writes them all (:mod:`._transcript`)."""
    chunk: str
    """With a store: the latest chunk's text (the state shows the reasoning as it grows)."""


class Node(Protocol):
    """An async LangGraph node over the CoT state."""

    def __call__(self, state: CoTState) -> Awaitable[dict[str, Any]]: ...


def fresh_path() -> CoTState:
    """A chain of thought that has not started: no reasoning, no probes, zero usage."""
    return CoTState(reasoning="", token_ids=[], probes=[], usage=empty_usage(), certaindex=0.0,
                    decision="continue", stop_reason=None, answer="", response="")


def path_confidence(state: CoTState) -> float | None:
    """The geometric-mean probability of every token this path reasoned, ``None`` where the
    server returned no log-probabilities (text continuation)."""
    count = state.get("logprob_tokens", 0)
    return math.exp(state.get("logprob_sum", 0.0) / count) if count else None


def _ids(state: CoTState, log: Log) -> list[int] | None:
    """The program's generated ids in token mode (``None`` in text mode)."""
    return log.ids if state.get("prompt_ids") is not None else None


def token_cap(state: CoTState, config: CoTConfig) -> int:
    """How far the next chunk may reason: ``max_tokens``, or less where a multi-path parent
    shares one budget among its paths (the parent, not the probe, then stops a broke path)."""
    return min(config.max_tokens, state.get("token_cap", config.max_tokens))


def prepare_node(endpoint: Endpoint, config: CoTConfig) -> Node:
    """Validate the input and start a fresh program: the chat, rendered once through the chat
    template (token-exact mode), empty reasoning, zero usage."""

    async def prepare(state: CoTState) -> dict[str, Any]:
        fmt = await detect(endpoint)
        chat = fmt.chat(endpoint, chat_messages(state, config.system_prompt))
        prompt_ids = await render_chat(endpoint, chat)
        return {"chat": chat, "prompt_ids": prompt_ids, **fresh_path(),
                "session_id": state.get("session_id") or new_session_id(),
                "thinking_format": fmt.describe()}

    return keyed(prepare, start=True)


def reason_node(endpoint: Endpoint, config: CoTConfig) -> Node:
    """Extend the reasoning by at most ``chunk_size`` tokens, never past ``max_tokens`` nor
    past what the server's context window holds with the probe after it (none left: exit,
    stop reason ``context``): a new request (sequential probing) or the next tokens of the
    program's live stream (overlapped probing, token mode), streamed to
    ``stream_mode="custom"`` as they arrive."""

    async def reason(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        log = await read_log(state)
        remaining = token_cap(state, config) - usage["reasoning_tokens"]
        fmt = await detect(endpoint)
        room = await _context_room(endpoint, config, state, log, fmt)
        if room is not None and room < 1:  # no chunk fits in the server's context window
            return {"decision": "exit", "stop_reason": "context"}
        size = min(config.chunk_size, remaining, remaining if room is None else room)
        if (config.probing == "overlapped" and state.get("prompt_ids") is not None
                and state.get("session_id")):  # token mode, and a key for the live stream
            budget = config.max_tokens - usage["reasoning_tokens"]
            chunk, dropped = await take_chunk(
                stream_key(state), endpoint, state.get("prompt_ids") or [], log.ids, n=size,
                max_tokens=budget if room is None else min(budget, room),
                temperature=config.temperature, top_p=config.top_p,
                seed=state.get("seed", config.seed), resubmit_every=config.resubmit_every)
            usage["discarded_tokens"] = usage.get("discarded_tokens", 0) + dropped
        else:
            chunk = await extend(
                endpoint, state["chat"], state.get("prompt_ids"), log.ids, log.text,
                max_tokens=size, temperature=config.temperature, top_p=config.top_p,
                seed=state.get("seed", config.seed))
        usage["reasoning_tokens"] += chunk.completion_tokens
        usage["reasoning_prompt_tokens"] += chunk.prompt_tokens
        usage["answer_tokens"] += fmt.answer_tokens(log.text, _ids(state, log), chunk)
        start = len(log.text)
        added, log = await add_chunk(state, log, chunk.token_ids, chunk.text, stream_key(state))
        update: dict[str, Any] = {**added, "usage": usage, "chunk_start": start}
        if chunk.token_logprobs:
            update["logprob_sum"] = state.get("logprob_sum", 0.0) + sum(chunk.token_logprobs)
            update["logprob_tokens"] = state.get("logprob_tokens", 0) + len(chunk.token_logprobs)
        if chunk.finish_reason != "length":  # the model ended its turn by itself
            closed = fmt.closed(log.text, _ids(state, log))
            update.update(decision="exit", stop_reason="answered" if closed else "finished")
        return update

    return keyed(reason)


async def _context_room(endpoint: Endpoint, config: CoTConfig, state: CoTState, log: Log,
                        fmt: ThinkingFormat) -> int | None:
    """What the next chunk may generate within the server's context window (``None``: no
    window known), keeping room for the probe after it — unless the model has closed its
    thinking and is writing its answer, which no probe follows."""
    prompt_ids = state.get("prompt_ids")
    left = await chunk_room(endpoint, config, prompt_ids, len(log.ids))
    if left is not None and left < config.chunk_size and fmt.closed(
            log.text, _ids(state, log)):
        left = await chunk_room(endpoint, config, prompt_ids, len(log.ids), probe=False)
    return left


def probe_node(endpoint: Endpoint, config: CoTConfig, *, early_exit: bool = True) -> Node:
    """Ask for the answer now, score the recent probes into ``certaindex``, and decide: exit
    (certain, the budget is spent, or no further chunk fits in the server's context window:
    ``context``) or continue. With ``probe_at='transitions'`` a chunk that completes no
    transition marker is not probed (the last one before the budget or the window always is).
    ``early_exit=False`` only records (the Certaindex is still computed, the run goes on to
    its budget): what ``record`` uses.

    Wire it after your own reasoning node and route with :func:`certaindex_condition`; the
    state needs ``chat``, ``reasoning``, ``probes`` and ``usage`` (see :class:`CoTState`).
    """

    async def probe(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        log = await read_log(state)
        spent = usage["reasoning_tokens"] >= config.max_tokens
        if (await detect(endpoint)).closed(log.text, _ids(state, log)):
            # The model closed its thinking and is writing its answer: nothing left to probe.
            decision, stop_reason = route_on(0.0, stops=[("budget", spent)])
            return {"decision": decision, "stop_reason": stop_reason}
        # Room for a chunk after this probe in the context window: none left makes it the last.
        after = await chunk_room(endpoint, config, state.get("prompt_ids"), len(log.ids))
        if after is not None and after < 0:  # not even this probe fits: the last one answers
            return {"decision": "exit", "stop_reason": "context"}
        full = after is not None and after < 1
        if config.probe_at == "transitions" and not (spent or full) and not crossed_transition(
                log.text, state.get("chunk_start", 0), config.transition_markers):
            return {"decision": "continue", "stop_reason": None}  # no turn yet: reason on
        reply = await ask_probe(endpoint, state["chat"], log.text, config,
                                seed=state.get("seed", config.seed),
                                prompt_ids=state.get("prompt_ids"), generated=log.ids)
        usage["probe_prompt_tokens"] += reply.completion.prompt_tokens
        usage["probe_completion_tokens"] += reply.completion.completion_tokens
        if config.min_probe_confidence is not None and reply.confidence is None:
            raise ValueError("min_probe_confidence needs the probes' token log-probabilities: "
                             "token-exact continuation (/v1/completions), not text mode")
        record = Probe(tokens=usage["reasoning_tokens"], answer=reply.answer,
                       confident=reply.confident, text=reply.text, confidence=reply.confidence)
        certaindex = cot_certaindex([*log.probes[-config.certainty_threshold:], record],
                                    config.certainty_threshold, config.min_probe_confidence)
        decision, stop_reason = route_on(certaindex if early_exit else 0.0,
                                         stops=[("budget", spent), ("context", full)])
        if decision == "exit":  # stop the live stream now, not a superstep later
            usage = await discard_stream(state, usage)
        emit_probe_event(reply, certaindex, decision, tokens=record["tokens"],
                         chars=len(log.text))
        return {
            **await add_probe(state, log, record, config.certainty_threshold),
            "usage": usage,
            "certaindex": certaindex,
            "decision": decision,
            "stop_reason": stop_reason,
        }

    return keyed(probe)


def finish_node(endpoint: Endpoint) -> Node:
    """Emit the answer: the model's own when it finished (read from after its thinking), else
    the last probe's, appended to the reasoning as the reference does — after closing the
    thinking, so the response reads as the model's would."""

    async def finish(state: CoTState) -> dict[str, Any]:
        log, fmt = await read_log(state), await detect(endpoint)
        reasoning = log.text
        usage = await discard_stream(state, state["usage"])  # overlapped: close what still runs
        ended: dict[str, Any] = {"usage": usage} if usage is not state["usage"] else {}
        if logged(state):  # the whole history, once, for the caller
            ended["probes"] = list(log.probes)
            forget_log(state)
        if state.get("stop_reason") in ("finished", "answered") or fmt.closed(
                reasoning, _ids(state, log)):  # finished, or cut short while answering
            answer = final_answer(fmt.answer(reasoning))
            return {"answer": answer, "response": reasoning, "decision": "exit", **ended}
        probes = log.probes
        answer = probes[-1]["answer"] if probes else ""
        response = reasoning
        if answer:  # closed the family's way (its close marker, its answer section)
            before, after = fmt.closing(reasoning, _ids(state, log))
            response = f"{reasoning}{before}{FINAL_ANSWER_HEADER}{answer}}} \\]{after}"
        return {"answer": answer, "response": response, "decision": "exit", **ended}

    return finish


def certaindex_condition(state: CoTState) -> Decision:
    """Route on the decision the last node made from the Certaindex: ``exit``, ``continue``
    or ``widen`` (as ``tools_condition`` routes on tool calls)."""
    return state.get("decision", "continue")


def create_cot(
    endpoint: Endpoint,
    config: CoTConfig | None = None,
    *,
    effort: Effort | None = None,
    early_exit: bool = True,
    checkpointer: Checkpointer = None,
    store: BaseStore | None = None,
    name: str = "dynasor_cot",
) -> CompiledStateGraph[CoTState, None, CoTInput, CoTOutput]:
    """Build the Dynasor-CoT graph.

    Args:
        endpoint: the vLLM (OpenAI-compatible) server every request goes to.
        config: how to reason, probe and stop; default the reference settings (effort mid).
        effort: a preset (``mild`` … ``crazy``) instead of ``config``; not both.
        early_exit: ``False`` probes after every chunk but never stops on the Certaindex
            (the token-deprivation run ``record`` makes).
        checkpointer: LangGraph checkpointer for durable, resumable runs.
        store: LangGraph store for the reasoning log: with one, each chunk and probe is
            written once (checkpoint bytes linear in the reasoning's length); without, the
            log is the state (:mod:`dynasor_graph._transcript`). A graph used as a node of a
            parent uses the parent's store.
        name: the graph's name (in Studio and as a subgraph).

    Returns:
        A compiled graph reading :class:`CoTInput` (``question`` or ``messages``) and
        returning :class:`CoTOutput` (answer, response, certaindex, decision, stop_reason,
        probes, usage), so as a node of a parent it hands back only those keys.

    Example:
        >>> graph = create_cot(Endpoint(model="my-model", api_base="http://127.0.0.1:8000/v1"))
        >>> result = await graph.ainvoke({"question": "What is 2 + 3?"})  # doctest: +SKIP
    """
    if config is None:
        config = CoTConfig.from_effort(effort) if effort else CoTConfig()
    elif effort is not None:
        raise ValueError("give either config or effort, not both")
    retry = retry_policy(endpoint)
    builder = StateGraph(CoTState, input_schema=CoTInput, output_schema=CoTOutput)
    builder.add_node("prepare", prepare_node(endpoint, config), retry_policy=retry)
    builder.add_node("reason", reason_node(endpoint, config), retry_policy=retry)
    builder.add_node("probe", probe_node(endpoint, config, early_exit=early_exit),
                     retry_policy=retry)
    builder.add_node("finish", finish_node(endpoint))
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "reason")
    builder.add_conditional_edges("reason", certaindex_condition,
                                  {"continue": "probe", "exit": "finish"})
    builder.add_conditional_edges("probe", certaindex_condition,
                                  {"continue": "reason", "exit": "finish"})
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, store=store, name=name)
    # A full-budget run takes two supersteps a chunk: more than LangGraph's default limit of 25.
    return graph.with_config(recursion_limit=recursion_limit(config))


def recursion_limit(config: CoTConfig) -> int:
    """A LangGraph recursion limit large enough for a run that spends the whole budget."""
    chunks = -(-config.max_tokens // config.chunk_size)
    return 2 * chunks + 10
