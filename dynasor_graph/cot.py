"""Dynasor-CoT: chain-of-thought that stops once its probed answer has settled.

The graph reasons in chunks of ``chunk_size`` tokens; after each chunk ``probe`` forces an
immediate answer and scores the recent probes into the state's ``certaindex``; the router exits
when it reaches 1.0 (the last ``certainty_threshold`` probes confident and equivalent), when
the model finishes by itself, or when ``max_tokens`` is spent::

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

from collections.abc import Awaitable
from typing import Any, Literal, Protocol, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import Field

from ._answers import final_answer
from ._endpoint import Completion, Endpoint, retry_policy
from ._probe import ProbeConfig, ask_probe, emit_probe_event
from ._state import CoTInput, Probe, Usage, chat_messages, empty_usage
from ._thinking import ThinkingFormat, detect
from ._token_route import extend, render_chat
from .certaindex import Decision, StopReason, probe_agreement, route_on

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

    @classmethod
    def from_effort(cls, effort: Effort, **overrides: object) -> CoTConfig:
        """A config from a named preset (threshold, chunk size) plus any overrides."""
        if effort not in EFFORT_PRESETS:
            raise ValueError(f"effort must be one of {sorted(EFFORT_PRESETS)}, not {effort!r}")
        threshold, chunk = EFFORT_PRESETS[effort]
        values: dict[str, object] = {"certainty_threshold": threshold, "chunk_size": chunk}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


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


class Node(Protocol):
    """An async LangGraph node over the CoT state."""

    def __call__(self, state: CoTState) -> Awaitable[dict[str, Any]]: ...


def fresh_path() -> CoTState:
    """A chain of thought that has not started: no reasoning, no probes, zero usage."""
    return CoTState(reasoning="", token_ids=[], probes=[], usage=empty_usage(), certaindex=0.0,
                    decision="continue", stop_reason=None, answer="", response="")


def thinking_closed(text: str, fmt: ThinkingFormat, ids: list[int] | None = None) -> bool:
    """True once the model has closed its thinking (the family's close marker: on ``ids`` in
    token mode when it is a special token, else in ``text``)."""
    return fmt.closed(text, ids)


def after_thinking(text: str, fmt: ThinkingFormat) -> str:
    """The family's answer section of ``text`` (all of it if the thinking never closed)."""
    return fmt.answer(text)


def answer_tokens(before: str, chunk: Completion, fmt: ThinkingFormat,
                  before_ids: list[int] | None = None) -> int:
    """Tokens of ``chunk`` generated after the model closed its thinking: all of them if it
    had already, those after the marker if the marker ends in this chunk, else none."""
    return fmt.answer_tokens(before, before_ids, chunk)


def _ids(state: CoTState) -> list[int] | None:
    """The program's generated ids in token mode (``None`` in text mode)."""
    return state.get("token_ids", []) if state.get("prompt_ids") is not None else None


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
                "thinking_format": fmt.describe()}

    return prepare


