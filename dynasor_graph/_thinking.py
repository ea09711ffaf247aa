"""The served model's thinking format, learned once per server from what the server exposes.

Reasoning families mark their thinking differently (R1's ``…</think>`` after a prompt that
opens ``<think>``, Qwen3's ``<think>…</think>``, Granite's ``<response>`` section, Mistral's
``[THINK]…[/THINK]``, gpt-oss's harmony channels) and switch it on and off differently
(``enable_thinking``, ``thinking``, ``reasoning_effort``, a ``/think`` command in a message).
:func:`detect` renders a probe conversation through the server's chat template (vLLM's
``/tokenize`` and ``/detokenize``, with and without each known thinking switch), reads the
markers from the rendered prompt, and tokenizes them: a :class:`ThinkingFormat`.
``Endpoint(think_markers=...)`` overrides the markers; an unknown format is plain reasoning,
said so in :attr:`ThinkingFormat.note` (the results' ``thinking_format``).

Markers that are special tokens (harmony's, Mistral's) are found on token ids, never in text,
and the requests then ask vLLM to keep special tokens in the text it returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._endpoint import Endpoint, Message
from ._errors import EndpointError, ServerRefused
from ._http import get_json, post_json

if TYPE_CHECKING:
    from ._endpoint import Completion

SwitchKind = Literal["none", "kwarg", "command"]


@dataclass(frozen=True)
class Switch:
    """How the family turns thinking on and off: a chat-template kwarg (``name`` = ``on`` /
    ``off``), a command in a message (``on`` / ``off`` text), or none."""

    kind: SwitchKind = "none"
    name: str = ""
    on: Any = None
    off: Any = None

    def describe(self) -> str:
        if self.kind == "kwarg":
            return f"{self.name}={json.dumps(self.on)}/{json.dumps(self.off)}"
        return f"{self.on} / {self.off} in a message" if self.kind == "command" else "none"


SWITCHES = (Switch("kwarg", "enable_thinking", True, False),
            Switch("kwarg", "thinking", True, False),
            Switch("kwarg", "reasoning_effort", "high", "low"),
            Switch("command", "", "/think", "/no_think"))
"""The thinking switches tried, in order: the first that changes the rendered prompt is the
family's."""

HARMONY_OPEN = "<|channel|>analysis<|message|>"
HARMONY_FINAL = "<|start|>assistant<|channel|>final<|message|>"


