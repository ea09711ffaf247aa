"""Thinking formats of reasoning families on a scripted token server: detection and closings.

The server renders chats with the families' verbatim chat templates (``tests/chat_templates``,
through a Jinja sandbox as transformers does) and speaks vLLM's token API: ``/tokenize``,
``/detokenize``, ``/tokenizer_info`` and ``/v1/completions`` with ``return_token_ids``. Its
tokenizer holds each family's markers as single ids (special ones listed as special, and
dropped from returned text unless ``skip_special_tokens`` is false, as vLLM does); any other
text is ``\\S+\\s*`` runs. The model's reasoning is a script of tokens, indexed by how far the
prompt has got, as in ``test_thinking_scripted.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX
from dynasor_graph._thinking import HARMONY_FINAL, detect

TEMPLATES = Path(__file__).parent / "chat_templates"
SPECIAL = ["[THINK]", "[/THINK]", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
           "<|return|>", "<|constrain|>", "<|call|>"]
ADDED = ["<think>", "</think>", "<|im_start|>", "<|im_end|>", *SPECIAL]
_MARKER = "|".join(re.escape(t) for t in sorted(ADDED, key=len, reverse=True))
SPLIT = re.compile(f"{_MARKER}|(?:(?!{_MARKER})\\S)+\\s*|\\s+")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False)


def render(template: str, body: dict[str, Any]) -> str:
    """The chat as transformers renders a template (trim and lstrip blocks, its helpers)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime(2026, 1, 1).strftime(fmt))
    kwargs = dict(body.get("chat_template_kwargs") or {})
    return env.from_string(template).render(
        messages=body["messages"], tools=body.get("tools"), bos_token="<|im_start|>",
        eos_token="<|im_end|>", add_generation_prompt=body.get("add_generation_prompt", True),
        **kwargs)


@dataclass
class FamilyServer:
    """One family's template, a tokenizer with its markers, and the model's script."""

    template: str
    special: bool  # whether the tokenizer lists SPECIAL as special tokens
    stream: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=lambda: ["12}"])
    vocab: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    prompt: int = 0  # the rendered question's length (the last render that was not a probe)

    def ids(self, text: str) -> list[int]:
        out = []
        for token in SPLIT.findall(text):
            if token not in self.vocab:
                self.vocab.append(token)
            out.append(self.vocab.index(token))
        return out

    def text(self, ids: list[int], skip_special: bool) -> str:
        drop = set(SPECIAL) if (self.special and skip_special) else set()
        return "".join(t for t in (self.vocab[i] for i in ids) if t not in drop)

    def reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/tokenize":
            if "messages" in body:
                ids = self.ids(render(self.template, body))
                if "1 + 1" not in body["messages"][-1]["content"]:
                    self.prompt = len(ids)
                return {"tokens": ids}
            return {"tokens": self.ids(body["prompt"])}
        if path == "/detokenize":
            return {"prompt": self.text(body["tokens"], skip_special=False)}
        return self.complete(body)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt: list[int] = body["prompt"][0]
        suffix = self.ids(DEFAULT_PROBE_SUFFIX)
        probe = prompt[-len(suffix):] == suffix
        if probe:
            out = SPLIT.findall(self.probes[0])[: body["max_tokens"]]
            finish = "stop"
        else:
            done = len(prompt) - self.prompt
            out = self.stream[done: done + body["max_tokens"]]
            finish = "length" if done + len(out) < len(self.stream) else "stop"
        self.log.append({"kind": "probe" if probe else "reason", "body": body})
        ids = self.ids("".join(out))
        skip = body.get("skip_special_tokens", True)
        offsets, position = [], 0
        for token_id in ids:
            offsets.append(position)
            position += len(self.text([token_id], skip))
        return {"choices": [{"index": 0, "text": self.text(ids, skip), "finish_reason": finish,
                             "token_ids": ids, "logprobs": {"text_offset": offsets}}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                          "total_tokens": len(prompt) + len(ids)},
                "object": "text_completion", "model": body["model"], "id": "x", "created": 0}


