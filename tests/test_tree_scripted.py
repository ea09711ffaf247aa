"""MCTS and Rebase against the scripted server: child ``k`` is generated with seed
``SEED + k`` and follows its own script, and a Python reward scores each path by the child that
wrote its last step, so the searches must walk to exactly the expected nodes."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from scripted_server import Script, ScriptedServer

from dynasor_graph import (
    Endpoint,
    MCTSConfig,
    RebaseConfig,
    ServerBusy,
    ServerRefused,
    create_mcts,
    create_rebase,
)
from dynasor_graph.rewards import ClassifierReward, FunctionReward, JudgeReward, Reward, verdict

SEED = 200


def child(k: int, ends_at: int | None = None, answer: str = "5") -> Script:
    """Child ``k``'s stream: tokens ``s{k}_j``; with ``ends_at`` the model ends its turn there,
    its last token a boxed answer."""
    if ends_at is None:
        return Script(reasoning=[f"s{k}_{j} " for j in range(10_000)])
    return Script(reasoning=[f"s{k}_{j} " for j in range(ends_at - 1)] + [f"\\boxed{{{answer}}} "])


def by_last_step(rewards: dict[int, float]) -> FunctionReward:
    """Reward a path by the child that wrote its last step."""
    return FunctionReward(lambda _q, s: rewards[int(re.findall(r"s(\d+)_", s)[-1])])


async def run(graph: Any, node: str) -> tuple[dict[str, Any], list[str]]:
    """The output and the decisions made by ``node`` in order."""
    decisions: list[str] = []
    result: dict[str, Any] = {}
    async for mode, chunk in graph.astream({"question": "q"}, stream_mode=["updates", "values"]):
        if mode == "updates" and node in chunk:
            decisions.append(chunk[node]["decision"])
        elif mode == "values":
            result = chunk
    return result, decisions


def parents(result: dict[str, Any]) -> dict[int, int | None]:
    return {n["id"]: n["parent"] for n in result["nodes"]}


def assert_usage_matches_server(result: dict[str, Any], script: Script) -> None:
    usage = result["usage"]
    assert usage["reasoning_tokens"] == script.total("reason", "completion_tokens")
    assert usage["reasoning_prompt_tokens"] == script.total("reason", "prompt_tokens")
    assert sum(n["usage"]["reasoning_tokens"] for n in result["nodes"]) == usage[
        "reasoning_tokens"]


async def test_mcts_goes_deeper_on_the_best_child_and_exits_on_a_high_reward(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + 1: child(1), SEED + 2: child(2),
                             SEED + 3: child(3, ends_at=6), SEED + 4: child(4)}
    config = MCTSConfig(width=2, max_width=3, chunk_size=3, max_depth=4, detect_at=1,
                        reward_threshold=0.9, seed=SEED)
    graph = create_mcts(scripted_endpoint, by_last_step({1: .8, 2: .3, 3: .95, 4: .2}), config)
    result, decisions = await run(graph, "backpropagate")
    assert decisions == ["continue", "exit"]
    assert parents(result) == {0: None, 1: 0, 2: 0, 3: 1, 4: 1}
    assert (result["answer"], result["stop_reason"], result["certaindex"]) == ("5", "certain", 1.0)
    visits = {n["id"]: (n["visits"], round(n["value"], 2)) for n in result["nodes"]}
    assert visits[0] == (4, 2.25) and visits[1] == (3, 1.95)  # backpropagated rewards
    assert_usage_matches_server(result, scripted.script)


async def test_mcts_widens_where_all_children_score_low(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + k: child(k) for k in (1, 2, 3, 5)} | {
        SEED + 4: child(4, ends_at=6)}
    config = MCTSConfig(width=2, max_width=3, chunk_size=3, max_depth=4, detect_at=1,
                        reward_threshold=0.9, seed=SEED)
    rewards = {1: .1, 2: .2, 3: .7, 4: .95, 5: .3}
    result, decisions = await run(create_mcts(scripted_endpoint, by_last_step(rewards), config),
                                  "backpropagate")
    assert decisions == ["widen", "continue", "exit"]
    assert parents(result) == {0: None, 1: 0, 2: 0, 3: 0, 4: 3, 5: 3}
    assert result["answer"] == "5"


async def test_mcts_never_exceeds_its_token_budget(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + k: child(k) for k in range(1, 40)}
    config = MCTSConfig(width=2, max_width=2, chunk_size=3, max_depth=8, token_budget=10,
                        seed=SEED)
    result, decisions = await run(
        create_mcts(scripted_endpoint, FunctionReward(lambda _q, _s: 0.6), config),
        "backpropagate")
    assert result["stop_reason"] == "budget" and decisions[-1] == "exit"
    assert result["usage"]["reasoning_tokens"] == 10 and result["budget_left"] == 0
    assert_usage_matches_server(result, scripted.script)


async def test_mcts_stops_when_the_tree_is_exhausted(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + k: child(k, ends_at=2, answer=str(k)) for k in (1, 2)}
    config = MCTSConfig(width=2, max_width=2, chunk_size=3, seed=SEED)
    result, _ = await run(
        create_mcts(scripted_endpoint, by_last_step({1: .1, 2: .2}), config), "backpropagate")
    assert result["stop_reason"] == "exhausted"
    assert result["answer"] == "2"  # reward-weighted vote over the finished paths


async def test_rebase_shares_its_beam_by_softmax_reward(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + k: child(k) for k in (1, 2, 3, 4, 7, 8)} | {
        SEED + 5: child(5, ends_at=6), SEED + 6: child(6, ends_at=6)}
    config = RebaseConfig(width=4, max_width=8, chunk_size=3, max_depth=4, detect_at=2,
                          reward_threshold=0.9, softmax_temperature=0.2, widen_below=0.0,
                          seed=SEED)
    rewards = {1: .9, 2: .1, 3: .1, 4: .1, 5: .95, 6: .95, 7: .5, 8: .5}
    result, decisions = await run(
        create_rebase(scripted_endpoint, by_last_step(rewards), config), "rescore")
    # softmax(r / 0.2) gives node 1 a weight of 0.948: all four children of step two are its
    assert decisions == ["continue", "exit"]
    assert parents(result) == {0: None, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1, 8: 1}
    assert (result["answer"], result["stop_reason"]) == ("5", "certain")
    assert_usage_matches_server(result, scripted.script)


async def test_rebase_widens_its_beam_while_rewards_are_spread(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + k: child(k) for k in range(1, 5)} | {
        SEED + k: child(k, ends_at=6) for k in range(5, 13)}
    config = RebaseConfig(width=4, max_width=8, widen_by=4, chunk_size=3, max_depth=4,
                          detect_at=2, reward_threshold=0.9, widen_below=0.5, seed=SEED)
    rewards = {k: .5 for k in range(1, 5)} | {k: .95 for k in range(5, 13)}
    result, decisions = await run(
        create_rebase(scripted_endpoint, by_last_step(rewards), config), "rescore")
    assert decisions == ["widen", "exit"]
    step_two = [n for n in result["nodes"] if n["depth"] == 2]
    assert len(step_two) == 8  # the widened beam: two children for each of four equal nodes
    assert sorted(parents(result)[n["id"]] or 0 for n in step_two) == [1, 1, 2, 2, 3, 3, 4, 4]


class JudgeScript:
    """Answers a judge with one token and its top log-probabilities."""

    def __init__(self, alternatives: dict[str, float], text: str = "Yes") -> None:
        self.alternatives, self.text, self.log = alternatives, text, list[dict[str, Any]]()

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.log.append(body)
        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in self.alternatives.items()]
        return 200, {
            "id": "judge", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": self.text},
                         "logprobs": {"content": [{"token": self.text, "logprob": -0.1,
                                                   "bytes": None, "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
        }


async def test_judge_reward_reads_yes_against_no_from_the_logprobs(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    judge = JudgeScript({"Yes": math.log(0.6), " no": math.log(0.2), "Maybe": math.log(0.1)})
    scripted.script = judge
    reward = await JudgeReward(scripted_endpoint).score(
        [{"role": "user", "content": "What is 2+2?"}], "2+2 = \\boxed{4}")
    assert reward.score == pytest.approx(0.75)
    assert (reward.prompt_tokens, reward.completion_tokens) == (40, 1)
    body = judge.log[0]
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 20, 1)
    assert "What is 2+2?" in body["messages"][0]["content"]
    assert "\\boxed{4}" in body["messages"][0]["content"]


def test_verdict_falls_back_to_the_text_when_neither_word_is_among_the_alternatives() -> None:
    assert verdict({"Maybe": -0.1}, "No") == 0.0
    assert verdict({}, "yes") == 1.0
    assert verdict({}, "unsure") == 0.5
    assert verdict({"YES": math.log(0.5), "No": math.log(0.5)}, "") == 0.5


class ClassifyScript:
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status, self.payload, self.log = status, payload, list[dict[str, Any]]()

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 404, {"message": "not a chat model"}

    def classify(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.log.append(body)
        return self.status, self.payload


async def test_classifier_reward_reads_the_positive_class_of_vllms_classify_endpoint(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    script = ClassifyScript(200, {"data": [{"index": 0, "label": "good", "probs": [0.3, 0.7],
                                            "num_classes": 2}],
                                  "usage": {"prompt_tokens": 12, "total_tokens": 12}})
    scripted.script = script
    reward = await ClassifierReward(scripted_endpoint).score(
        [{"role": "user", "content": "Q?"}], "A.")
    assert reward == Reward(0.7, 12, 0)
    assert script.log == [{"model": "scripted", "input": ["Q?\n\nA."]}]


async def test_classifier_reward_errors_are_clear(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    chat = [{"role": "user", "content": "Q?"}]
    scripted.script = ClassifyScript(500, {"message": "engine dead"})
    with pytest.raises(ServerBusy, match="engine dead"):
        await ClassifierReward(scripted_endpoint).score(chat, "A.")
    scripted.script = ClassifyScript(400, {"message": "model is not a classifier"})
    with pytest.raises(ServerRefused, match="not a classifier"):
        await ClassifierReward(scripted_endpoint).score(chat, "A.")


def test_rewards_outside_the_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Reward(1.5)
