"""The context window as a budget, on the scripted token servers (which refuse, as vLLM does, a
request whose prompt plus ``max_tokens`` passes ``max_model_len``): every algorithm sizes its
requests to fit exactly up to the window, then stops with ``context``, the last probe's answer
and the server's own counts; nothing sent ever passes the window."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import assert_usage_matches, rendered_length, run_cli, suffix_length
from langgraph.store.memory import InMemoryStore
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import (
    CoTConfig,
    Endpoint,
    MCTSConfig,
    RebaseConfig,
    SCConfig,
    ServerRefused,
    create_cot,
    create_mcts,
    create_rebase,
    create_sc,
)
from dynasor_graph._context import _LIMITS
from dynasor_graph.certaindex import weighted_majority
from dynasor_graph.rewards import FunctionReward

PROBE = 3  # probe_max_tokens in these tests


@pytest.fixture
def fresh_limits() -> Iterator[None]:
    """No window cached before or after: an earlier or later test's server may have the port."""
    _LIMITS.clear()
    yield
    _LIMITS.clear()


def token_endpoint(scripted: ScriptedServer, client: str = "litellm") -> Endpoint:
    scripted.token_api = True
    return Endpoint(model=SERVED_NAME, api_base=scripted.api_base, timeout_s=10,
                    continuation="tokens", client=client, max_retries=0)


def window(endpoint: Endpoint, reasoning: int) -> int:
    """A ``max_model_len`` that holds the question "q", ``reasoning`` generated tokens, then
    one probe (suffix and ``PROBE`` tokens)."""
    return rendered_length(endpoint, "q") + reasoning + suffix_length(endpoint) + PROBE


def sent(scripted: ScriptedServer) -> list[tuple[int, int]]:
    """Each generation request's (prompt tokens, max_tokens), in order."""
    return [(len(r["body"]["prompt"][0]), r["body"]["max_tokens"])
            for r in scripted.requests_to("/v1/completions")]


@pytest.mark.parametrize(("room", "chunks"), [(1, [1]), (8, [4, 4]), (9, [4, 4, 1]),
                                              (10, [4, 4, 2])])
@pytest.mark.parametrize(("client", "stored"), [("litellm", False), ("openai", False),
                                               ("litellm", True)])
async def test_cot_reasons_up_to_the_window_then_stops_with_the_last_probe(
    scripted: ScriptedServer, client: str, stored: bool, room: int, chunks: list[int]
) -> None:
    # stored: the reasoning log in a LangGraph store, not the state (the same requests)
    endpoint = token_endpoint(scripted, client)
    limit = scripted.script.max_model_len = window(endpoint, room)
    scripted.script.probes = ["1}", "2}", "3}", "4}"]  # never agree: only the window stops it
    config = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=1024,
                       probe_max_tokens=PROBE)
    graph = create_cot(endpoint, config, store=InMemoryStore() if stored else None)
    result = await graph.ainvoke({"question": "q"})
    assert [e["kind"] for e in scripted.script.log] == ["reason", "probe"] * len(chunks)
    reasons = [e["body"]["max_tokens"] for e in scripted.script.log if e["kind"] == "reason"]
    assert reasons == chunks  # the last chunk cut to what the window holds with its probe
    requests = sent(scripted)
    assert all(prompt + wanted <= limit for prompt, wanted in requests)
    assert sum(requests[-1]) == limit  # the last probe fills the window exactly
    assert (result["stop_reason"], result["decision"]) == ("context", "exit")
    assert result["answer"] == f"{len(chunks)}"  # the last probe's
    assert [p["tokens"] for p in result["probes"]] == [sum(chunks[:i + 1])
                                                       for i in range(len(chunks))]
    assert result["response"].endswith(f"\\boxed{{{len(chunks)}}} \\]")
    assert_usage_matches(result, scripted.script)
    assert result["usage"]["reasoning_tokens"] == room


