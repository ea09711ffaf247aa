"""Reward models for tree search: a score in [0, 1] for a (possibly partial) solution.

MCTS and Rebase ask a :class:`RewardModel` how promising a path is; the reward Certaindex is
built from those scores. Three implementations:

- :class:`FunctionReward`: a plain Python callable — a verifier, unit tests, external feedback;
- :class:`JudgeReward`: an LLM judge through LiteLLM, scored from the log-probabilities of its
  one-token ``Yes`` / ``No`` verdict: ``p(Yes) / (p(Yes) + p(No))``;
- :class:`ClassifierReward`: a reward or process-reward model served by vLLM's ``/classify``
  pooling endpoint (the probability of its positive class).

Usage::

    reward = FunctionReward(lambda question, solution: "42" in solution)
    graph = create_mcts(endpoint, reward=reward)

**The judge's context window.** A tree path's solution grows with every step, and the judge
prompt repeats it whole, so a long path could make the judge prompt overflow the judge
server's window, which vLLM refuses (a 400 that would end the tree search). On the token route
(the endpoint's ``continuation`` is ``tokens``, or ``auto`` on a server with ``/tokenize``)
:class:`JudgeReward` renders its chat through the server's chat template (``/tokenize``, as
every program renders its prompt) and reads the window (:func:`~._context.context_limit`);
when the prompt and its one verdict token would not fit, it shows the judge the *end* of the
solution — where the latest steps and the final answer are — after :data:`ELISION`, cut so
that the rendered prompt fits (a few ``/tokenize`` round trips, never a generation). The
reward's ``prompt_tokens`` are the server's count of the prompt actually sent. A question
that cannot fit even with the solution cut to the marker alone raises
:class:`~dynasor_graph.ServerRefused` before anything is sent. On the text route (chat
completions only, no token counts) and on a server that reports no window, the prompt is sent
whole, as before, and a server refusal raises its ``ServerRefused``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._context import context_limit, no_room
from ._endpoint import Endpoint, Message
from ._errors import ServerRefused
from ._http import post_json
from ._text_route import complete
from ._thinking import detect
from ._token_route import complete_tokens, render_chat, tokenize

JUDGE_PROMPT = (
    "Question:\n{question}\n\nProposed solution (it may be unfinished):\n{solution}\n\n"
    "Is this solution correct so far? Answer Yes or No."
)

ELISION = "[...] "
"""What stands for the start of a solution cut to fit the judge's context window."""

_FIT_TRIES = 8  # /tokenize renders spent looking for the longest tail that fits


@dataclass(frozen=True)
class Reward:
    """A score in [0, 1] and what computing it cost, from the reward server's ``usage``."""

    score: float
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0 or math.isnan(self.score):
            raise ValueError(f"a reward must lie in [0, 1], got {self.score}")


@runtime_checkable
class RewardModel(Protocol):
    """Scores a solution of ``question`` (the chat so far) that has reached ``solution``."""

    async def score(self, chat: list[Message], solution: str) -> Reward: ...


def question_of(chat: list[Message]) -> str:
    """The last user message's text: what the solution answers."""
    return next((str(m["content"]) for m in reversed(chat) if m["role"] == "user"), "")


class FunctionReward:
    """A reward from ``fn(question, solution)`` returning a bool or a float in [0, 1]
    (sync or async); costs no tokens. The callable is trusted code, never model output."""

    def __init__(
        self, fn: Callable[[str, str], float | bool | Awaitable[float | bool]]
    ) -> None:
        self._fn = fn

    async def score(self, chat: list[Message], solution: str) -> Reward:
        value = self._fn(question_of(chat), solution)
        if inspect.isawaitable(value):
            value = await value
        return Reward(float(value))


