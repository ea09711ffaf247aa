"""Early stop for tool-calling agents: a Certaindex over the agent's steps.

Agents overthink too: they keep calling tools after their answer has stopped changing. After
every model step that asks for tools, a cheap **probe** asks the same model for its final answer
now (the step's exact prompt, the same tools with ``tool_choice="none"``, and an assistant turn
that starts with the step's draft text plus ``probe_suffix``), so the probe shares the step's
prefix and vLLM's prefix cache serves it. The probes are scored with
:func:`~dynasor_graph.certaindex.probe_agreement` and routed with
:func:`~dynasor_graph.certaindex.decide`; at 1.0 the run ends with a final assistant message
carrying the answer, and the step's tool calls, which never ran, are removed. Optionally a
step that only repeats tool calls already made in the run ends it as well.

Components:

- :class:`EarlyStopMiddleware` for ``langchain.agents.create_agent`` (the pattern of
  ``ModelCallLimitMiddleware``): probes in ``awrap_model_call``, where the exact prompt and tools
  are known, and ends the run from ``after_model`` with ``jump_to: "end"``.
- :func:`early_stop_node` and :func:`early_stop_condition` for hand-built loops: the node sits
  between your model node and ``ToolNode`` where ``tools_condition`` would route::

      builder.add_edge("agent", "early_stop")
      builder.add_conditional_edges("early_stop", early_stop_condition,
                                    {"continue": "tools", "exit": END})

Both write an :class:`EarlyStopReport` to the state key ``early_stop``: the Certaindex, the
decision, the probes and what the run used (model calls, tool calls, the server's token
counts). With ``dry_run=True`` nothing is stopped: the run goes on as without early stop and
the report measures, on that very run, what stopping would have saved (``saved``).

Reasoning models (R1 distills, Qwen3 behind ``--reasoning-parser``): the step's thinking comes
back in ``reasoning_content``; the probe puts it, then the draft, before the suffix, inside the
thinking. In token mode (where the server answers ``/tokenize``) the probe's prompt is the
step's own prompt — messages and tools rendered by the server's chat template — then the ids of
the thinking and draft (after ``<think>\n`` when the model, not the prompt, opens it) and of the
suffix, sent to ``/v1/completions``: the step's rendered prefix is shared token for token,
whatever the template does to an assistant turn. Text mode (no ``/tokenize``) continues the
assistant turn through chat completions as before.

The context window (token mode): a probe that would not fit the server's ``max_model_len`` is
not sent. The run is then at the window (the agent's next call carries this step's prompt, its
reply and the tool results, and needs room for a whole step where the probe needed only its
suffix and ``probe_max_tokens``), so it ends there with stop reason ``context`` and the latest
confident probe's answer (``min_steps`` does not delay it); without such an answer it goes on
unprobed, as it would without early stop. Text mode knows no window and probes as before.

Usage::

    agent = create_agent(model, tools, middleware=[EarlyStopMiddleware(endpoint)])
    result = await agent.ainvoke({"messages": [HumanMessage("What is 17 * 23 + 4?")]})
    result["messages"][-1].content, result["early_stop"]["usage"]

Async only (``ainvoke`` / ``astream``), like every model call of this package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    hook_config,
)
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langgraph.graph import MessagesState
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import Field

from ._agent_probe import openai_messages, openai_tools, probe_step, step_thinking
from ._endpoint import Endpoint, new_session_id, program_key, session_headers
from ._probe import ProbeConfig, emit_probe_event
from .certaindex import Decision, StopReason, probe_agreement, route_on

__all__ = [
    "DEFAULT_AGENT_PROBE_SUFFIX",
    "AgentLoopState",
    "AgentProbe",
    "AgentStopReason",
    "AgentUsage",
    "EarlyStopConfig",
    "EarlyStopMiddleware",
    "EarlyStopNode",
    "EarlyStopReport",
    "EarlyStopState",
    "Savings",
    "WouldStop",
    "early_stop_condition",
    "early_stop_node",
]

DEFAULT_AGENT_PROBE_SUFFIX = (
    "I have enough to answer the question now. **Final Answer**\n\n\\[ \\boxed{"
)

AgentStopReason = StopReason
"""``certain``: the Certaindex reached 1.0; ``repeated_tool_call``: the step only repeated tool
calls already made; ``context``: the step's probe could not fit the server's context window
(token route), so the run ends with the latest confident probe's answer; ``finished``: the
model answered without tools by itself."""


class EarlyStopConfig(ProbeConfig):
    """When an agent's run may end early, and how its answer is probed."""

    certainty_threshold: int = Field(
        default=2, ge=1, le=64, description="Window w: agreeing confident probes needed to stop"
    )
    min_steps: int = Field(
        default=2, ge=1, le=10_000, description="Model steps a run takes before it may stop"
    )
    stop_on_repeated_tool_calls: bool = Field(
        default=True, description="Also stop when a step only repeats tool calls of this run"
    )
    probe_suffix: str = Field(default=DEFAULT_AGENT_PROBE_SUFFIX, min_length=1)
    dry_run: bool = Field(
        default=False, description="Probe and report what stopping would save, never stop"
    )