def serve(state: FamilyServer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/tokenizer_info":
                self._send(200, {"tokenizer_class": "Scripted", "extra_special_tokens":
                                 SPECIAL if state.special else []})
            else:
                self._send(404, {"message": "no route"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._send(200, state.reply(self.path, body))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Iterator[tuple[FamilyServer, str]]:
    name, special = request.param
    state = FamilyServer((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"), special)
    for base in serve(state):
        yield state, base


def endpoint(base: str, **fields: Any) -> Endpoint:
    return Endpoint(model="m", api_base=base, timeout_s=10, continuation="tokens", **fields)


# template, special markers, thinking switch → family, open, close, prompt opens, switch
DETECTED = [
    ("deepseek_r1_distill", False, None, "think", "<think>", "</think>", True, "none"),
    ("qwq", False, None, "think", "<think>", "</think>", True, "none"),
    ("qwen3", False, None, "think", "<think>", "</think>", False, "enable_thinking"),
    ("qwen3", False, False, "plain", "", "", False, "enable_thinking"),
    ("deepseek_v3_1", False, None, "plain", "", "", False, "thinking"),
    ("deepseek_v3_1", False, True, "think", "<think>", "</think>", True, "thinking"),
    ("granite_3_3", False, True, "granite", "<think>", "</think>", False, "thinking"),
    ("granite_3_3", False, None, "plain", "", "", False, "thinking"),
    ("nemotron_nano_v2", False, None, "think", "<think>", "</think>", True, "command"),
    ("nemotron_nano_v2", False, False, "plain", "", "", False, "command"),
    ("ministral_3_reasoning", True, None, "mistral", "[THINK]", "[/THINK]", False, "none"),
    ("gpt_oss", True, None, "harmony", "<|channel|>analysis<|message|>", "<|end|>", False,
     "reasoning_effort"),
]


@pytest.mark.parametrize(("family", "thinking", "expected"), [
    ((name, special), thinking, rest) for name, special, thinking, *rest in DETECTED],
    indirect=["family"], ids=[f"{d[0]}-thinking-{d[2]}" for d in DETECTED])
async def test_detection_reads_each_family_from_its_rendered_prompt(
    family: tuple[FamilyServer, str], thinking: bool | None, expected: list[Any],
) -> None:
    state, base = family
    fmt = await detect(endpoint(base, thinking=thinking))
    name, open_, close, prompt_opens, switch = expected
    assert (fmt.family, fmt.open, fmt.close, fmt.prompt_opens) == (name, open_, close,
                                                                   prompt_opens)
    assert (fmt.switch.name or fmt.switch.kind) == switch
    assert fmt.special == (state.special and name != "plain")
    if close:  # the markers as the server tokenizes them
        assert fmt.close_ids == tuple(state.ids(close))
    assert fmt.describe().startswith("plain reasoning" if name == "plain" else name)


@pytest.mark.parametrize("family", [("qwen3", False)], indirect=True)
async def test_the_switch_reaches_the_template_and_explicit_kwargs_win(
    family: tuple[FamilyServer, str],
) -> None:
    state, base = family
    state.stream = ["Two."]
    await create_cot(endpoint(base, thinking=False)).ainvoke({"question": "q"})
    rendered = state.text(state.log[0]["body"]["prompt"][0], skip_special=False)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    fmt = await detect(endpoint(base, thinking=False,
                                chat_template_kwargs={"enable_thinking": True}))
    assert fmt.template_kwargs(endpoint(base, thinking=False, chat_template_kwargs={
        "enable_thinking": True})) == {"enable_thinking": True}
    assert fmt.family == "think"


@pytest.mark.parametrize("family", [("nemotron_nano_v2", False)], indirect=True)
async def test_a_message_command_switch_goes_into_the_system_message(
    family: tuple[FamilyServer, str],
) -> None:
    state, base = family
    state.stream = ["Two."]
    result = await create_cot(endpoint(base, thinking=False)).ainvoke({"question": "q"})
    rendered = state.text(state.log[0]["body"]["prompt"][0], skip_special=False)
    assert rendered.endswith("<think></think>")  # Nemotron's /no_think
    assert result["thinking_format"].startswith("plain reasoning")


CLOSINGS = [
    # family template, special, thinking, the model's stream → the early exit's response tail
    ("qwen3", False, None, ["<think>", "\n", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 "],
     "r5 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),
    ("qwen3", False, None, ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 ", "r7 "],
     "r7 \n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),  # never opened: nothing to close
    ("granite_3_3", False, True, ["<think>", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 "],
     "r6 \n\n</think>\n<response>**Final Answer**\n\n\\[ \\boxed{12} \\]</response>"),
    ("ministral_3_reasoning", True, None, ["[THINK]", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ",
                                           "r6 "],
     "r6 [/THINK]**Final Answer**\n\n\\[ \\boxed{12} \\]"),
    ("gpt_oss", True, None, ["<|channel|>", "analysis", "<|message|>", "r0 ", "r1 ", "r2 ",
                             "r3 ", "r4 "],
     f"r4 <|end|>{HARMONY_FINAL}**Final Answer**\n\n\\[ \\boxed{{12}} \\]"),
    ("deepseek_r1_distill", False, None, ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 ", "r7 "],
     "r7 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),
]


@pytest.mark.parametrize(("family", "thinking", "stream", "tail"), [
    ((name, special), thinking, stream, tail) for name, special, thinking, stream, tail in
    CLOSINGS], indirect=["family"], ids=[f"{c[0]}-{i}" for i, c in enumerate(CLOSINGS)])
async def test_an_early_exit_closes_the_family_s_way(
    family: tuple[FamilyServer, str], thinking: bool | None, stream: list[str], tail: str,
) -> None:
    state, base = family
    state.stream = [*stream, *(f"x{i} " for i in range(40))]
    config = CoTConfig(chunk_size=4, certainty_threshold=2)
    result = await create_cot(endpoint(base, thinking=thinking), config).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "certain"
    assert result["response"].endswith(tail)
    assert result["answer"] == "12"
    fields = [e["body"].get("skip_special_tokens") for e in state.log]
    assert fields == [False if state.special else None] * len(state.log)  # only when needed


@pytest.mark.parametrize("family", [("ministral_3_reasoning", True), ("gpt_oss", True)],
                         indirect=True)
async def test_special_markers_are_found_on_ids_and_the_answer_read_after_them(
    family: tuple[FamilyServer, str],
) -> None:
    state, base = family
    harmony = "gpt_oss" in state.template or "<|channel|>" in state.template
    opened = ["<|channel|>", "analysis", "<|message|>"] if harmony else ["[THINK]"]
    closed = ["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>"] if (
        harmony) else ["[/THINK]"]
    state.stream = [*opened, "r0 ", "r1 ", "r2 ", *closed, "It ", "is ", "\\boxed{7}."]
    result = await create_cot(endpoint(base), CoTConfig(chunk_size=4)).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "answered"
    assert result["answer"] == "7"
    # after the close: every token that follows the close marker's id
    answer = len(closed) - 1 + 3 if harmony else 3
    assert result["usage"]["answer_tokens"] == answer
    assert len(result["probes"]) == 1  # probed after chunk 1, then closed in chunk 2


@pytest.mark.parametrize("family", [("deepseek_v3_1", False)], indirect=True)
def test_cli_thinking_flag_maps_to_the_family_s_switch(
    family: tuple[FamilyServer, str], capsys: pytest.CaptureFixture[str],
) -> None:
    from dynasor_graph.cli import main

    state, base = family
    state.stream = ["r0 ", "</think>", "\\boxed{3}"]
    code = main(["solve", "q", "--api-base", base, "--model", "m", "--thinking", "on",
                 "--continuation", "tokens", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    rendered = state.text(state.log[0]["body"]["prompt"][0], skip_special=False)
    assert rendered.endswith("<｜Assistant｜><think>")  # noqa: RUF001 DeepSeek's own role token
    assert out["thinking_format"].startswith("think: '<think>'…'</think>'")
    assert (out["stop_reason"], out["answer"]) == ("answered", "3")


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""A template with no thinking at all (ChatML, as SmolLM2's own)."""


async def test_an_unknown_format_is_plain_reasoning_and_says_so() -> None:
    state = FamilyServer(CHATML, special=False)
    state.stream = [f"r{i} " for i in range(40)]
    for base in serve(state):
        config = CoTConfig(chunk_size=4, certainty_threshold=2)
        result = await create_cot(endpoint(base), config).ainvoke({"question": "q"})
        assert result["thinking_format"].startswith("plain reasoning: no thinking markers")
        assert result["stop_reason"] == "certain"
        assert result["response"] == ("r0 r1 r2 r3 r4 r5 r6 r7 "
                                      "\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]")
        # the override still works: the markers given, the prompt's opener read from the render
        fmt = await detect(endpoint(base, think_markers=("<think>", "</think>")))
        assert (fmt.family, fmt.prompt_opens, fmt.close_ids) == ("custom", False,
                                                                 tuple(state.ids("</think>")))