@dataclass(frozen=True)
class ThinkingFormat:
    """A family's thinking format: markers (as text and as token ids), where the answer is,
    how an early exit closes, and how the thinking switch maps. ``close == ""`` is plain
    reasoning (no markers: nothing is ever closed, the whole text is the answer)."""

    family: str
    open: str = ""
    close: str = ""
    open_ids: tuple[int, ...] = ()
    close_ids: tuple[int, ...] = ()
    prompt_opens: bool = False
    """The generation prompt already opened the thinking (R1, QwQ): the model only closes."""
    special: bool = False
    """The markers are special tokens: found on ids, and kept in the text on request."""
    answer_open: str = ""
    """What opens the answer section after the close (Granite ``<response>``, harmony's final
    channel header); ``""``: the answer follows the close."""
    answer_close: str = ""
    switch: Switch = field(default_factory=Switch)
    note: str = ""

    @property
    def plain(self) -> bool:
        return not self.close

    def closed(self, text: str, ids: Sequence[int] | None = None) -> bool:
        """True once the thinking is closed: the close marker's ids in ``ids`` (token mode)
        when the markers are special, else the close marker in ``text``."""
        if self.plain:
            return False
        if self.special and ids is not None and self.close_ids:
            return _find(ids, self.close_ids) >= 0
        return self.close in text

    def opened(self, text: str, ids: Sequence[int] | None = None) -> bool:
        """True when the thinking was opened: by the prompt, or by the model."""
        if self.plain or self.prompt_opens:
            return not self.plain
        if self.special and ids is not None and self.open_ids:
            return _find(ids, self.open_ids) >= 0
        return self.open in text

    def answer(self, text: str) -> str:
        """The answer section of ``text``: after the close marker (and the family's answer
        opener), before its answer closer; all of ``text`` if the thinking never closed."""
        if self.plain or self.close not in text:
            return text
        rest = text.split(self.close, 1)[1]
        if self.answer_open and self.answer_open in rest:
            rest = rest.split(self.answer_open, 1)[1]
        if self.answer_close and self.answer_close in rest:
            rest = rest.split(self.answer_close, 1)[0]
        return rest

    def answer_tokens(self, before: str, before_ids: Sequence[int] | None,
                      chunk: Completion) -> int:
        """Tokens of ``chunk`` generated after the thinking closed: all if it had already,
        those after the marker if it closes in this chunk (on ids for special markers), else
        none."""
        if self.closed(before, before_ids):
            return chunk.completion_tokens
        if self.special and before_ids is not None and self.close_ids and chunk.token_ids:
            ids = [*before_ids, *chunk.token_ids]
            start = _find(ids, self.close_ids)
            if start < 0:
                return 0
            return len(ids) - (start + len(self.close_ids))
        text = before + chunk.text
        if self.plain or self.close not in text:
            return 0
        end = text.index(self.close) + len(self.close) - len(before)
        return chunk.completion_tokens - chunk.tokens_before(end)

    def closing(self, reasoning: str, ids: Sequence[int] | None = None) -> tuple[str, str]:
        """What an early exit writes before and after the answer, as the family's model
        would: close the thinking (if it was opened) and open the answer section."""
        if self.plain or not self.opened(reasoning, ids):
            return "\n\n", ""
        if self.family == "harmony":
            return f"{self.close}{self.answer_open}", ""
        if self.family == "mistral":
            return self.close, ""
        opener = f"\n{self.answer_open}" if self.answer_open else "\n\n"
        return f"\n\n{self.close}{opener}", self.answer_close

    def describe(self) -> str:
        """One line for results: the family, its markers, the switch, and how it was found."""
        if self.plain:
            return f"plain reasoning: {self.note}"
        where = "opened by the prompt" if self.prompt_opens else "opened by the model"
        kind = "special tokens" if self.special else "text"
        return (f"{self.family}: {self.open!r}…{self.close!r} ({kind}, {where}); "
                f"switch {self.switch.describe()}; {self.note}")

    def template_kwargs(self, endpoint: Endpoint) -> dict[str, Any]:
        """The chat-template kwargs of a request: the thinking switch's (when
        ``endpoint.thinking`` is set), then ``endpoint.chat_template_kwargs`` over them."""
        kwargs: dict[str, Any] = {}
        if endpoint.thinking is not None and self.switch.kind == "kwarg":
            kwargs[self.switch.name] = self.switch.on if endpoint.thinking else self.switch.off
        return {**kwargs, **endpoint.chat_template_kwargs}

    def chat(self, endpoint: Endpoint, messages: list[Message]) -> list[Message]:
        """``messages`` with the thinking command in the system message, for a family whose
        switch is a command (Nemotron's ``/think``); unchanged otherwise."""
        if endpoint.thinking is None or self.switch.kind != "command":
            return messages
        return _with_command(messages, self.switch.on if endpoint.thinking else self.switch.off)

    def request_fields(self) -> dict[str, Any]:
        """Extra request fields: keep special-token markers in the returned text."""
        return {"skip_special_tokens": False} if self.special else {}


def _with_command(messages: list[Message], command: str) -> list[Message]:
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n{command}".strip()},
                *messages[1:]]
    return [{"role": "system", "content": command}, *messages]


def _find(ids: Sequence[int], marker: Sequence[int]) -> int:
    """Where ``marker`` starts in ``ids``, or -1 (``list.index`` to each candidate: a scan at
    C speed, since reasoning at scale holds tens of thousands of ids)."""
    if not marker:
        return -1
    seq, target, n = (ids if isinstance(ids, list) else list(ids)), list(marker), len(marker)
    start = 0
    while True:
        try:
            i = seq.index(target[0], start)
        except ValueError:
            return -1
        if seq[i:i + n] == target:
            return i
        start = i + 1


PROBE: list[Message] = [{"role": "user", "content": "What is 1 + 1?"}]
"""The conversation rendered to learn the format."""

_FORMATS: dict[tuple[str, ...], ThinkingFormat] = {}
_PENDING: dict[tuple[str, ...], asyncio.Task[ThinkingFormat]] = {}


def _key(endpoint: Endpoint) -> tuple[str, ...]:
    return (endpoint.server_root, endpoint.served_name,
            json.dumps(endpoint.chat_template_kwargs, sort_keys=True, default=str),
            repr(endpoint.thinking), repr(endpoint.think_markers))


def known(endpoint: Endpoint) -> ThinkingFormat | None:
    """The format :func:`detect` learned for this endpoint, if it has run."""
    return _FORMATS.get(_key(endpoint))