async def test_the_window_is_learned_from_tokenize_without_another_request(
    scripted: ScriptedServer,
) -> None:
    endpoint = token_endpoint(scripted)
    scripted.script.max_model_len = window(endpoint, 6)
    config = CoTConfig(chunk_size=4, max_tokens=1024, probe_max_tokens=PROBE)
    result = await create_cot(endpoint, config).ainvoke({"question": "q"})
    assert result["stop_reason"] == "context"
    assert scripted.requests_to("/models") == []


async def test_without_it_in_tokenize_the_window_is_read_once_from_v1_models(
    scripted: ScriptedServer, fresh_limits: None,
) -> None:
    endpoint = token_endpoint(scripted)
    scripted.script.max_model_len = window(endpoint, 6)
    scripted.script.tokenize_reports_limit = False
    config = CoTConfig(chunk_size=4, max_tokens=1024, probe_max_tokens=PROBE)
    for _ in range(2):
        result = await create_cot(endpoint, config).ainvoke({"question": "q"})
        assert (result["stop_reason"], result["usage"]["reasoning_tokens"]) == ("context", 6)
    assert len(scripted.requests_to("/models")) == 1  # cached for the server's model


async def test_a_server_that_reports_no_window_is_sent_what_it_was_before(
    scripted: ScriptedServer, fresh_limits: None,
) -> None:
    endpoint = token_endpoint(scripted)
    scripted.script.tokenize_reports_limit = scripted.script.models_report_limit = False
    scripted.script.max_model_len = window(endpoint, 6)  # enforced, but unknown to the client
    config = CoTConfig(chunk_size=4, max_tokens=1024, probe_max_tokens=PROBE)
    with pytest.raises(ServerRefused, match="maximum context length is"):
        await create_cot(endpoint, config).ainvoke({"question": "q"})
    assert len(scripted.requests_to("/models")) == 1
    assert [wanted for _, wanted in sent(scripted)] == [4, 3, 4, 3]  # the second probe: 400


async def test_a_malformed_window_is_a_clear_refusal(scripted: ScriptedServer) -> None:
    endpoint = token_endpoint(scripted)
    scripted.script.max_model_len = 0
    with pytest.raises(ServerRefused, match="max_model_len=0, not a positive number"):
        await create_cot(endpoint, CoTConfig()).ainvoke({"question": "q"})
    assert sent(scripted) == []


async def test_a_text_mode_run_knows_no_window(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    scripted.script.max_model_len = 10  # the chat route does not enforce it, nor read it
    scripted.script.probes = ["1}", "2}", "3}"]
    config = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=12,
                       probe_max_tokens=PROBE)
    result = await create_cot(scripted_endpoint, config).ainvoke({"question": "q"})
    assert (result["stop_reason"], result["usage"]["reasoning_tokens"]) == ("budget", 12)
    assert scripted.requests_to("/models") == []