def reason_node(endpoint: Endpoint, config: CoTConfig) -> Node:
    """Extend the reasoning by at most ``chunk_size`` tokens, never past ``max_tokens``."""

    async def reason(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        remaining = token_cap(state, config) - usage["reasoning_tokens"]
        reasoning = state["reasoning"]
        chunk = await extend(
            endpoint,
            state["chat"],
            state.get("prompt_ids"),
            state.get("token_ids", []),
            reasoning,
            max_tokens=min(config.chunk_size, remaining),
            temperature=config.temperature,
            top_p=config.top_p,
            seed=state.get("seed", config.seed),
        )
        usage["reasoning_tokens"] += chunk.completion_tokens
        usage["reasoning_prompt_tokens"] += chunk.prompt_tokens
        fmt = await detect(endpoint)
        usage["answer_tokens"] += answer_tokens(reasoning, chunk, fmt, _ids(state))
        reasoning += chunk.text
        update: dict[str, Any] = {"reasoning": reasoning, "usage": usage,
                                  "token_ids": [*state.get("token_ids", []), *chunk.token_ids]}
        if chunk.finish_reason != "length":  # the model ended its turn by itself
            closed = thinking_closed(reasoning, fmt, _ids(cast(CoTState, {**state, **update})))
            update.update(decision="exit", stop_reason="answered" if closed else "finished")
        return update

    return reason


def probe_node(endpoint: Endpoint, config: CoTConfig, *, early_exit: bool = True) -> Node:
    """Ask for the answer now, score the recent probes into ``certaindex``, and decide: exit
    (certain, or the budget is spent) or continue. ``early_exit=False`` only records (the
    Certaindex is still computed, the run goes on to its budget): what ``record`` uses.

    Wire it after your own reasoning node and route with :func:`certaindex_condition`; the
    state needs ``chat``, ``reasoning``, ``probes`` and ``usage`` (see :class:`CoTState`).
    """

    async def probe(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        spent = usage["reasoning_tokens"] >= config.max_tokens
        if thinking_closed(state["reasoning"], await detect(endpoint), _ids(state)):
            # The model closed its thinking and is writing its answer: nothing left to probe.
            decision, stop_reason = route_on(0.0, stops=[("budget", spent)])
            return {"decision": decision, "stop_reason": stop_reason}
        reply = await ask_probe(endpoint, state["chat"], state["reasoning"], config,
                                seed=state.get("seed", config.seed),
                                prompt_ids=state.get("prompt_ids"),
                                generated=state.get("token_ids", []))
        usage["probe_prompt_tokens"] += reply.completion.prompt_tokens
        usage["probe_completion_tokens"] += reply.completion.completion_tokens
        record = Probe(tokens=usage["reasoning_tokens"], answer=reply.answer,
                       confident=reply.confident, text=reply.text)
        probes = [*state["probes"], record]
        certaindex = probe_agreement(probes, config.certainty_threshold)
        decision, stop_reason = route_on(certaindex if early_exit else 0.0,
                                         stops=[("budget", spent)])
        emit_probe_event(reply, certaindex, decision, tokens=record["tokens"])
        return {
            "probes": probes,
            "usage": usage,
            "certaindex": certaindex,
            "decision": decision,
            "stop_reason": stop_reason,
        }

    return probe


def finish_node(endpoint: Endpoint) -> Node:
    """Emit the answer: the model's own when it finished (read from after its thinking), else
    the last probe's, appended to the reasoning as the reference does — after closing the
    thinking, so the response reads as the model's would."""

    async def finish(state: CoTState) -> dict[str, Any]:
        reasoning, fmt = state["reasoning"], await detect(endpoint)
        if state.get("stop_reason") in ("finished", "answered"):
            answer = final_answer(after_thinking(reasoning, fmt))
            return {"answer": answer, "response": reasoning, "decision": "exit"}
        if thinking_closed(reasoning, fmt, _ids(state)):  # cut short while answering
            answer = final_answer(after_thinking(reasoning, fmt))
            return {"answer": answer, "response": reasoning, "decision": "exit"}
        probes = state["probes"]
        answer = probes[-1]["answer"] if probes else ""
        response = reasoning
        if answer:  # closed the family's way (its close marker, its answer section)
            before, after = fmt.closing(reasoning, _ids(state))
            response = f"{reasoning}{before}{FINAL_ANSWER_HEADER}{answer}}} \\]{after}"
        return {"answer": answer, "response": response, "decision": "exit"}

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
    graph = builder.compile(checkpointer=checkpointer, name=name)
    # A full-budget run takes two supersteps a chunk: more than LangGraph's default limit of 25.
    return graph.with_config(recursion_limit=recursion_limit(config))


def recursion_limit(config: CoTConfig) -> int:
    """A LangGraph recursion limit large enough for a run that spends the whole budget."""
    chunks = -(-config.max_tokens // config.chunk_size)
    return 2 * chunks + 10