class AgentUsage(TypedDict):
    """What a run used: calls counted in the graph, tokens from the server's ``usage``."""

    model_calls: int
    tool_calls: int
    model_prompt_tokens: int
    model_completion_tokens: int
    probe_prompt_tokens: int
    probe_completion_tokens: int


class AgentProbe(TypedDict):
    """One probe: the model step it followed, the answer it gave, and its confidence."""

    step: int
    answer: str
    confident: bool
    text: str


class WouldStop(TypedDict):
    """Where early stop fired in a dry run, and what the run had used by then."""

    step: int
    stop_reason: AgentStopReason
    answer: str
    usage: AgentUsage


class Savings(TypedDict):
    """Measured on one dry run: what the run spent after the point where it would have stopped.

    ``model_tokens`` were spent by the model calls after the stop; ``probe_tokens`` is what the
    probes up to the stop cost (a run without this middleware sends none); ``net_tokens`` is
    the first less the second, and can be negative when a run stops only a step or two early.
    """

    model_calls: int
    tool_calls: int
    model_tokens: int
    probe_tokens: int
    net_tokens: int


class EarlyStopReport(TypedDict):
    """The state key ``early_stop``: the Certaindex over the run's steps and its accounting."""

    certaindex: float
    decision: Decision
    stop_reason: AgentStopReason | None
    answer: str
    probes: list[AgentProbe]
    usage: AgentUsage
    would_stop: WouldStop | None
    saved: Savings | None
    session_id: str
    """The run's key (a uuid4 hex made at its first step, kept by later runs of the same
    state): the ``X-Session-ID`` of its probes, and of the model's own calls under the
    middleware, when the run has no thread."""


class EarlyStopState(AgentState[Any]):
    """The agent state with the early-stop report."""

    early_stop: NotRequired[EarlyStopReport]


class AgentLoopState(MessagesState, total=False):
    """A hand-built agent loop's state: ``messages`` plus the early-stop report."""

    early_stop: EarlyStopReport


class EarlyStopNode(Protocol):
    """The async node :func:`early_stop_node` returns."""

    def __call__(self, state: AgentLoopState) -> Awaitable[dict[str, Any]]: ...


def _empty_usage() -> AgentUsage:
    return AgentUsage(model_calls=0, tool_calls=0, model_prompt_tokens=0,
                      model_completion_tokens=0, probe_prompt_tokens=0, probe_completion_tokens=0)


def _new_report(session_id: str) -> EarlyStopReport:
    return EarlyStopReport(certaindex=0.0, decision="continue", stop_reason=None, answer="",
                           probes=[], usage=_empty_usage(), would_stop=None, saved=None,
                           session_id=session_id)


def _session_id(report: EarlyStopReport | None) -> str:
    """The key of the run ``report`` belongs to: its own, or a new one for a first step."""
    return (report.get("session_id") if report else None) or new_session_id()


