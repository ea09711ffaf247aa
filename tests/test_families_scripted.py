"""Thinking formats of reasoning families on the scripted server: detection and closings.

The scripted server (``tests/scripted_server.py``) renders chats through each family's verbatim
chat template (``tests/chat_templates``, with the variables vLLM passes) and speaks vLLM's
token API: ``/tokenize``, ``/detokenize``, ``/tokenizer_info`` and ``/v1/completions`` with
``return_token_ids``. Its tokenizer holds each family's markers as single ids (gpt-oss's and
Mistral's listed as special, and dropped from returned text unless ``skip_special_tokens`` is
false, as vLLM does); any other text is ``\\S+\\s*`` runs. The model's reasoning is a script
of tokens, indexed by how far the prompt has got, as in ``test_thinking_scripted.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from scripted_server import ChatTemplate, Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint, create_cot
from dynasor_graph._thinking import HARMONY_FINAL, detect


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Iterator[ScriptedServer]:
    """The scripted server on the family's template (the parameter), every probe ``12}``."""
    with ScriptedServer(Script(reasoning=[], probes=["12}"]),
                        chat_template=request.param) as server:
        yield server


def endpoint(server: ScriptedServer, **fields: Any) -> Endpoint:
    return Endpoint(model="m", api_base=server.api_base, timeout_s=10, continuation="tokens",
                    **fields)


def first_prompt(server: ScriptedServer) -> str:
    """The first generation request's prompt, as text (special tokens kept)."""
    return server.vocab.decode(server.generations()[0]["body"]["prompt"][0])


# template, thinking switch → family, open, close, prompt opens, switch
DETECTED = [
    ("deepseek_r1_distill", None, "think", "<think>", "</think>", True, "none"),
    ("qwq", None, "think", "<think>", "</think>", True, "none"),
    ("qwen3", None, "think", "<think>", "</think>", False, "enable_thinking"),
    ("qwen3", False, "plain", "", "", False, "enable_thinking"),
    ("deepseek_v3_1", None, "plain", "", "", False, "thinking"),
    ("deepseek_v3_1", True, "think", "<think>", "</think>", True, "thinking"),
    ("granite_3_3", True, "granite", "<think>", "</think>", False, "thinking"),
    ("granite_3_3", None, "plain", "", "", False, "thinking"),
    ("nemotron_nano_v2", None, "think", "<think>", "</think>", True, "command"),
    ("nemotron_nano_v2", False, "plain", "", "", False, "command"),
    ("ministral_3_reasoning", None, "mistral", "[THINK]", "[/THINK]", False, "none"),
    ("gpt_oss", None, "harmony", "<|channel|>analysis<|message|>", "<|end|>", False,
     "reasoning_effort"),
]


@pytest.mark.parametrize(("family", "thinking", "expected"), [
    (name, thinking, rest) for name, thinking, *rest in DETECTED],
    indirect=["family"], ids=[f"{d[0]}-thinking-{d[1]}" for d in DETECTED])
async def test_detection_reads_each_family_from_its_rendered_prompt(
    family: ScriptedServer, thinking: bool | None, expected: list[Any],
) -> None:
    fmt = await detect(endpoint(family, thinking=thinking))
    name, open_, close, prompt_opens, switch = expected
    assert (fmt.family, fmt.open, fmt.close, fmt.prompt_opens) == (name, open_, close,
                                                                   prompt_opens)
    assert (fmt.switch.name or fmt.switch.kind) == switch
    assert fmt.special == (bool(family.special) and name != "plain")
    if close:  # the markers as the server tokenizes them
        assert fmt.close_ids == tuple(family.vocab.encode(close))
    assert fmt.describe().startswith("plain reasoning" if name == "plain" else name)


@pytest.mark.parametrize("family", ["qwen3"], indirect=True)
async def test_the_switch_reaches_the_template_and_explicit_kwargs_win(
    family: ScriptedServer,
) -> None:
    family.script.reasoning = ["Two."]
    await create_cot(endpoint(family, thinking=False)).ainvoke({"question": "q"})
    assert first_prompt(family).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    fmt = await detect(endpoint(family, thinking=False,
                                chat_template_kwargs={"enable_thinking": True}))
    assert fmt.template_kwargs(endpoint(family, thinking=False, chat_template_kwargs={
        "enable_thinking": True})) == {"enable_thinking": True}
    assert fmt.family == "think"


@pytest.mark.parametrize("family", ["nemotron_nano_v2"], indirect=True)
async def test_a_message_command_switch_goes_into_the_system_message(
    family: ScriptedServer,
) -> None:
    family.script.reasoning = ["Two."]
    result = await create_cot(endpoint(family, thinking=False)).ainvoke({"question": "q"})
    assert first_prompt(family).endswith("<think></think>")  # Nemotron's /no_think
    assert result["thinking_format"].startswith("plain reasoning")


