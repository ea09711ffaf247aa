"""The probe: ask the model for its answer *now* and read it.

A probe continues the reasoning (or an agent's draft) with a suffix that forces an immediate
answer — ``"... I suddenly got the answer ... \\boxed{"`` — for a few tokens, then reads the
boxed answer and whether the model hedged. Dynasor-CoT, the SC paths, ``record`` and the agent
early stop all probe through :func:`ask_probe`; the Certaindex of a run is the agreement of
its recent probes (:func:`~dynasor_graph.certaindex.probe_agreement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.config import get_stream_writer
from pydantic import BaseModel, ConfigDict, Field

from ._answers import HESITATION_WORDS, answer_end, is_confident, probe_answer
from ._context import context_limit, no_room
from ._endpoint import Completion, Endpoint, Message
from ._text_route import complete
from ._token_route import extend, room, tokenize
from .certaindex import Decision, logprob_confidence

DEFAULT_PROBE_SUFFIX = (
    "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
)


class ProbeConfig(BaseModel):
    """How a probe asks for the answer now and reads it: shared by Dynasor-CoT and the agent
    early stop, which differ only in their suffix and stopping rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probe_suffix: str = Field(default=DEFAULT_PROBE_SUFFIX, min_length=1)
    probe_max_tokens: int = Field(default=20, ge=1, le=1024)
    probe_temperature: float = Field(default=0.6, ge=0, le=2)
    probe_top_p: float = Field(default=0.95, gt=0, le=1)
    hesitation_words: tuple[str, ...] = HESITATION_WORDS
    seed: int | None = Field(default=None, description="Sampling seed passed to the server")


@dataclass(frozen=True)
class ProbeReply:
    """What one probe said: the answer it gave, whether it was confident, and its cost."""

    answer: str
    confident: bool
    completion: Completion

    @property
    def text(self) -> str:
        return self.completion.text

    @property
    def confidence(self) -> float | None:
        """How sure the model was of its answer's tokens: their geometric-mean probability,
        ``exp(mean log p)`` (DeepConf's token confidence, over the answer only); 0.0 for no
        answer, ``None`` when the server returned no log-probabilities (text continuation)."""
        return answer_confidence(self.completion)


def answer_confidence(completion: Completion) -> float | None:
    """``exp(mean log p)`` of the tokens that start before the brace closing the answer."""
    if not completion.token_logprobs or not completion.token_offsets:
        return None
    end = answer_end(completion.text)
    answer = [lp for lp, offset in zip(completion.token_logprobs, completion.token_offsets,
                                       strict=False) if end is not None and offset < end]
    return logprob_confidence(answer, window=len(answer)) if answer else 0.0


async def ask_probe(
    endpoint: Endpoint,
    chat: list[Message],
    prefix: str,
    settings: ProbeConfig,
    *,
    seed: int | None = None,
    tools: Sequence[dict[str, Any]] = (),
    prompt_ids: Sequence[int] | None = None,
    generated: Sequence[int] = (),
) -> ProbeReply:
    """Continue ``prefix + probe_suffix`` for ``probe_max_tokens`` and read the answer.

    With ``prompt_ids`` (token-exact mode) the probe's prompt is ``prompt_ids + generated +``
    the suffix's ids: the reasoning request's prompt plus the suffix, token for token.
    """
    if prompt_ids is not None:
        reply = await extend(endpoint, chat, prompt_ids, generated, prefix,
                             suffix=settings.probe_suffix, max_tokens=settings.probe_max_tokens,
                             temperature=settings.probe_temperature,
                             top_p=settings.probe_top_p, seed=seed)
    else:
        reply = await complete(endpoint, chat, prefix + settings.probe_suffix,
                               max_tokens=settings.probe_max_tokens,
                               temperature=settings.probe_temperature,
                               top_p=settings.probe_top_p, seed=seed, tools=tools)
    return ProbeReply(answer=probe_answer(reply.text),
                      confident=is_confident(reply.text, settings.hesitation_words),
                      completion=reply)


async def probe_reserve(endpoint: Endpoint, settings: ProbeConfig) -> int:
    """The window a probe takes after its prompt: the suffix's ids (cached per server) and
    ``probe_max_tokens``."""
    return len(await tokenize(endpoint, settings.probe_suffix)) + settings.probe_max_tokens


async def chunk_room(endpoint: Endpoint, settings: ProbeConfig, prompt_ids: Sequence[int] | None,
                     generated: int, *, probe: bool = True) -> int | None:
    """The most tokens the next chunk may generate after ``prompt_ids`` and ``generated``
    tokens so that it, and the probe after it (unless ``probe=False``), fit in the server's
    context window; ``None`` when no window is known (text mode, a server without
    ``max_model_len``). A prompt that leaves no room for even the first token and its probe
    raises :class:`~dynasor_graph.ServerRefused` before anything is sent."""
    if prompt_ids is None:
        return None
    # the suffix first: its /tokenize answer carries the window, so reading it costs nothing
    reserve = await probe_reserve(endpoint, settings) if probe else 0
    left = await room(endpoint, len(prompt_ids) + generated, reserve=reserve)
    if left is not None and left < 1 and generated == 0:
        raise no_room(endpoint, len(prompt_ids), reserve, await context_limit(endpoint) or 0)
    return left


TRANSITION_MARKERS = ("Wait", "Alternatively", "\n\n")
"""Where reasoning turns (DEER): a reflection word or a paragraph break."""


def crossed_transition(text: str, start: int, markers: Sequence[str]) -> bool:
    """True when an occurrence of one of ``markers`` in ``text`` ends after ``start``: the
    text added since ``start`` completes a transition (one straddling ``start`` counts)."""
    return any(m and text.find(m, max(0, start - len(m) + 1)) != -1 for m in markers)


def emit_probe_event(reply: ProbeReply, certaindex: float, decision: Decision,
                     **where: int) -> None:
    """Stream the probe (``stream_mode="custom"``): where it happened (``tokens=`` and
    ``chars=``, the reasoning's length in characters, or ``step=``), what it answered (and its
    token ``confidence``), its cost, and the Certaindex and decision it led to."""
    get_stream_writer()({
        "event": "probe",
        **where,
        "answer": reply.answer,
        "confident": reply.confident,
        "certaindex": certaindex,
        "decision": decision,
        "prompt_tokens": reply.completion.prompt_tokens,
        "completion_tokens": reply.completion.completion_tokens,
        "text": reply.text,
        "confidence": reply.confidence,
    })