def thinking_fields(endpoint: Endpoint, *, chat: bool) -> dict[str, Any]:
    """Request fields of the detected format: keep special-token markers in the text and, on
    chat requests, the template kwargs (the thinking switch and ``chat_template_kwargs``)."""
    fmt = known(endpoint)
    fields: dict[str, Any] = fmt.request_fields() if fmt is not None else {}
    kwargs = fmt.template_kwargs(endpoint) if fmt is not None else endpoint.chat_template_kwargs
    if chat and kwargs:
        fields["chat_template_kwargs"] = kwargs
    return fields


async def detect(endpoint: Endpoint) -> ThinkingFormat:
    """The served model's thinking format, learned once per server, model, kwargs and switch
    (cached): see the module doc. Programs starting together share one detection, and resume
    in the order they asked (a scheduler's FIFO order is theirs)."""
    key = _key(endpoint)
    if key in _FORMATS:
        return _FORMATS[key]
    loop = asyncio.get_running_loop()
    pending = _PENDING.get(key)
    if pending is None or pending.get_loop() is not loop:
        pending = _PENDING[key] = loop.create_task(_detect(endpoint))
    try:  # shielded: a waiter cancelled (a scheduler's timeout) leaves it to the others
        _FORMATS[key] = await asyncio.shield(pending)
    finally:
        if pending.done() and _PENDING.get(key) is pending:
            del _PENDING[key]
    return _FORMATS[key]


async def _render_ids(endpoint: Endpoint, messages: list[Message],
                      kwargs: dict[str, Any]) -> tuple[int, ...]:
    body: dict[str, Any] = {"model": endpoint.served_name, "messages": messages,
                            "add_generation_prompt": True}
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    payload = await post_json(endpoint, "/tokenize", body, admit=False)
    return tuple(int(t) for t in payload.get("tokens") or ())


async def _text(endpoint: Endpoint, ids: Sequence[int]) -> str:
    payload = await post_json(endpoint, "/detokenize", {
        "model": endpoint.served_name, "tokens": list(ids)}, admit=False)
    text = payload.get("prompt")
    if not isinstance(text, str):
        raise ServerRefused(f"{endpoint.server_root}/detokenize answered without a prompt",
                            api_base=endpoint.api_base)
    return text


async def _marker_ids(endpoint: Endpoint, text: str) -> tuple[int, ...]:
    payload = await post_json(endpoint, "/tokenize", {
        "model": endpoint.served_name, "prompt": text, "add_special_tokens": False},
        admit=False)
    return tuple(int(t) for t in payload.get("tokens") or ())


async def _find_switch(endpoint: Endpoint) -> tuple[Switch, str]:
    """The first known switch whose on and off renders differ; and the off render's text
    when it closes an empty thinking block (Qwen3's ``<think>\\n\\n</think>``)."""
    for switch in SWITCHES:
        if switch.kind == "kwarg":
            user = endpoint.chat_template_kwargs
            on = await _render_ids(endpoint, PROBE, {**user, switch.name: switch.on})
            off = await _render_ids(endpoint, PROBE, {**user, switch.name: switch.off})
        else:
            on = await _render_ids(endpoint, _with_command(PROBE, switch.on),
                                   endpoint.chat_template_kwargs)
            off = await _render_ids(endpoint, _with_command(PROBE, switch.off),
                                    endpoint.chat_template_kwargs)
        if on == off:
            continue
        off_text = await _text(endpoint, off)
        if switch.kind == "command":  # a switch only if more than the command's text changed
            on_text = await _text(endpoint, on)
            if on_text.replace(switch.on, "") == off_text.replace(switch.off, ""):
                continue
        return switch, off_text
    return Switch(), ""


_FAMILY_HINTS = (("gpt-oss", "harmony"), ("magistral", "mistral"), ("ministral", "mistral"),
                 ("granite", "granite"), ("qwq", "think"), ("r1", "think"),
                 ("qwen3", "think"), ("deepseek", "think"), ("nemotron", "think"),
                 ("phi-4", "think"), ("smollm3", "think"), ("glm", "think"))

_MARKERS = {"think": ("<think>", "</think>", "", ""),
            "granite": ("<think>", "</think>", "<response>", "</response>"),
            "mistral": ("[THINK]", "[/THINK]", "", ""),
            "harmony": (HARMONY_OPEN, "<|end|>", HARMONY_FINAL, "")}

