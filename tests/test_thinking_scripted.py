"""Thinking-aware Dynasor-CoT on the scripted server's token route: exact sequences.

The scripted server (``tests/scripted_server.py``) speaks vLLM's token API (``/tokenize``,
``/v1/completions`` with token-id prompts and ``return_token_ids``) through DeepSeek-R1-Distill's
real chat template, whose generation prompt opens the thinking: the question ``q`` renders to 6
ids (DeepSeek's begin-of-sentence, user and assistant markers around ``q``, then ``<think>`` and
``\\n``), each scripted reasoning token is one id (``</think>`` among them), and a plain prompt
is split into ``\\S+\\s*`` runs. A reasoning request's prompt tells it how far the script has got.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litellm.integrations.custom_logger import CustomLogger
from scripted_server import Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX


@pytest.fixture
def token_server() -> Iterator[tuple[Endpoint, ScriptedServer]]:
    with ScriptedServer(Script(reasoning=[], probes=[]),
                        chat_template="deepseek_r1_distill") as server:
        yield Endpoint(model="m", api_base=server.api_base, timeout_s=10,
                       continuation="tokens"), server


def renders(server: ScriptedServer) -> list[dict[str, Any]]:
    """The ``/tokenize`` bodies that rendered chat messages."""
    return [r["body"] for r in server.requests_to("/tokenize") if "messages" in r["body"]]


class PreCallCounter(CustomLogger):  # type: ignore[misc]
    """A LiteLLM callback counting the calls LiteLLM is about to send."""

    calls = 0

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self.calls += 1


@pytest.mark.parametrize("client", ["litellm", "litellm+callback", "openai"])
async def test_think_close_mid_chunk_stops_probing_and_answers_from_after_it(
    token_server: tuple[Endpoint, ScriptedServer], client: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import litellm

    served, server = token_server
    script = server.script
    # The same requests whether LiteLLM or the OpenAI client it wraps sends them: client
    # "litellm" goes through litellm.atext_completion, so a LiteLLM callback sees every call;
    # client "openai" sends them through the OpenAI SDK alone, never through LiteLLM.
    endpoint = Endpoint.model_validate({**served.model_dump(),
                                        "client": client.split("+")[0]})
    counter = PreCallCounter()
    if client == "litellm+callback":
        monkeypatch.setattr(litellm, "callbacks", [counter])
    elif client == "openai":
        async def unexpected(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("atext_completion with client='openai'")

        monkeypatch.setattr(litellm, "atext_completion", unexpected)
    script.reasoning = ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "</think>", "\n\nThe ", "answer ",
                     "is ", "\\boxed{12}."]
    script.probes = ["7}"]
    config = CoTConfig(chunk_size=4, max_tokens=100, certainty_threshold=3)
    result = await create_cot(endpoint, config).ainvoke({"question": "q"})
    # chunk 1: r0..r3, probed; chunk 2: r4 r5 </think> "The" — closed mid-chunk, so no probe;
    # chunk 3: the answer, to the model's own end.
    assert [e["kind"] for e in script.log] == ["reason", "probe", "reason", "reason"]
    assert result["stop_reason"] == "answered"
    assert result["answer"] == "12"
    assert len(result["probes"]) == 1
    usage = result["usage"]
    assert usage["reasoning_tokens"] == 11
    assert usage["answer_tokens"] == 4  # "\n\nThe ", "answer ", "is ", "\\boxed{12}."
    # Token-exact: each prompt is the rendered chat plus everything generated before it.
    suffix = len(re.findall(r"\S+\s*", DEFAULT_PROBE_SUFFIX))
    rendered = 4 + 2  # the chat's 4 ids, then the generation prompt's "<think>", "\n"
    assert [e["usage"]["prompt_tokens"] for e in script.log] == [
        rendered, rendered + 4 + suffix, rendered + 4, rendered + 8]
    assert usage["reasoning_prompt_tokens"] == 3 * rendered + 4 + 8
    assert usage["probe_prompt_tokens"] == rendered + 4 + suffix
    assert counter.calls == (4 if client == "litellm+callback" else 0)


async def test_an_early_exit_closes_the_thinking_before_the_answer(
    token_server: tuple[Endpoint, ScriptedServer],
) -> None:
    endpoint, server = token_server
    script = server.script
    script.reasoning = [f"r{i} " for i in range(40)]
    script.probes = ["12}"]
    result = await create_cot(endpoint, CoTConfig(chunk_size=4, certainty_threshold=2)).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "certain"
    assert result["usage"]["answer_tokens"] == 0
    assert result["response"].endswith("r7 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]")


def test_cli_passes_template_kwargs_and_reports_thinking_and_answer_tokens(
    token_server: tuple[Endpoint, ScriptedServer], capsys: pytest.CaptureFixture[str],
) -> None:
    from dynasor_graph.cli import main

    endpoint, server = token_server
    script = server.script
    script.reasoning = ["r0 ", "r1 ", "</think>", "\\boxed{3}"]
    script.probes = ["3}"]
    code = main(["solve", "q", "--api-base", endpoint.api_base, "--model", "m", "--chunk-size",
                 "2", "--chat-template-kwargs", '{"enable_thinking": true}', "--continuation",
                 "tokens", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert renders(server)[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert renders(server)[0]["add_generation_prompt"] is True
    assert (out["stop_reason"], out["answer"]) == ("answered", "3")
    assert (out["thinking_tokens"], out["answer_tokens"]) == (3, 1)


@pytest.mark.parametrize(("flags", "message"), [
    (["--chat-template-kwargs", "{not json"], "--chat-template-kwargs is not JSON"),
    (["--chat-template-kwargs", "[1]"], "must be a JSON object"),
    (["--think-markers", "<think>", " "], "think_markers"),
])
def test_cli_refuses_bad_model_flags(flags: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dynasor_graph.cli import main

    code = main(["solve", "q", "--api-base", "http://127.0.0.1:9/v1", "--model", "m", *flags])
    assert code == 1
    assert message in capsys.readouterr().err
