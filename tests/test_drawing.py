"""The graphs' drawings, with their labelled exit / widen / continue edges, are reviewed
snapshots."""

from __future__ import annotations

import pytest
from syrupy.assertion import SnapshotAssertion

from dynasor_graph import Algorithm, Endpoint, create_cot, create_graph
from dynasor_graph.rewards import FunctionReward

ENDPOINT = Endpoint(model="m", api_base="http://127.0.0.1:9/v1")
REWARD = FunctionReward(lambda _question, _solution: 1.0)


def test_cot_drawing(snapshot: SnapshotAssertion) -> None:
    graph = create_cot(ENDPOINT)
    drawing = graph.get_graph().draw_mermaid(with_styles=False)
    assert "probe -. &nbsp;exit&nbsp; .-> finish;" in drawing
    assert "probe -. &nbsp;continue&nbsp; .-> reason;" in drawing
    assert drawing == snapshot


def drawing_of(algorithm: Algorithm) -> str:
    graph = create_graph(algorithm, ENDPOINT, reward=None if algorithm == "sc" else REWARD)
    return graph.get_graph().draw_mermaid(with_styles=False)


@pytest.mark.parametrize(
    ("algorithm", "edges"),
    [
        ("sc", ["score -. &nbsp;exit&nbsp; .-> finish;",
                "score -. &nbsp;widen&nbsp; .-> add_paths;",
                "score -. &nbsp;continue&nbsp; .-> step;"]),
        ("mcts", ["backpropagate -. &nbsp;exit&nbsp; .-> finish;",
                  "backpropagate -. &nbsp;widen&nbsp; .-> expand;",
                  "backpropagate -. &nbsp;continue&nbsp; .-> select;"]),
        ("rebase", ["rescore -. &nbsp;exit&nbsp; .-> finish;",
                    "rescore -. &nbsp;widen&nbsp; .-> widen_beam;",
                    "rescore -. &nbsp;continue&nbsp; .-> expand;"]),
    ],
)
def test_multi_path_drawings_label_exit_widen_continue(
    algorithm: Algorithm, edges: list[str], snapshot: SnapshotAssertion
) -> None:
    drawing = drawing_of(algorithm)
    for edge in edges:
        assert edge in drawing
    assert drawing == snapshot