async def test_an_answer_written_after_the_thinking_closed_keeps_no_room_for_a_probe() -> None:
    # R1-Distill's template (its generation prompt opens the thinking): the model closes its
    # thinking in its first chunk and writes its answer. No probe follows an answer, so the
    # answer may fill the whole window (room 6 plus the probe's), then the run stops there.
    script = Script(reasoning=["a ", "</think>", "\\boxed{5} ", *[f"x{i} " for i in range(99)]])
    with ScriptedServer(script, chat_template="deepseek_r1_distill") as server:
        # its own model name: the format detected here is cached for this server and name only
        endpoint = Endpoint(model="context-r1", api_base=server.api_base, timeout_s=10,
                            continuation="tokens", max_retries=0)
        reserve = suffix_length(endpoint) + PROBE
        limit = script.max_model_len = window(endpoint, 6)
        config = CoTConfig(chunk_size=4, max_tokens=1024, probe_max_tokens=PROBE)
        result = await create_cot(endpoint, config).ainvoke({"question": "q"})
        requests = sent(server)
    total = 6 + reserve
    chunks = [4] * (total // 4) + ([total % 4] if total % 4 else [])
    assert [e["kind"] for e in script.log] == ["reason"] * len(chunks)  # no probe at all
    assert [e["body"]["max_tokens"] for e in script.log] == chunks
    assert all(prompt + wanted <= limit for prompt, wanted in requests)
    assert sum(requests[-1]) == limit
    assert (result["stop_reason"], result["answer"]) == ("context", "5")
    usage = result["usage"]
    assert usage["reasoning_tokens"] == total == script.total("reason", "completion_tokens")
    assert usage["reasoning_prompt_tokens"] == script.total("reason", "prompt_tokens")
    assert usage["answer_tokens"] == total - 2  # all but "a " and the close marker
    assert usage["probe_prompt_tokens"] == usage["probe_completion_tokens"] == 0


async def test_overlapped_the_stream_is_opened_only_as_long_as_the_window_holds(
    scripted: ScriptedServer,
) -> None:
    # The stream asks for the room left (10), not the budget (200); probes forked at 4, 8 and
    # 10 tokens; the last fills the window and the run stops there, nothing discarded.
    endpoint = token_endpoint(scripted)
    limit = scripted.script.max_model_len = window(endpoint, 10)
    first, suffix = rendered_length(endpoint, "q"), suffix_length(endpoint)
    scripted.script.probes = ["1}", "2}", "3}"]
    config = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=200,
                       probe_max_tokens=PROBE, probing="overlapped")
    result = await create_cot(endpoint, config).ainvoke({"question": "q"})
    assert [e["kind"] + ("-stream" if e["body"].get("stream") else "")
            for e in scripted.script.log] == ["reason-stream", "probe", "probe", "probe"]
    (stream,) = scripted.streams
    assert (stream.prompt, stream.body["max_tokens"], stream.sent) == (first, 10, 10)
    assert not stream.disconnected  # read to its end: the window, not an exit, ended it
    requests = sent(scripted)
    assert [prompt for prompt, _ in requests[1:]] == [first + n + suffix for n in (4, 8, 10)]
    assert all(prompt + wanted <= limit for prompt, wanted in requests)
    assert sum(requests[-1]) == limit
    assert (result["stop_reason"], result["answer"]) == ("context", "3")
    usage = result["usage"]
    assert (usage["reasoning_tokens"], usage["discarded_tokens"]) == (10, 0)
    assert usage["reasoning_prompt_tokens"] == first  # the stream's prompt, processed once
    assert usage["probe_prompt_tokens"] == sum(prompt for prompt, _ in requests[1:])
    assert usage["probe_completion_tokens"] == scripted.script.total("probe", "completion_tokens")


def endless(answer: str) -> Script:
    return Script(reasoning=[f"e{i} " for i in range(10_000)], probes=[f"{answer}}}"])


@pytest.mark.parametrize("stored", [False, True])
async def test_sc_paths_stop_at_the_window_and_the_vote_stands(
    scripted: ScriptedServer, stored: bool
) -> None:
    endpoint = token_endpoint(scripted)
    limit = scripted.script.max_model_len = window(endpoint, 10)
    scripted.script.seeds = {50: endless("1"), 51: endless("1"), 52: endless("2")}
    path = CoTConfig(chunk_size=4, certainty_threshold=5, max_tokens=1024, seed=50,
                     probe_max_tokens=PROBE)
    graph = create_sc(endpoint, SCConfig(path=path, width=3, max_width=3),
                      store=InMemoryStore() if stored else None)
    result = await graph.ainvoke({"question": "q"})
    assert [(p["stop_reason"], p["answer"], p["usage"]["reasoning_tokens"])
            for p in result["paths"]] == [("context", "1", 10), ("context", "1", 10),
                                          ("context", "2", 10)]
    assert (result["stop_reason"], result["answer"]) == ("context", "1")
    assert result["certaindex"] < 0.7  # not certain: the window, not the vote, ended it
    for seed in (50, 51, 52):
        own = scripted.script.seeds[seed].log
        assert [e["body"]["max_tokens"] for e in own if e["kind"] == "reason"] == [4, 4, 2]
    assert all(prompt + wanted <= limit for prompt, wanted in sent(scripted))
    assert_usage_matches(result, scripted.script)


def child(k: int) -> Script:
    return Script(reasoning=[f"s{k}_{j} " for j in range(10_000)])