_SPECIAL_BY_FAMILY = {"harmony": True, "mistral": True}
"""Whether the family's published tokenizer holds its markers as special tokens, when the
server's ``/tokenizer_info`` does not say."""


def _family(text: str, off_text: str) -> tuple[str, bool, str] | None:
    """(family, prompt opens, evidence) from the rendered generation prompt; ``None`` when
    it shows no thinking format. ``("off", …)``: the prompt closes the thinking."""
    tail = text.rstrip()
    if "<|channel|>" in text or tail.endswith("<|start|>assistant"):
        return "harmony", False, "harmony channels in the rendered prompt"
    if "[THINK]" in text or "[/THINK]" in text:
        return "mistral", False, "[THINK] in the rendered prompt"
    if tail.endswith("</think>"):
        return "off", False, "the generation prompt closes the thinking (thinking off)"
    if tail.endswith("<think>"):
        return "think", True, "the generation prompt opens <think>"
    if "<response>" in text and "<think>" in text:
        return "granite", False, "<think> and <response> sections in the rendered prompt"
    if "<think>" in text:
        return "think", False, "<think> in the rendered prompt"
    if "</think>" in off_text:
        return "think", False, "the prompt with thinking off closes an empty <think> block"
    return None


async def _detect(endpoint: Endpoint) -> ThinkingFormat:
    name = endpoint.served_name.lower()
    hint = next((family for key, family in _FAMILY_HINTS if key in name), None)
    try:
        base = await _render_ids(endpoint, PROBE, endpoint.chat_template_kwargs)
        switch, off_text = await _find_switch(endpoint)
        fmt = ThinkingFormat("plain", switch=switch)
        chat = fmt.chat(endpoint, PROBE)
        kwargs = fmt.template_kwargs(endpoint)
        ids = base if (chat is PROBE and kwargs == endpoint.chat_template_kwargs) else (
            await _render_ids(endpoint, chat, kwargs))
        text = await _text(endpoint, ids)
    except EndpointError as exc:
        if endpoint.think_markers:
            return ThinkingFormat("custom", *endpoint.think_markers, prompt_opens=True,
                                  note="markers from think_markers; no /tokenize to read the "
                                       "prompt: assumed opened by the prompt")
        open_, close, answer_open, answer_close = _MARKERS[hint or "think"]
        why = (f"the model's name says {hint}" if hint else
               "assumed <think>…</think> opened by the prompt (R1 style)")
        return ThinkingFormat(hint or "think", open_, close, prompt_opens=hint in (None, "think"),
                              answer_open=answer_open, answer_close=answer_close,
                              special=_SPECIAL_BY_FAMILY.get(hint or "", False),
                              note=f"not detected (no /tokenize or /detokenize: "
                                   f"{str(exc)[:80]}); {why}")
    if endpoint.think_markers:
        open_, close = endpoint.think_markers
        family, answer_open, answer_close = "custom", "", ""
        prompt_opens = text.rstrip().endswith(open_.rstrip())
        evidence = "markers from think_markers"
    else:
        found = _family(text, off_text)
        if found is None and hint is not None:
            found = (hint, False, "only the model's name says so")
        if found is None or found[0] == "off":
            note = found[2] if found else ("no thinking markers in the rendered prompt; "
                                           "set think_markers to override")
            return ThinkingFormat("plain", switch=switch, note=note)
        family, prompt_opens, evidence = found
        open_, close, answer_open, answer_close = _MARKERS[family]
    open_ids, close_ids = await _marker_ids(endpoint, open_), await _marker_ids(endpoint, close)
    special = await _special(endpoint, family, close, close_ids)
    return ThinkingFormat(family, open_, close, open_ids, close_ids, prompt_opens, special,
                          answer_open, answer_close, switch, evidence)


async def _special(endpoint: Endpoint, family: str, close: str,
                   close_ids: tuple[int, ...]) -> bool:
    """Whether the close marker is a special token: one id, listed among the special tokens
    by the server's ``/tokenizer_info`` (vLLM ``--enable-tokenizer-info-endpoint``), else as
    the family's published tokenizer has it."""
    if len(close_ids) != 1:
        return False
    try:
        info = await get_json(endpoint, "/tokenizer_info")
    except EndpointError:
        return _SPECIAL_BY_FAMILY.get(family, False)
    listed: set[str] = set()
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = info.get(key)
        if isinstance(value, list):
            listed.update(str(v) for v in value)
        elif isinstance(value, dict):
            listed.update(str(v) for v in value.values())
    return close in listed
