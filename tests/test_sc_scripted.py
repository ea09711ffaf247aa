"""Self-consistency against the scripted server: each path (its own seed) follows its own
script, so exits, widening, budgets and accounting are exact whatever the request order."""

from __future__ import annotations

from typing import Any

from conftest import assert_usage_matches
from scripted_server import Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, SCConfig, create_graph, create_sc

SEED = 100


def path_script(answer: str, length: int) -> Script:
    """A path that reasons ``length`` tokens, ending with its boxed answer, and whose every
    probe gives that answer confidently."""
    words = [f"w{i} " for i in range(length - 1)] + [f"\\boxed{{{answer}}} "]
    return Script(reasoning=words, probes=[f"{answer}}}"])


def endless_script(answer: str) -> Script:
    return Script(reasoning=[f"e{i} " for i in range(100_000)], probes=[f"{answer}}}"])


def config(path_threshold: int = 3, **overrides: Any) -> SCConfig:
    path = CoTConfig(chunk_size=4, certainty_threshold=path_threshold, max_tokens=64, seed=SEED,
                     probe_max_tokens=4)
    return SCConfig.model_validate({"path": path, **overrides})


async def run(endpoint: Endpoint, cfg: SCConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The output and the sequence of ``score`` updates (certaindex, decision)."""
    graph = create_sc(endpoint, cfg)
    scores: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    async for mode, chunk in graph.astream({"question": "q"}, stream_mode=["updates", "values"]):
        if mode == "updates" and "score" in chunk:
            scores.append(chunk["score"])
        elif mode == "values":
            result = chunk
    return result, scores


def seeds_asked(script: Script) -> set[int]:
    return {e["body"]["seed"] for e in script.log}


async def test_exits_once_the_first_paths_agree_without_widening(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + i: path_script("7", 6) for i in range(4)}
    result, scores = await run(scripted_endpoint, config(width=4, max_width=8))
    assert (result["answer"], result["certaindex"], result["stop_reason"]) == ("7", 1.0, "certain")
    assert len(result["paths"]) == 4 and seeds_asked(scripted.script) == {100, 101, 102, 103}
    assert [s["decision"] for s in scores] == ["continue", "exit"]  # 6 tokens = two chunks
    assert all(p["stop_reason"] == "finished" for p in result["paths"])
    assert_usage_matches(result, scripted.script)
    assert result["budget_left"] == 16384 - result["usage"]["reasoning_tokens"] - result[
        "usage"]["probe_completion_tokens"]


async def test_cuts_a_path_still_reasoning_once_enough_paths_agree(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED: path_script("7", 3), SEED + 1: path_script("7", 3),
                             SEED + 2: endless_script("9")}
    cfg = config(width=3, max_width=3, detect_at=2)
    result, scores = await run(scripted_endpoint, cfg)
    assert (result["answer"], result["stop_reason"]) == ("7", "certain")
    assert [s["decision"] for s in scores] == ["exit"]
    long_path = result["paths"][2]
    assert long_path["decision"] == "continue" and long_path["usage"]["reasoning_tokens"] == 4
    assert_usage_matches(result, scripted.script)


async def test_widens_on_disagreement_and_stops_at_the_maximum_width(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + i: path_script(str(i), 3) for i in range(8)}
    result, scores = await run(scripted_endpoint, config(width=4, max_width=8, widen_by=3))
    assert [s["decision"] for s in scores] == ["widen", "widen", "exit"]
    assert len(result["paths"]) == 8 and seeds_asked(scripted.script) == set(range(100, 108))
    assert result["stop_reason"] == "width" and result["certaindex"] == 0.0
    assert result["answer"] == "0"  # all differ: the first class seen wins the tie
    assert_usage_matches(result, scripted.script)


async def test_widening_stops_once_the_answers_settle(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    answers = ["1", "2", "3", "3", "3", "3", "3", "3"]
    scripted.script.seeds = {SEED + i: path_script(a, 3) for i, a in enumerate(answers)}
    result, scores = await run(scripted_endpoint,
                               config(width=4, max_width=8, widen_by=2, threshold=0.5))
    # 1 - H/ln n: 4 answers {1,2,3,3} → 0.25; 6 answers {1,2,3,3,3,3} → 0.516 ≥ 0.5
    assert [s["decision"] for s in scores] == ["widen", "exit"]
    assert [round(s["certaindex"], 3) for s in scores] == [0.25, 0.516]
    assert (result["answer"], result["stop_reason"], len(result["paths"])) == ("3", "certain", 6)


async def test_total_budget_holds_and_paths_answer_with_their_last_probe(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED + i: endless_script(str(i % 2)) for i in range(4)}
    cfg = config(path_threshold=64, width=2, max_width=4, token_budget=30)
    result, _ = await run(scripted_endpoint, cfg)
    usage = result["usage"]
    assert usage["reasoning_tokens"] + usage["probe_completion_tokens"] <= 30
    assert result["budget_left"] == 30 - usage["reasoning_tokens"] - usage[
        "probe_completion_tokens"] >= 0
    assert {p["stop_reason"] for p in result["paths"]} == {"budget"}
    assert {p["answer"] for p in result["paths"]} == {"0", "1"}
    assert result["stop_reason"] in {"budget", "width"}
    assert_usage_matches(result, scripted.script)


async def test_fixed_n_majority_is_the_same_graph_without_early_exit(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.seeds = {SEED: path_script("7", 3), SEED + 1: path_script("7", 3),
                             SEED + 2: path_script("8", 9)}
    graph = create_graph("sc", scripted_endpoint, config(width=3, max_width=3, detect_at=3))
    result = await graph.ainvoke({"question": "q"})
    assert (result["answer"], result["stop_reason"]) == ("7", "width")  # 0.42 < 0.7
    assert all(p["decision"] == "exit" for p in result["paths"])  # all three ran to the end
    assert result["paths"][2]["usage"]["reasoning_tokens"] == 9
