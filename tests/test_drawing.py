"""The graph's drawing, with its labelled exit / continue edges, is a reviewed snapshot."""

from __future__ import annotations

from syrupy.assertion import SnapshotAssertion

from dynasor_graph import Endpoint, create_dynasor_cot


def test_cot_drawing(snapshot: SnapshotAssertion) -> None:
    graph = create_dynasor_cot(Endpoint(model="m", api_base="http://127.0.0.1:9/v1"))
    drawing = graph.get_graph().draw_mermaid(with_styles=False)
    assert "probe -. &nbsp;exit&nbsp; .-> finish;" in drawing
    assert "probe -. &nbsp;continue&nbsp; .-> reason;" in drawing
    assert drawing == snapshot