def _this_run(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The messages since the last human message: the steps of the current run."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return list(messages[i + 1 :])
    return list(messages)


def _trailing_tool_results(messages: Sequence[BaseMessage]) -> int:
    """Tool messages at the end of the prompt: the tool calls the previous step ran."""
    count = 0
    for message in reversed(messages):
        if not isinstance(message, ToolMessage):
            break
        count += 1
    return count


def _repeats_earlier_calls(ai: AIMessage, run: Sequence[BaseMessage]) -> bool:
    """True when every tool call of ``ai`` (name and arguments) was already made in the run."""
    earlier = [(c["name"], c["args"]) for m in run if isinstance(m, AIMessage)
               for c in m.tool_calls]
    return bool(ai.tool_calls) and all((c["name"], c["args"]) in earlier for c in ai.tool_calls)


def _savings(total: AgentUsage, at: AgentUsage) -> Savings:
    model_tokens = (total["model_prompt_tokens"] + total["model_completion_tokens"]
                    - at["model_prompt_tokens"] - at["model_completion_tokens"])
    probe_tokens = at["probe_prompt_tokens"] + at["probe_completion_tokens"]
    return Savings(model_calls=total["model_calls"] - at["model_calls"],
                   tool_calls=total["tool_calls"] - at["tool_calls"],
                   model_tokens=model_tokens, probe_tokens=probe_tokens,
                   net_tokens=model_tokens - probe_tokens)


async def _advance(
    previous: EarlyStopReport | None,
    prompt: Sequence[BaseMessage],
    ai: AIMessage,
    tools: Sequence[dict[str, Any]],
    endpoint: Endpoint,
    settings: EarlyStopConfig,
    key: str,
) -> EarlyStopReport:
    """Account for the model step that answered ``prompt`` with ``ai``, probe (its requests
    carrying the run's ``key``), and decide."""
    run = _this_run(prompt)
    new_run = previous is None or not any(isinstance(m, AIMessage) for m in run)
    report = _new_report(key) if new_run or previous is None else previous
    usage = report["usage"].copy()
    usage["model_calls"] += 1
    usage["tool_calls"] += _trailing_tool_results(prompt)
    metadata = ai.usage_metadata
    if metadata is not None:
        usage["model_prompt_tokens"] += metadata["input_tokens"]
        usage["model_completion_tokens"] += metadata["output_tokens"]
    would_stop = report["would_stop"]
    if not ai.tool_calls:  # the model answered by itself: the run ends here anyway
        saved = _savings(usage, would_stop["usage"]) if would_stop else None
        return EarlyStopReport(certaindex=report["certaindex"], decision="exit",
                               stop_reason="finished", answer=ai.text, probes=report["probes"],
                               usage=usage, would_stop=would_stop, saved=saved,
                               session_id=key)
    with program_key(key):  # the probe's requests carry the run's key
        reply = await probe_step(endpoint, openai_messages(prompt), step_thinking(ai), ai.text,
                                 tools, settings, settings.seed)
    probes, certaindex = report["probes"], report["certaindex"]
    if reply is not None:
        usage["probe_prompt_tokens"] += reply.completion.prompt_tokens
        usage["probe_completion_tokens"] += reply.completion.completion_tokens
        probes = [*probes, AgentProbe(step=usage["model_calls"], answer=reply.answer,
                                      confident=reply.confident, text=reply.text)]
        certaindex = probe_agreement(probes, settings.certainty_threshold)
    # Stop on repeated tool calls, or at the window, only with an answer to give: the latest
    # confident probe's.
    fallback = next((p["answer"] for p in reversed(probes) if p["answer"] and p["confident"]),
                    "")
    if reply is None:  # no probe fits: the run is at the window (see the module doc)
        stop_reason: AgentStopReason | None = "context" if fallback else None
        answer = fallback or report["answer"]
    else:
        repeated = settings.stop_on_repeated_tool_calls and _repeats_earlier_calls(ai, run)
        _, stop_reason = route_on(certaindex,
                                  stops=[("repeated_tool_call", repeated and bool(fallback))])
        answer = fallback if stop_reason == "repeated_tool_call" else probes[-1]["answer"]
        if usage["model_calls"] < settings.min_steps:
            stop_reason = None
    if stop_reason is not None and settings.dry_run:
        if would_stop is None:
            would_stop = WouldStop(step=usage["model_calls"], stop_reason=stop_reason,
                                   answer=answer, usage=usage.copy())
        stop_reason = None
    decision: Decision = "exit" if stop_reason else "continue"
    if reply is not None:
        emit_probe_event(reply, certaindex, decision, step=usage["model_calls"])
    return EarlyStopReport(certaindex=certaindex, decision=decision, stop_reason=stop_reason,
                           answer=answer, probes=probes, usage=usage, would_stop=would_stop,
                           saved=None, session_id=key)


def _stop_messages(messages: Sequence[AnyMessage], report: EarlyStopReport) -> list[BaseMessage]:
    """Replace the step's AI message (its tool calls never run) with the final answer."""
    final = AIMessage(content=report["answer"], response_metadata={"early_stop": {
        "stop_reason": report["stop_reason"], "certaindex": report["certaindex"],
        "step": report["usage"]["model_calls"]}})
    last = messages[-1]
    return [RemoveMessage(id=last.id), final] if last.id else [final]


def _stops_early(report: EarlyStopReport | None, messages: Sequence[AnyMessage]) -> bool:
    """True when the report ends the run at this step: the last message still asks for tools."""
    last = messages[-1] if messages else None
    return (report is not None
            and report["stop_reason"] in ("certain", "repeated_tool_call", "context")
            and isinstance(last, AIMessage) and bool(last.tool_calls))


class EarlyStopMiddleware(AgentMiddleware[EarlyStopState, Any, Any]):
    """Ends a ``create_agent`` run once its probed answer has settled (see the module doc).

    ``endpoint`` is where probes go: the server the agent's model calls, so the probe's prompt,
    which repeats the step's prompt, is served from its prefix cache.
    """

    state_schema = EarlyStopState

    def __init__(self, endpoint: Endpoint, settings: EarlyStopConfig | None = None) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.settings = settings or EarlyStopConfig()

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ExtendedModelResponse[Any]:
        """Run the model step (its request carrying the run's session header, as the probe's
        do), then probe with the step's exact prompt and tools."""
        previous = cast("EarlyStopReport | None", request.state.get("early_stop"))
        key = _session_id(previous)
        with program_key(key):
            headers = session_headers()
        settings = request.model_settings
        response = await handler(request.override(model_settings={**settings, "extra_headers": {
            **(settings.get("extra_headers") or {}), **headers}}))
        ai = next((m for m in reversed(response.result) if isinstance(m, AIMessage)), None)
        if ai is None:
            return ExtendedModelResponse(model_response=response)
        prompt: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            prompt.insert(0, request.system_message)
        report = await _advance(previous, prompt, ai,
                                openai_tools(request.tools), self.endpoint, self.settings, key)
        return ExtendedModelResponse(model_response=response,
                                     command=Command(update={"early_stop": report}))

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: EarlyStopState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the run with the probed answer once the step's probe decided ``exit``."""
        report = state.get("early_stop")
        if report is None or not _stops_early(report, state["messages"]):
            return None
        return {"jump_to": "end", "messages": _stop_messages(state["messages"], report)}

    @hook_config(can_jump_to=["end"])
    async def aafter_model(
        self, state: EarlyStopState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async :meth:`after_model`."""
        return self.after_model(state, runtime)


def early_stop_node(
    endpoint: Endpoint,
    settings: EarlyStopConfig | None = None,
    *,
    tools: Sequence[BaseTool | dict[str, Any]] = (),
    system_prompt: str | None = None,
) -> EarlyStopNode:
    """A node for hand-built agent loops, run right after the model node.

    Give it the ``tools`` and ``system_prompt`` your model node uses, so the probe repeats the
    step's prompt exactly. It writes ``early_stop`` and, when the run stops, swaps the step's
    AI message for the final answer; route after it with :func:`early_stop_condition`.
    """
    settings = settings or EarlyStopConfig()
    schemas = openai_tools(tools)

    async def early_stop(state: AgentLoopState) -> dict[str, Any]:
        messages = state["messages"]
        ai = messages[-1] if messages else None
        if not isinstance(ai, AIMessage):
            raise ValueError("early_stop_node must follow a model node: no AI message last")
        prompt: list[BaseMessage] = list(messages[:-1])
        if system_prompt:
            prompt.insert(0, SystemMessage(system_prompt))
        previous = state.get("early_stop")
        report = await _advance(previous, prompt, ai, schemas, endpoint, settings,
                                _session_id(previous))
        update: dict[str, Any] = {"early_stop": report}
        if _stops_early(report, messages):
            update["messages"] = _stop_messages(messages, report)
        return update

    return early_stop


def early_stop_condition(state: AgentLoopState) -> Literal["continue", "exit"]:
    """Route after :func:`early_stop_node`: ``continue`` to the tools, or ``exit``."""
    report = state.get("early_stop")
    messages = state["messages"]
    last = messages[-1] if messages else None
    if (report is not None and report["decision"] == "exit") or not (
        isinstance(last, AIMessage) and last.tool_calls
    ):
        return "exit"
    return "continue"