CLOSINGS = [
    # family template, thinking, the model's stream → the early exit's response tail
    ("qwen3", None, ["<think>", "\n", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 "],
     "r5 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),
    ("qwen3", None, ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 ", "r7 "],
     "r7 \n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),  # never opened: nothing to close
    ("granite_3_3", True, ["<think>", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 "],
     "r6 \n\n</think>\n<response>**Final Answer**\n\n\\[ \\boxed{12} \\]</response>"),
    ("ministral_3_reasoning", None, ["[THINK]", "r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 "],
     "r6 [/THINK]**Final Answer**\n\n\\[ \\boxed{12} \\]"),
    ("gpt_oss", None, ["<|channel|>", "analysis", "<|message|>", "r0 ", "r1 ", "r2 ", "r3 ",
                       "r4 "],
     f"r4 <|end|>{HARMONY_FINAL}**Final Answer**\n\n\\[ \\boxed{{12}} \\]"),
    ("deepseek_r1_distill", None, ["r0 ", "r1 ", "r2 ", "r3 ", "r4 ", "r5 ", "r6 ", "r7 "],
     "r7 \n\n</think>\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]"),
]


@pytest.mark.parametrize(("family", "thinking", "stream", "tail"), CLOSINGS,
                         indirect=["family"], ids=[f"{c[0]}-{i}" for i, c in enumerate(CLOSINGS)])
async def test_an_early_exit_closes_the_family_s_way(
    family: ScriptedServer, thinking: bool | None, stream: list[str], tail: str,
) -> None:
    family.script.reasoning = [*stream, *(f"x{i} " for i in range(40))]
    config = CoTConfig(chunk_size=4, certainty_threshold=2)
    result = await create_cot(endpoint(family, thinking=thinking), config).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "certain"
    assert result["response"].endswith(tail)
    assert result["answer"] == "12"
    fields = [r["body"].get("skip_special_tokens") for r in family.generations()]
    assert fields == [False if family.special else None] * len(fields)  # only when needed


@pytest.mark.parametrize("family", ["ministral_3_reasoning", "gpt_oss"], indirect=True)
async def test_special_markers_are_found_on_ids_and_the_answer_read_after_them(
    family: ScriptedServer,
) -> None:
    assert family.template is not None
    harmony = "<|channel|>" in family.template.source
    opened = ["<|channel|>", "analysis", "<|message|>"] if harmony else ["[THINK]"]
    closed = ["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>"] if (
        harmony) else ["[/THINK]"]
    family.script.reasoning = [*opened, "r0 ", "r1 ", "r2 ", *closed, "It ", "is ", "\\boxed{7}."]
    result = await create_cot(endpoint(family), CoTConfig(chunk_size=4)).ainvoke(
        {"question": "q"})
    assert result["stop_reason"] == "answered"
    assert result["answer"] == "7"
    # after the close: every token that follows the close marker's id
    answer = len(closed) - 1 + 3 if harmony else 3
    assert result["usage"]["answer_tokens"] == answer
    assert len(result["probes"]) == 1  # probed after chunk 1, then closed in chunk 2


@pytest.mark.parametrize("family", ["deepseek_v3_1"], indirect=True)
def test_cli_thinking_flag_maps_to_the_family_s_switch(
    family: ScriptedServer, capsys: pytest.CaptureFixture[str],
) -> None:
    from dynasor_graph.cli import main

    family.script.reasoning = ["r0 ", "</think>", "\\boxed{3}"]
    code = main(["solve", "q", "--api-base", family.api_base, "--model", "m", "--thinking", "on",
                 "--continuation", "tokens", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert first_prompt(family).endswith("<｜Assistant｜><think>")  # noqa: RUF001 DeepSeek's own role token
    assert out["thinking_format"].startswith("think: '<think>'…'</think>'")
    assert (out["stop_reason"], out["answer"]) == ("answered", "3")


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""A template with no thinking at all (ChatML, as SmolLM2's own)."""


async def test_an_unknown_format_is_plain_reasoning_and_says_so() -> None:
    script = Script(reasoning=[f"r{i} " for i in range(40)], probes=["12}"])
    with ScriptedServer(script, chat_template=ChatTemplate(CHATML)) as server:
        config = CoTConfig(chunk_size=4, certainty_threshold=2)
        result = await create_cot(endpoint(server), config).ainvoke({"question": "q"})
        assert result["thinking_format"].startswith("plain reasoning: no thinking markers")
        assert result["stop_reason"] == "certain"
        assert result["response"] == ("r0 r1 r2 r3 r4 r5 r6 r7 "
                                      "\n\n**Final Answer**\n\n\\[ \\boxed{12} \\]")
        # the override still works: the markers given, the prompt's opener read from the render
        fmt = await detect(endpoint(server, think_markers=("<think>", "</think>")))
        assert (fmt.family, fmt.prompt_opens, fmt.close_ids) == (
            "custom", False, tuple(server.vocab.encode("</think>")))
