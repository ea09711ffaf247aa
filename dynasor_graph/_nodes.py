"""Shared graph pieces: prepare, reason, probe, finish, and the router on ``decision``.

Each ``*_node`` factory closes over an :class:`Endpoint` and a :class:`CoTConfig` (so the API
key never enters the state) and returns an async LangGraph node.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from langchain_core.messages import BaseMessage, convert_to_openai_messages
from langgraph.config import get_stream_writer
from langgraph.types import RetryPolicy

from ._answers import final_answer, is_confident, probe_answer
from ._config import CoTConfig, Endpoint
from ._endpoint import complete
from ._errors import EndpointUnreachable
from ._state import CoTInput, CoTState, Probe, empty_usage
from .certaindex import Decision, decide, probe_agreement


class Node(Protocol):
    """An async LangGraph node over the CoT state."""

    def __call__(self, state: CoTState) -> Awaitable[dict[str, Any]]: ...

FINAL_ANSWER_HEADER = "**Final Answer**\n\n\\[ \\boxed{"


def retry_policy(endpoint: Endpoint) -> RetryPolicy:
    """Retry transient endpoint failures (never refusals) ``endpoint.max_retries`` times."""
    return RetryPolicy(
        max_attempts=endpoint.max_retries + 1,
        initial_interval=0.5,
        max_interval=8.0,
        retry_on=EndpointUnreachable,
    )


def chat_messages(state: CoTInput, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation to reason about, as OpenAI-style dicts; rejects empty input."""
    raw = state.get("messages") or []
    question = (state.get("question") or "").strip()
    if not raw and not question:
        raise ValueError("question must not be empty (give 'question' or 'messages')")
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if raw:
        converted = convert_to_openai_messages(
            [m if isinstance(m, BaseMessage | dict) else {"role": "user", "content": str(m)}
             for m in raw]
        )
        for message in converted:
            content = message.get("content")
            text = content if isinstance(content, str) else str(content or "")
            messages.append({"role": str(message.get("role", "user")), "content": text})
    if question:
        messages.append({"role": "user", "content": question})
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise ValueError("question must not be empty (no user message has text)")
    return messages


def fresh_path() -> CoTState:
    """A chain of thought that has not started: no reasoning, no probes, zero usage."""
    return CoTState(
        reasoning="",
        probes=[],
        usage=empty_usage(),
        certaindex=0.0,
        decision="continue",
        stop_reason=None,
        answer="",
        response="",
    )


def token_cap(state: CoTState, config: CoTConfig) -> int:
    """How far the next chunk may reason: ``max_tokens``, or less where a multi-path parent
    shares one budget among its paths (the parent, not the probe, then stops a broke path)."""
    return min(config.max_tokens, state.get("token_cap", config.max_tokens))


def prepare_node(config: CoTConfig) -> Node:
    """Validate the input and start a fresh program: chat, empty reasoning, zero usage."""

    async def prepare(state: CoTState) -> dict[str, Any]:
        return {"chat": chat_messages(state, config.system_prompt), **fresh_path()}

    return prepare


def reason_node(endpoint: Endpoint, config: CoTConfig) -> Node:
    """Extend the reasoning by at most ``chunk_size`` tokens, never past ``max_tokens``."""

    async def reason(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        remaining = token_cap(state, config) - usage["reasoning_tokens"]
        chunk = await complete(
            endpoint,
            state["chat"],
            state["reasoning"],
            max_tokens=min(config.chunk_size, remaining),
            temperature=config.temperature,
            top_p=config.top_p,
            seed=state.get("seed", config.seed),
        )
        usage["reasoning_tokens"] += chunk.completion_tokens
        usage["reasoning_prompt_tokens"] += chunk.prompt_tokens
        update: dict[str, Any] = {"reasoning": state["reasoning"] + chunk.text, "usage": usage}
        if chunk.finish_reason != "length":  # the model ended its turn by itself
            update.update(decision="exit", stop_reason="finished")
        return update

    return reason


def probe_node(endpoint: Endpoint, config: CoTConfig) -> Node:
    """Ask for the answer now, score the recent probes, and decide: exit or continue."""

    async def probe(state: CoTState) -> dict[str, Any]:
        usage = state["usage"].copy()
        reply = await complete(
            endpoint,
            state["chat"],
            state["reasoning"] + config.probe_suffix,
            max_tokens=config.probe_max_tokens,
            temperature=config.probe_temperature,
            top_p=config.probe_top_p,
            seed=state.get("seed", config.seed),
        )
        usage["probe_prompt_tokens"] += reply.prompt_tokens
        usage["probe_completion_tokens"] += reply.completion_tokens
        record = Probe(
            tokens=usage["reasoning_tokens"],
            answer=probe_answer(reply.text),
            confident=is_confident(reply.text, config.hesitation_words),
            text=reply.text,
        )
        probes = [*state["probes"], record]
        certaindex = probe_agreement(probes, config.certainty_threshold)
        decision: Decision = decide(certaindex)
        stop_reason = "certain" if decision == "exit" else None
        if stop_reason is None and usage["reasoning_tokens"] >= config.max_tokens:
            decision, stop_reason = "exit", "budget"
        get_stream_writer()(
            {
                "event": "probe",
                "tokens": record["tokens"],
                "answer": record["answer"],
                "confident": record["confident"],
                "certaindex": certaindex,
                "decision": decision,
            }
        )
        return {
            "probes": probes,
            "usage": usage,
            "certaindex": certaindex,
            "decision": decision,
            "stop_reason": stop_reason,
        }

    return probe


def finish_node() -> Node:
    """Emit the answer; on an early exit append it to the reasoning as the reference does."""

    async def finish(state: CoTState) -> dict[str, Any]:
        reasoning = state["reasoning"]
        if state.get("stop_reason") == "finished":
            return {"answer": final_answer(reasoning), "response": reasoning, "decision": "exit"}
        probes = state["probes"]
        answer = probes[-1]["answer"] if probes else ""
        response = reasoning
        if answer:
            closing = "\n\n" if "</think>" in reasoning else "\n\n</think>\n\n"
            response = f"{reasoning}{closing}{FINAL_ANSWER_HEADER}{answer}}} \\]"
        return {"answer": answer, "response": response, "decision": "exit"}

    return finish


def route(state: CoTState) -> Decision:
    """Follow the decision the last node made from the Certaindex: exit, continue or widen."""
    return state.get("decision", "continue")
