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
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._endpoint import Endpoint, Message
from ._errors import ServerRefused
from ._http import post_json
from ._text_route import complete

JUDGE_PROMPT = (
    "Question:\n{question}\n\nProposed solution (it may be unfinished):\n{solution}\n\n"
    "Is this solution correct so far? Answer Yes or No."
)


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
    probability mass on ``Yes`` against ``No`` (0.5 when the judge names neither)."""

    def __init__(self, endpoint: Endpoint, prompt: str = JUDGE_PROMPT, top_logprobs: int = 20):
        if "{question}" not in prompt or "{solution}" not in prompt:
            raise ValueError("the judge prompt needs {question} and {solution} placeholders")
        self._endpoint, self._prompt, self._top = endpoint, prompt, top_logprobs

    async def score(self, chat: list[Message], solution: str) -> Reward:
        content = self._prompt.format(question=question_of(chat), solution=solution or "(empty)")
        reply = await complete(
            self._endpoint, [{"role": "user", "content": content}], "", max_tokens=1,
            temperature=0.0, top_p=1.0, top_logprobs=self._top,
        )
        return Reward(
            verdict(reply.top_logprobs[0] if reply.top_logprobs else {}, reply.text),
            reply.prompt_tokens,
            reply.completion_tokens,
        )


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
