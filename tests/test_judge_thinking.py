"""An LLM judge on a reasoning model: under a thinking family's chat template the judge's one
verdict token would be the first word of its thinking, so on the token route
:class:`~dynasor_graph.rewards.JudgeReward` closes an empty thinking the family's way and reads
the verdict token after it (R1-Distill: ``\\n\\n</think>\\n\\n`` after the prompt's own
``<think>``; Qwen3: the whole ``<think>\\n\\n</think>\\n\\n``), sent as ids to
``/v1/completions`` with its top log-probabilities. A plain template, the text route, or the
thinking switched off keep the one chat completion. Read from the scripted server's own record
of each request, under the verbatim templates of ``tests/chat_templates``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from scripted_server import Script, ScriptedServer

from dynasor_graph import Endpoint
from dynasor_graph.rewards import JUDGE_PROMPT, JudgeReward

QUESTION, SOLUTION = "What is 2 + 3?", "2 + 3 = 5, so \\boxed{5}."
JUDGED = JUDGE_PROMPT.format(question=QUESTION, solution=SOLUTION)
CLOSINGS = {"deepseek_r1_distill": "\n\n</think>\n\n", "qwen3": "<think>\n\n</think>\n\n"}


def ids(server: ScriptedServer, body: dict[str, Any]) -> list[int]:
    tokens = httpx.post(f"http://127.0.0.1:{server.port}/tokenize", timeout=10,
                        json={"model": "m", **body}).json()["tokens"]
    assert isinstance(tokens, list)
    return tokens


def judged_requests(server: ScriptedServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"].endswith("completions")]


@pytest.mark.parametrize("template", list(CLOSINGS))
async def test_the_verdict_follows_the_family_s_closed_thinking(template: str) -> None:
    # the judge's own script answers "Yes" wherever it is continued: the verdict is read from
    # the returned alternatives of that token
    script = Script(questions={JUDGED: Script(reasoning=["Yes"] * 64, logprob=-0.1)})
    with ScriptedServer(script, chat_template=template) as server:
        endpoint = Endpoint(model="m", api_base=server.api_base, timeout_s=10,
                            continuation="tokens")
        reward = await JudgeReward(endpoint).score([{"role": "user", "content": QUESTION}],
                                                   SOLUTION)
        prompt = ids(server, {"add_generation_prompt": True,
                              "messages": [{"role": "user", "content": JUDGED}]})
        closing = ids(server, {"prompt": CLOSINGS[template], "add_special_tokens": False})
    (request,) = judged_requests(server)  # one generation, on the token API
    body = request["body"]
    assert request["path"] == "/v1/completions"
    assert body["prompt"] == [prompt + closing] and closing
    assert (body["max_tokens"], body["logprobs"], body["temperature"]) == (1, 20, 0.0)
    assert (reward.prompt_tokens, reward.completion_tokens) == (len(prompt) + len(closing), 1)
    assert reward.score == 1.0  # p(Yes) / (p(Yes) + p(No)) from the returned alternatives


@pytest.mark.parametrize(("template", "thinking", "continuation"), [
    (None, None, "tokens"),  # a plain template: nothing to close
    ("qwen3", False, "tokens"),  # the switch off: the template already closed it
    ("qwen3", None, "text"),  # the text route: one chat completion, as before
])
async def test_otherwise_the_judge_sends_one_chat_completion(
    template: str | None, thinking: bool | None, continuation: str
) -> None:
    with ScriptedServer(Script(), chat_template=template, token_api=True) as server:
        endpoint = Endpoint(model="m", api_base=server.api_base, timeout_s=10,
                            continuation=continuation, thinking=thinking)
        reward = await JudgeReward(endpoint).score([{"role": "user", "content": QUESTION}],
                                                   SOLUTION)
    (request,) = judged_requests(server)
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["max_tokens"] == 1 and reward.completion_tokens == 1
