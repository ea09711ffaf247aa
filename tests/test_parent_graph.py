"""Dynasor-CoT as a node of a parent graph hands back its answer and usage exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

from scripted_server import ScriptedServer

from dynasor_graph import CoTConfig, Endpoint

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from parent_graph import build_homework_graph


async def test_parent_graph_gets_answers_and_summed_usage(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    # question 1 settles on 12 after 2 probes; question 2 on 7 after 2 more
    scripted.script.probes = ["12}", "12}", "7}", "7}"]
    graph = build_homework_graph(scripted_endpoint, CoTConfig(chunk_size=5, certainty_threshold=2))
    result = await graph.ainvoke({"questions": ["q one", "q two"]})
    assert [(a["question"], a["answer"], a["certaindex"], a["stop_reason"])
            for a in result["answers"]] == [("q one", "12", 1.0, "certain"),
                                            ("q two", "7", 1.0, "certain")]
    script = scripted.script
    assert result["usage"] == {  # summed once per run, not re-added from the subgraph state
        "reasoning_tokens": 20,
        "reasoning_prompt_tokens": script.total("reason", "prompt_tokens"),
        "probe_prompt_tokens": script.total("probe", "prompt_tokens"),
        "probe_completion_tokens": 4,
        "reward_prompt_tokens": 0,
        "reward_completion_tokens": 0,
        "answer_tokens": 0,
        "discarded_tokens": 0,
    }
    asked = [e["body"]["messages"][0]["content"] for e in script.log if e["kind"] == "reason"]
    assert asked == ["q one", "q one", "q two", "q two"]
