"""The agent probe's view of a model step: the step's messages, thinking and tools as the
server renders them, the probe text's token ids after the step's own prompt, and whether the
probe fits the server's context window.

:mod:`dynasor_graph.agents` probes after every model step with :func:`probe_step`; these know
nothing of stopping rules. On the token route the probe's prompt (the step's rendered prompt,
its thinking and draft, the suffix) and its ``probe_max_tokens`` must fit the window
(``max_model_len``): a probe that cannot fit is not sent (``probe_step`` returns ``None``)
rather than refused by the server. Text mode knows no window: the probe is sent as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ._endpoint import Endpoint, Message
from ._http import post_json
from ._probe import ProbeConfig, ProbeReply, ask_probe, probe_reserve
from ._thinking import detect
from ._token_route import render_chat, room, token_ids, tokenize


def openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The prompt as LiteLLM sends it: OpenAI dicts without the optional ``name`` fields, an
    earlier step's thinking kept as ``reasoning_content`` (``ChatLiteLLM`` sends it back, and
    a reasoning template such as Qwen3's renders it)."""
    converted = convert_to_openai_messages(list(messages))
    result = []
    for message, openai in zip(messages, converted, strict=True):
        entry = {k: v for k, v in openai.items() if k != "name"}
        thinking = message.additional_kwargs.get("reasoning_content")
        if isinstance(message, AIMessage) and isinstance(thinking, str) and thinking:
            entry["reasoning_content"] = thinking
        result.append(entry)
    return result


def step_thinking(ai: AIMessage) -> str:
    """The thinking of a reasoning model's step, as the server's ``--reasoning-parser`` split
    it off: ``additional_kwargs["reasoning_content"]`` (where ``ChatLiteLLM`` puts it) or
    ``["reasoning"]``, else ``reasoning`` / ``thinking`` content blocks; ``""`` if none."""
    for key in ("reasoning_content", "reasoning"):
        value = ai.additional_kwargs.get(key)
        if isinstance(value, str) and value.strip():
            return value
    if isinstance(ai.content, list):
        return "".join(str(block.get(block["type"]) or "") for block in ai.content
                       if isinstance(block, dict) and block.get("type") in ("reasoning",
                                                                            "thinking"))
    return ""


def probe_prefix(thinking: str, draft: str) -> str:
    """The step's own text before the probe suffix: its thinking, then its draft, the probe
    staying inside the thinking (none when the step wrote nothing)."""
    return "".join(f"{part.rstrip()}\n\n" for part in (thinking, draft) if part.strip())


async def probe_tokens(endpoint: Endpoint, prompt_ids: Sequence[int], thinking: str,
                        prefix: str) -> list[int]:
    """The probe text's ids after the step's rendered prompt: the open-thinking marker first
    when the model writes it itself (Qwen3) rather than the prompt (R1-Distill), so the probe
    stays inside the thinking. Not cached: every step's thinking is new."""
    if not prefix:
        return []
    fmt = await detect(endpoint)
    if thinking and not fmt.plain:
        marker = fmt.open_ids or await tokenize(endpoint, fmt.open)
        tail = list(prompt_ids[-(len(marker) + 4):])
        opened = any(tail[i:i + len(marker)] == list(marker) for i in range(len(tail)))
        gap = "" if fmt.family in ("harmony", "mistral") else "\n"
        prefix = prefix if opened else f"{fmt.open}{gap}{prefix}"
    payload = await post_json(endpoint, "/tokenize", {
        "model": endpoint.served_name, "prompt": prefix, "add_special_tokens": False},
        admit=False)
    return token_ids(payload, endpoint, "/tokenize")


def openai_tools(tools: Sequence[BaseTool | dict[str, Any]]) -> list[dict[str, Any]]:
    return [convert_to_openai_tool(t) for t in tools]


async def probe_step(endpoint: Endpoint, chat: list[Message], thinking: str, draft: str,
                     tools: Sequence[dict[str, Any]], settings: ProbeConfig,
                     seed: int | None) -> ProbeReply | None:
    """Probe after a model step: its prompt ``chat`` and ``tools``, then its ``thinking`` and
    ``draft``, then the probe suffix; ``None`` when that and ``probe_max_tokens`` do not fit
    the server's context window (token route; nothing is sent)."""
    prefix = probe_prefix(thinking, draft)
    prompt_ids = await render_chat(endpoint, chat, tools)
    generated = (await probe_tokens(endpoint, prompt_ids, thinking, prefix)
                 if prompt_ids is not None else [])
    if not await probe_fits(endpoint, settings, prompt_ids, generated):
        return None
    return await ask_probe(endpoint, chat, prefix, settings, seed=seed, tools=tools,
                           prompt_ids=prompt_ids, generated=generated)


async def probe_fits(endpoint: Endpoint, settings: ProbeConfig,
                     prompt_ids: Sequence[int] | None, generated: Sequence[int]) -> bool:
    """True when the probe (``prompt_ids + generated +`` the suffix's ids, then
    ``probe_max_tokens``) fits the server's context window, or no window is known (text
    mode, a server that reports none)."""
    if prompt_ids is None:
        return True
    left = await room(endpoint, len(prompt_ids) + len(generated),
                      reserve=await probe_reserve(endpoint, settings))
    return left is None or left >= 0