class JudgeReward:
    """An LLM judge: one greedy token with its top log-probabilities; the reward is the
    probability mass on ``Yes`` against ``No`` (0.5 when the judge names neither).

    On the token route the judge prompt is sized to the judge server's context window: a
    solution too long to fit is shown from :data:`ELISION` on, its end kept (see the module
    doc). On the text route, which counts no tokens before sending, it is sent whole, and a
    server refusal raises its :class:`~dynasor_graph.ServerRefused`.

    On a reasoning model (a thinking family whose thinking is not switched off) the token
    route closes an empty thinking the family's way before the verdict token, sent as ids to
    ``/v1/completions``: else the one token would be the first word of the judge's thinking.
    """

    def __init__(self, endpoint: Endpoint, prompt: str = JUDGE_PROMPT, top_logprobs: int = 20):
        if "{question}" not in prompt or "{solution}" not in prompt:
            raise ValueError("the judge prompt needs {question} and {solution} placeholders")
        self._endpoint, self._prompt, self._top = endpoint, prompt, top_logprobs

    def _chat(self, question: str, solution: str) -> list[Message]:
        return [{"role": "user", "content": self._prompt.format(question=question,
                                                                solution=solution)}]

    async def score(self, chat: list[Message], solution: str) -> Reward:
        judged, ids, closed = await self._fitted(question_of(chat), solution or "(empty)")
        if ids is not None and closed:  # a thinking family: the verdict follows the closing
            reply = await complete_tokens(self._endpoint, [*ids, *closed], max_tokens=1,
                                          temperature=0.0, top_p=1.0, top_logprobs=self._top)
        else:
            reply = await complete(self._endpoint, judged, "", max_tokens=1, temperature=0.0,
                                   top_p=1.0, top_logprobs=self._top)
        return Reward(
            verdict(reply.top_logprobs[0] if reply.top_logprobs else {}, reply.text),
            reply.prompt_tokens,
            reply.completion_tokens,
        )

    async def _closed_thinking(self) -> tuple[int, ...]:
        """For a thinking family whose thinking is not switched off, the ids of an empty
        thinking, closed as the family's model closes it (R1's ``\\n\\n</think>\\n\\n``
        after the prompt's ``<think>``; Qwen3's whole ``<think>\\n\\n</think>\\n\\n``):
        else the one verdict token would be the thinking's first word. ``()`` otherwise.
        Token route only (it tokenizes)."""
        endpoint = self._endpoint
        if endpoint.thinking is False:
            return ()
        fmt = await detect(endpoint)
        if fmt.plain:
            return ()
        before, _ = fmt.closing(fmt.open)  # the closing of an opened thinking
        return await tokenize(endpoint, ("" if fmt.prompt_opens else fmt.open) + before)

    async def _fitted(self, question: str, solution: str
                      ) -> tuple[list[Message], list[int] | None, tuple[int, ...]]:
        """The judge's chat, and on the token route its rendered ids and the closed thinking
        (:meth:`_closed_thinking`), its solution cut to the longest tail (after
        :data:`ELISION`) with which the rendered prompt, the closing and the verdict token fit
        the window; whole on the text route or without a known window."""
        whole = self._chat(question, solution)
        ids = await render_chat(self._endpoint, whole)  # its answer carries the window
        if ids is None:  # the text route: nothing to size, nothing to close
            return whole, None, ()
        closed = await self._closed_thinking()
        reserve = len(closed)
        limit = await context_limit(self._endpoint)
        if limit is None or len(ids) + reserve < limit:  # + 1 token fits
            return whole, ids, closed
        limit -= reserve
        floor = self._chat(question, ELISION)
        floor_ids = await self._render(floor)
        base = len(floor_ids)
        if base >= limit:
            raise no_room(self._endpoint, base + reserve, 0, limit + reserve,
                          what="the judge prompt with the solution cut to its elision marker")
        keep, length = len(solution), len(ids)
        for _ in range(_FIT_TRIES):
            # the tail's tokens scale with its characters: cut what overflowed, at the
            # density the last render measured
            tail_tokens = max(length - base, 1)
            keep = min(keep - 1, keep * (limit - 1 - base) // tail_tokens)
            if keep <= 0:
                break
            cut = self._chat(question, ELISION + solution[-keep:])
            cut_ids = await self._render(cut)
            length = len(cut_ids)
            if length < limit:
                return cut, cut_ids, closed
        return floor, floor_ids, closed

    async def _render(self, judged: list[Message]) -> list[int]:
        """The judge chat's rendered prompt ids (the token route's ``/tokenize``)."""
        ids = await render_chat(self._endpoint, judged)
        if ids is None:  # the route was learned by the first render: cannot happen
            raise ServerRefused(f"{self._endpoint.server_root}/tokenize stopped answering",
                                api_base=self._endpoint.api_base)
        return ids


def verdict(top_logprobs: dict[str, float], text: str) -> float:
    """``p(Yes) / (p(Yes) + p(No))`` from one token's alternatives (case and spaces ignored);
    without either among them, 1.0 / 0.0 / 0.5 from the generated text."""
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in top_logprobs.items():
        word = token.strip().lower()
        if word in mass:
            mass[word] += math.exp(logprob)
    if mass["yes"] + mass["no"] > 0:
        return mass["yes"] / (mass["yes"] + mass["no"])
    word = text.strip().lower()
    return 1.0 if word.startswith("yes") else 0.0 if word.startswith("no") else 0.5


class ClassifierReward:
    """A reward model served by vLLM as a classifier (``--runner pooling``): ``POST /classify``
    with the question and solution, reward = ``probs[positive_index]``."""

    def __init__(self, endpoint: Endpoint, positive_index: int = -1,
                 template: str = "{question}\n\n{solution}") -> None:
        self._endpoint, self._index, self._template = endpoint, positive_index, template

    async def score(self, chat: list[Message], solution: str) -> Reward:
        text = self._template.format(question=question_of(chat), solution=solution)
        body: dict[str, Any] = {"model": self._endpoint.served_name, "input": [text]}
        payload = await post_json(self._endpoint, "/classify", body)
        try:
            probs = payload["data"][0]["probs"]
            score = float(probs[self._index])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServerRefused(
                f"{self._endpoint.server_root}/classify answered without probabilities: "
                f"{str(payload)[:300]}", api_base=self._endpoint.api_base) from None
        usage = payload.get("usage") or {}
        return Reward(score, int(usage.get("prompt_tokens", 0)), 0)
