"""An LLM judge's prompt sized to the judge server's context window, on the scripted token
server (whose chat completions, like vLLM's, refuse a rendered prompt plus ``max_tokens`` past
``max_model_len``): a solution too long to fit is cut to its end after the elision marker, the
reward counts the prompt sent, a question that cannot fit is refused before anything is sent,
and the text route sends the prompt whole as before."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from scripted_server import SERVED_NAME, Script, ScriptedServer

from dynasor_graph import Endpoint, MCTSConfig, ServerRefused, create_mcts
from dynasor_graph._context import _LIMITS
from dynasor_graph._text_route import complete
from dynasor_graph._tree import path_text
from dynasor_graph.rewards import ELISION, JUDGE_PROMPT, JudgeReward

QUESTION = [{"role": "user", "content": "q"}]
SOLUTION = "".join(f"w{i:03d} " for i in range(300)) + "\\boxed{7}"  # 301 tokens


class Judged:
    """The judge's chat requests answered ``Yes`` (p 0.8 against ``No``), with ``usage`` the
    rendered prompt in ids as vLLM counts it; every other request goes to ``tree`` (whose
    fields, ``max_model_len`` among them, the server reads through this object)."""

    def __init__(self, server: ScriptedServer, tree: Script) -> None:
        self.server, self.tree = server, tree
        self.judged: list[tuple[str, int]] = []  # (content, prompt tokens) of each verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tree, name)

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        content = str(body["messages"][-1]["content"])
        if not content.startswith("Question:\n"):
            return self.tree.reply(body)
        prompt = len(self.server.vocab.encode(self.server.rendered(body)))
        self.judged.append((content, prompt))
        top = [{"token": "Yes", "logprob": math.log(0.8), "bytes": None},
               {"token": "No", "logprob": math.log(0.2), "bytes": None}]
        return 200, {
            "id": "judge", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "Yes"},
                         "logprobs": {"content": [{"token": "Yes", "logprob": math.log(0.8),
                                                   "bytes": None, "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 1,
                      "total_tokens": prompt + 1}}


@pytest.fixture
def judged() -> Iterator[tuple[ScriptedServer, Judged]]:
    _LIMITS.clear()  # no window cached from an earlier server on this port
    with ScriptedServer(token_api=True) as server:
        server.script = Judged(server, Script())
        yield server, server.script
    _LIMITS.clear()


def endpoint_of(server: ScriptedServer, continuation: str = "tokens") -> Endpoint:
    return Endpoint(model=f"hosted_vllm/{SERVED_NAME}", api_base=server.api_base, timeout_s=10,
                    continuation=continuation, max_retries=0)


def length(server: ScriptedServer, solution: str) -> int:
    """The judge chat's rendered prompt for ``solution``, in the server's ids."""
    content = JUDGE_PROMPT.format(question="q", solution=solution)
    return len(server.vocab.encode(server.rendered({"messages": [
        {"role": "user", "content": content}], "add_generation_prompt": True})))


def shown(content: str) -> str:
    """The solution as the judge prompt shows it."""
    start = content.index("(it may be unfinished):\n") + len("(it may be unfinished):\n")
    return content[start:content.index("\n\nIs this solution correct")]


async def test_a_judge_prompt_that_fits_is_sent_whole(
    judged: tuple[ScriptedServer, Judged],
) -> None:
    server, script = judged
    script.tree.max_model_len = length(server, SOLUTION) + 1  # the prompt and its verdict
    reward = await JudgeReward(endpoint_of(server)).score(QUESTION, SOLUTION)
    ((content, prompt),) = script.judged
    assert content == JUDGE_PROMPT.format(question="q", solution=SOLUTION)
    assert reward.prompt_tokens == prompt == length(server, SOLUTION)
    assert reward.score == pytest.approx(0.8)


async def test_a_long_solution_is_cut_to_its_end_so_the_judge_prompt_fits(
    judged: tuple[ScriptedServer, Judged],
) -> None:
    server, script = judged
    endpoint = endpoint_of(server)
    limit = script.tree.max_model_len = length(server, ELISION) + 50
    whole = JUDGE_PROMPT.format(question="q", solution=SOLUTION)
    with pytest.raises(ServerRefused, match="maximum context length is"):  # what vLLM does
        await complete(endpoint, [{"role": "user", "content": whole}], "", max_tokens=1,
                       temperature=0.0, top_p=1.0)
    reward = await JudgeReward(endpoint).score(QUESTION, SOLUTION)
    ((content, prompt),) = script.judged
    assert content.startswith("Question:\nq\n\n")
    solution = shown(content)
    assert solution.startswith(ELISION) and solution.endswith("\\boxed{7}")
    tail = solution[len(ELISION):]
    assert SOLUTION.endswith(tail)  # the end kept, the start cut
    # as much of the end as fits: the prompt and its verdict token within the window, at
    # most a token short of it (a cut may fall inside a word)
    assert limit - 2 <= prompt + 1 <= limit
    assert len(tail.split()) >= 48
    assert reward.prompt_tokens == prompt and reward.completion_tokens == 1  # what was sent
    assert reward.score == pytest.approx(0.8)


async def test_a_question_that_cannot_fit_is_refused_before_anything_is_sent(
    judged: tuple[ScriptedServer, Judged],
) -> None:
    server, script = judged
    floor = length(server, ELISION)
    script.tree.max_model_len = floor  # no room for the verdict even with no solution shown
    with pytest.raises(ServerRefused, match=(
            f"the judge prompt with the solution cut to its elision marker is {floor} tokens, "
            "which leaves no room for one generated token")):
        await JudgeReward(endpoint_of(server)).score(QUESTION, SOLUTION)
    assert server.requests_to("/chat/completions") == []


@pytest.mark.parametrize("where", ["text route", "no window reported"])
async def test_without_a_known_window_the_judge_prompt_is_sent_whole(
    judged: tuple[ScriptedServer, Judged], where: str,
) -> None:
    # the text route counts no tokens; a server that reports no window tells none: the
    # prompt goes whole, as before, and the server's refusal is the error
    server, script = judged
    script.tree.max_model_len = length(server, ELISION) + 50
    if where == "no window reported":
        script.tree.tokenize_reports_limit = script.tree.models_report_limit = False
    endpoint = endpoint_of(server, "text" if where == "text route" else "tokens")
    with pytest.raises(ServerRefused, match="maximum context length is"):
        await JudgeReward(endpoint).score(QUESTION, SOLUTION)
    (request,) = server.requests_to("/chat/completions")
    assert request["body"]["messages"][0]["content"] == JUDGE_PROMPT.format(
        question="q", solution=SOLUTION)
    renders = [r for r in server.requests_to("/tokenize")
               if str(r["body"].get("messages", [{}])[-1].get("content", "")).startswith(
                   "Question:")]
    assert len(renders) == (0 if where == "text route" else 1)  # rendered, no window known


async def test_a_tree_search_with_long_steps_is_judged_within_the_window(
    judged: tuple[ScriptedServer, Judged],
) -> None:
    # Steps of 30 tokens in a window of the question plus 100: the deeper paths' judge prompts
    # would pass the window whole; each is cut to fit, and the search runs to its end.
    server, script = judged
    endpoint = endpoint_of(server)
    question = len(server.vocab.encode(server.rendered({"messages": QUESTION})))
    limit = script.tree.max_model_len = question + 100
    script.tree.seeds = {200 + k: Script(reasoning=[f"s{k}_{j} " for j in range(10_000)])
                         for k in range(1, 40)}
    config = MCTSConfig(width=2, max_width=2, chunk_size=30, max_depth=6, seed=200)
    result = await create_mcts(endpoint, JudgeReward(endpoint), config).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] in ("certain", "context")
    assert script.judged and all(prompt + 1 <= limit for _, prompt in script.judged)
    cut = [content for content, _ in script.judged if shown(content).startswith(ELISION)]
    assert cut  # the long paths' prompts were cut …
    paths = [path_text(result["nodes"], n["id"]) for n in result["nodes"]]
    assert all(any(p.endswith(shown(c)[len(ELISION):]) for p in paths) for c in cut)
    deepest = max((n for n in result["nodes"] if n["reward"] is not None),
                  key=lambda n: n["depth"])
    assert deepest["depth"] >= 3 and deepest["reward"] == pytest.approx(0.8)
    usage = result["usage"]  # … and the reward counts what was sent
    assert usage["reward_prompt_tokens"] == sum(prompt for _, prompt in script.judged)
    assert usage["reward_completion_tokens"] == len(script.judged)
