"""Thinking-aware Dynasor-CoT on a scripted token-level server: exact sequences.

The server speaks vLLM's token API (``/tokenize``, ``/v1/completions`` with token-id prompts
and ``return_token_ids``): a token is a ``\\S+\\s*`` run, its id its index in a shared vocabulary.
It is stateless like vLLM: a reasoning request's prompt tells it how far the script has got.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from litellm.integrations.custom_logger import CustomLogger

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

RENDERED = ["<|user|> ", "@Q ", "<|assistant|> ", "<think>\n"]


@dataclass
class TokenScript:
    """The model's reasoning stream (tokens), its probe replies, and a log of requests."""

    stream: list[str]
    probes: list[str]
    vocab: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    renders: list[dict[str, Any]] = field(default_factory=list)  # /tokenize bodies with messages

    def ids(self, tokens: list[str]) -> list[int]:
        for token in tokens:
            if token not in self.vocab:
                self.vocab.append(token)
        return [self.vocab.index(t) for t in tokens]

    def tokenize(self, body: dict[str, Any]) -> list[int]:
        if "messages" in body:
            self.renders.append(body)
            return self.ids(RENDERED)
        return self.ids(re.findall(r"\S+\s*", body["prompt"]))

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt: list[int] = body["prompt"][0]
        suffix = self.tokenize({"prompt": DEFAULT_PROBE_SUFFIX})
        probe = prompt[-len(suffix):] == suffix
        if probe:
            reply = re.findall(r"\S+\s*", self.probes[self._probe_count()])
            out, finish = reply[: body["max_tokens"]], "stop"
        else:
            done = len(prompt) - len(RENDERED)
            out = self.stream[done: done + body["max_tokens"]]
            finish = "length" if done + len(out) < len(self.stream) else "stop"
        self.log.append({"kind": "probe" if probe else "reason", "prompt": len(prompt),
                         "completion": len(out)})
        offsets, position = [], 0
        for token in out:
            offsets.append(position)
            position += len(token)
        return {"choices": [{"index": 0, "text": "".join(out), "finish_reason": finish,
                             "token_ids": self.ids(out), "logprobs": {"text_offset": offsets,
                             "tokens": out, "token_logprobs": [0.0] * len(out)}}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(out),
                          "total_tokens": len(prompt) + len(out)},
                "object": "text_completion", "model": body["model"], "id": "x", "created": 0}

    def _probe_count(self) -> int:
        return min(sum(1 for e in self.log if e["kind"] == "probe"), len(self.probes) - 1)


@pytest.fixture
def token_server() -> Iterator[tuple[Endpoint, TokenScript]]:
    script = TokenScript(stream=[], probes=[])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":
                payload: dict[str, Any] = {"tokens": script.tokenize(body)}
            elif self.path == "/detokenize":
                payload = {"prompt": "".join(script.vocab[i] for i in body["tokens"])}
            else:
                payload = script.complete(body)
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(model="m", api_base=f"http://127.0.0.1:{server.server_address[1]}/v1",
                       timeout_s=10, continuation="tokens"), script
    finally:
        server.shutdown()
        server.server_close()


class PreCallCounter(CustomLogger):  # type: ignore[misc]
    """A LiteLLM callback counting the calls LiteLLM is about to send."""

    calls = 0

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self.calls += 1


@pytest.mark.parametrize("client", ["litellm", "litellm+callback", "openai"])
async def test_think_close_mid_chunk_stops_probing_and_answers_from_after_it(
    token_server: tuple[Endpoint, TokenScript], client: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import litellm

    served, script = token_server
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
    script.stream = ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "</think>", "\n\nThe ", "answer ",
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
    assert [e["prompt"] for e in script.log] == [4, 4 + 4 + suffix, 4 + 4, 4 + 8]
    assert usage["reasoning_prompt_tokens"] == 4 + 8 + 12
    assert usage["probe_prompt_tokens"] == 8 + suffix
    assert counter.calls == (4 if client == "litellm+callback" else 0)


async def test_an_early_exit_closes_the_thinking_before_the_answer(
    token_server: tuple[Endpoint, TokenScript],
) -> None:
    endpoint, script = token_server
    script.stream = [f"r{i} " for i in range(40)]
    script.probes = ["12}"]
    result = await create_cot(endpoint, CoTConfig(chunk_size=4, certainty_threshold=2)).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "certain"
    assert result["usage"]["answer_tokens"] == 0
    assert result["response"].endswith("r7 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]")


def test_cli_passes_template_kwargs_and_reports_thinking_and_answer_tokens(
    token_server: tuple[Endpoint, TokenScript], capsys: pytest.CaptureFixture[str],
) -> None:
    from dynasor_graph.cli import main

    endpoint, script = token_server
    script.stream = ["r0 ", "r1 ", "</think>", "\\boxed{3}"]
    script.probes = ["3}"]
    code = main(["solve", "q", "--api-base", endpoint.api_base, "--model", "m", "--chunk-size",
                 "2", "--chat-template-kwargs", '{"enable_thinking": true}', "--continuation",
                 "tokens", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert script.renders[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert script.renders[0]["add_generation_prompt"] is True
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
