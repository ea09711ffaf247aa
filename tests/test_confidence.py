"""Token confidence (DeepConf): read from a probe's answer tokens, joined to probe agreement by
``combine`` when ``min_probe_confidence`` is set, replayed exactly; real vLLM logprobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import trace

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._answers import answer_end
from dynasor_graph._endpoint import Completion
from dynasor_graph._probe import answer_confidence
from dynasor_graph.certaindex import (
    answer_entropy,
    cot_certaindex,
    probe_agreement,
    weighted_answer_entropy,
)
from dynasor_graph.cot import path_confidence
from dynasor_graph.eval import Trace, replay_traces
from dynasor_graph.eval._traces import TraceProbe
from dynasor_graph.sc import PathState, SCConfig, _vote, create_sc


def test_confidence_is_the_answer_tokens_geometric_mean() -> None:
    # "12" "}" " \\]": only the token before the closing brace is the answer
    reply = Completion(text="12} \\]", finish_reason="stop", prompt_tokens=5,
                       completion_tokens=3, token_offsets=(0, 2, 3),
                       token_logprobs=(-0.1, -0.2, -5.0), token_ids=(1, 2, 3))
    assert answer_confidence(reply) == pytest.approx(math.exp(-0.1))
    two = Completion(text="1 2}", finish_reason="stop", prompt_tokens=5, completion_tokens=3,
                     token_offsets=(0, 1, 3), token_logprobs=(-0.2, -0.4, -3.0),
                     token_ids=(1, 2, 3))
    assert answer_confidence(two) == pytest.approx(math.exp(-0.3))
    unfinished = Completion(text="12", finish_reason="length", prompt_tokens=5,
                            completion_tokens=1, token_offsets=(0,), token_logprobs=(-0.1,),
                            token_ids=(1,))
    assert answer_confidence(unfinished) == 0.0  # no answer: nothing to be sure of
    text_mode = Completion(text="12}", finish_reason="stop", prompt_tokens=5,
                           completion_tokens=2)
    assert answer_confidence(text_mode) is None


def test_cot_certaindex_joins_agreement_and_the_lowest_confidence() -> None:
    def probe(answer: str, confidence: float | None) -> dict[str, object]:
        return {"answer": answer, "confident": True, "confidence": confidence}

    window = [probe("5", 0.9), probe("5", 0.6), probe("5", 0.95)]
    assert cot_certaindex(window, 3) == probe_agreement(window, 3) == 1.0
    assert cot_certaindex(window, 3, 0.6) == 1.0  # every probe at least 0.6 sure
    assert cot_certaindex(window, 3, 0.8) == pytest.approx(0.6 / 0.8)  # one is not
    assert cot_certaindex([*window, probe("5", 0.85)], 2, 0.8) == 1.0  # only the last two
    assert cot_certaindex([probe("5", None), *window[1:]], 3, 0.5) == 0.0  # None counts as 0
    assert cot_certaindex(window[:2], 3, 0.5) == pytest.approx(2 / 3)  # too few probes
    with pytest.raises(ValueError, match="threshold must lie in"):
        cot_certaindex(window, 3, 1.5)


def test_replay_with_a_confidence_threshold() -> None:
    lines = [trace("a", "12", "12", "budget", 60, [("12", True, 2)] * 6),
             trace("b", "7", "7", "budget", 60, [("7", True, 2)] * 6)]
    for line, values in zip(lines, ([0.9, 0.4, 0.9, 0.9, 0.9, 0.9], [0.2] * 6), strict=True):
        for probe, value in zip(line["probes"], values, strict=True):
            probe["confidence"] = value
    traces = [Trace.model_validate(line) for line in lines]
    rows, _ = replay_traces(traces, ["cot:2@10", "cot:2@10+conf0.8", "cot:2@10+conf0.1"])
    stops = {(r["id"], r["method"]): r["reasoning_tokens"] for r in rows}
    assert stops["a", "cot:2@10"] == 20 and stops["b", "cot:2@10"] == 20
    assert stops["a", "cot:2@10+conf0.8"] == 40  # the 0.4 probe (at 20) blocks until 40
    assert stops["b", "cot:2@10+conf0.8"] == 60  # never sure enough: full reasoning
    assert stops["b", "cot:2@10+conf0.1"] == 20
    old = Trace.model_validate(trace("c", "1", "1", "budget", 60, [("1", True, 2)] * 6))
    with pytest.raises(ValueError, match="probes without token confidence"):
        replay_traces([old], ["cot:2@10+conf0.5"])


async def test_text_mode_cannot_use_a_confidence_threshold(
    scripted_endpoint: Endpoint, scripted: object
) -> None:
    graph = create_cot(scripted_endpoint, CoTConfig(chunk_size=4, max_tokens=8,
                                                    min_probe_confidence=0.5))
    with pytest.raises(ValueError, match="needs the probes' token log-probabilities"):
        await graph.ainvoke({"question": "q"})


async def test_confidence_from_real_vllm_logprobs_drives_the_stop(
    local_vllm: Endpoint, tmp_path: Path
) -> None:
    config = CoTConfig(chunk_size=16, max_tokens=48, certainty_threshold=1,
                       min_probe_confidence=0.3, seed=3)
    result = await create_cot(local_vllm, config).ainvoke(
        {"question": "Ann has 3 apples and gets 4 more. How many apples does Ann have?"})
    probes = result["probes"]
    assert probes, result
    for p in probes:  # read from the server's logprobs: a probability of the answer tokens
        confidence = p.get("confidence")
        assert confidence is not None and 0.0 <= confidence <= 1.0
        assert (confidence > 0) == (answer_end(p["text"]) not in (None, 0))
    # replaying the run's own probes with the same rule makes the same stop
    run = Trace(
        id="run", gold="7", answer=result["answer"], correct=result["answer"] == "7",
        stop_reason="finished" if result["stop_reason"] in ("finished", "answered") else "budget",
        reasoning_tokens=result["usage"]["reasoning_tokens"], reasoning_prompt_tokens=0,
        probes=[TraceProbe(tokens=p["tokens"], text=p["text"], answer=p["answer"],
                           confident=p["confident"], confidence=p.get("confidence"),
                           prompt_tokens=0, completion_tokens=0) for p in probes],
        settings={"model": local_vllm.model, "api_base": local_vllm.api_base,
                  "chunk_size": 16, "max_tokens": 48}, question="q")
    rows, _ = replay_traces([run], ["cot:1@16+conf0.3"])
    replayed = next(r for r in rows if r["method"] == "cot:1@16+conf0.3")
    assert replayed["reasoning_tokens"] == result["usage"]["reasoning_tokens"]
    assert (replayed["stop_reason"] == "certain") == (result["stop_reason"] == "certain")


def test_weighted_answer_entropy() -> None:
    answers = ["5", "5", "7", "7"]
    assert weighted_answer_entropy(answers, [1, 1, 1, 1]) == answer_entropy(answers)
    certaindex, majority = weighted_answer_entropy(answers, [0.9, 0.8, 0.1, 0.1])
    shares = [1.7 / 1.9, 0.2 / 1.9]
    assert majority == "5"
    assert certaindex == pytest.approx(1 + sum(s * math.log(s) for s in shares) / math.log(4))
    assert weighted_answer_entropy(["5", "7"], [0.1, 0.3])[1] == "7"  # weight, not count
    assert weighted_answer_entropy(["5"], [0.0]) == (0.0, "5")
    with pytest.raises(ValueError, match="one non-negative weight per answer"):
        weighted_answer_entropy(answers, [1, 1])


def path(answer: str, mean_logprob: float | None) -> PathState:
    state = PathState(answer=answer, decision="exit")
    if mean_logprob is not None:
        state.update(logprob_sum=10 * mean_logprob, logprob_tokens=10)
    return state


def test_sc_votes_weighted_and_filtered() -> None:
    paths = [path("5", -2.0), path("5", -2.0), path("7", -0.1)]  # 0.135, 0.135, 0.905
    assert _vote(paths, SCConfig())[1] == "5"  # one path, one vote
    assert _vote(paths, SCConfig(vote="weighted"))[1] == "7"
    weighted = _vote(paths, SCConfig(vote="weighted"))[0]
    assert weighted > answer_entropy(["5", "5", "7"])[0]  # the mass sits on "7"
    # filtered: the most confident ceil(0.5 * 3) = 2 paths vote
    assert _vote(paths, SCConfig(vote="filtered", keep_share=0.5)) == weighted_answer_entropy(
        ["5", "7"], [math.exp(-2.0), math.exp(-0.1)])
    with pytest.raises(ValueError, match="needs the paths' token log-probabilities"):
        _vote([path("5", None)], SCConfig(vote="weighted"))


async def test_sc_weighted_vote_on_real_vllm(local_vllm: Endpoint) -> None:
    config = SCConfig(path=CoTConfig(chunk_size=16, max_tokens=32, seed=5), width=2,
                      max_width=2, vote="weighted", threshold=0.99)
    result = await create_sc(local_vllm, config).ainvoke({"question": "What is 2 + 3?"})
    finished = [p for p in result["paths"] if p.get("decision") == "exit"]
    weights = [path_confidence(p) for p in finished]
    assert all(w is not None and 0 < w <= 1 for w in weights), weights
    certaindex, majority = weighted_answer_entropy([p.get("answer", "") for p in finished],
                                                   [float(w or 0) for w in weights])
    assert (result["answer"], result["certaindex"]) == (majority, pytest.approx(certaindex))