def tree_checks(result: dict[str, Any], scripted: ScriptedServer, limit: int) -> None:
    """Every request fit; the deepest steps filled the window exactly and ended their paths;
    the answer is the reward-weighted vote of those paths; usage is the server's."""
    requests = sent(scripted)
    assert requests and all(prompt + wanted <= limit for prompt, wanted in requests)
    ended = [n for n in result["nodes"] if n["terminal"]]
    assert ended and all(n.get("context_full") for n in ended)
    assert all(n["depth"] == 3 and len(n["token_ids"]) == 1 for n in ended)
    assert result["answer"] == weighted_majority([n["answer"] for n in ended],
                                                 [n["reward"] or 0.0 for n in ended])
    usage = result["usage"]
    assert usage["reasoning_tokens"] == scripted.script.total("reason", "completion_tokens")
    assert usage["reasoning_prompt_tokens"] == scripted.script.total("reason", "prompt_tokens")


@pytest.mark.parametrize(("search", "depths"), [
    # MCTS: steps of 3 tokens and a window holding 7: depth 1 and 2 steps of 3, then a last
    # step of 1 that fills the window and ends its branch, until no branch can grow (the
    # whole binary tree to the window); Rebase: its beam of 2 to the window
    ("mcts", [0] + [1] * 2 + [2] * 4 + [3] * 8),
    ("rebase", [0, 1, 1, 2, 2, 3, 3]),
])
async def test_tree_searches_end_their_branches_at_the_window_and_stop_with_context(
    scripted: ScriptedServer, search: str, depths: list[int],
) -> None:
    endpoint = token_endpoint(scripted)
    limit = scripted.script.max_model_len = rendered_length(endpoint, "q") + 7
    scripted.script.seeds = {200 + k: child(k) for k in range(1, 40)}
    reward = FunctionReward(lambda _q, _s: 0.3)
    settings = {"width": 2, "max_width": 2, "chunk_size": 3, "max_depth": 8, "seed": 200}
    graph = (create_mcts(endpoint, reward, MCTSConfig(**settings)) if search == "mcts"
             else create_rebase(endpoint, reward, RebaseConfig(**settings)))
    result = await graph.ainvoke({"question": "q"})
    assert result["stop_reason"] == "context"
    assert sorted(n["depth"] for n in result["nodes"]) == depths
    tree_checks(result, scripted, limit)


async def test_a_tree_whose_prompt_fills_the_window_is_refused_before_anything_is_sent(
    scripted: ScriptedServer,
) -> None:
    endpoint = token_endpoint(scripted)
    scripted.script.max_model_len = rendered_length(endpoint, "q")
    graph = create_mcts(endpoint, FunctionReward(lambda _q, _s: 0.3), MCTSConfig())
    with pytest.raises(ServerRefused, match="leaves no room for one generated token"):
        await graph.ainvoke({"question": "q"})
    assert sent(scripted) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_solve_at_the_window_prints_a_result_with_stop_reason_context(
    scripted: ScriptedServer, as_json: bool
) -> None:
    # The case: a budget of 1024 reasoning tokens that the window cuts short. solve
    # prints its result (stop: context) and exits 0 instead of the server's 400.
    endpoint = token_endpoint(scripted)
    scripted.script.max_model_len = rendered_length(endpoint, "q") + 40 + suffix_length(
        endpoint) + 20  # 40 reasoning tokens, then the default 20-token probe
    scripted.script.probes = [f"{i}}}" for i in range(1, 20)]
    out = run_cli("solve", "q", "--api-base", scripted.api_base, "--model", SERVED_NAME,
                  "--max-tokens", "1024", "--effort", "low", "--chunk-size", "16",
                  *(["--json"] if as_json else []))
    assert out.returncode == 0, out.stderr
    if as_json:
        result = json.loads(out.stdout)
        assert (result["stop_reason"], result["answer"]) == ("context", "3")
        assert [p["tokens"] for p in result["probes"]] == [16, 32, 40]
        assert result["usage"]["reasoning_tokens"] == 40
    else:
        assert "answer: '3'   stop: context" in out.stdout
        assert "tokens: reasoning 40" in out.stdout
