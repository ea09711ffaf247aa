"""The scripted model behind the scripted server: what it says, its tokenizer, its chat template.

- :class:`Script` is what the model says: a reasoning stream, probe replies, and faults.
- :class:`Vocabulary` is the tokenizer: every marker of :data:`MARKERS` is one token, any other
  text is ``\\S+\\s*`` runs (:func:`pieces`); a token's id is its index in order of first sight,
  one :data:`VOCABULARY` for every server in the process.
- :func:`render` / :func:`parse` are the scripted chat template (``<|role|>content<|end|>``,
  then ``<|assistant|>``) and its inverse: a token prompt decodes back into its chat.
- :class:`ChatTemplate` is a model's real Jinja chat template (the verbatim copies in
  ``tests/chat_templates``), rendered with the variables vLLM passes: the chat as vLLM
  normalises it, ``tools``, ``add_generation_prompt``, the tokenizer's ``bos_token`` /
  ``eos_token``, and the request's ``chat_template_kwargs`` the template reads.
"""

from __future__ import annotations

import json
import re
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

SERVED_NAME = "scripted"
"""The model name the scripted server serves."""
TEMPLATES = Path(__file__).parent / "chat_templates"

ROLES = ("system", "user", "assistant", "tool")
SCRIPTED = (*(f"<|{role}|>" for role in ROLES), "<|tools|>", "<|end|>")
"""The scripted template's markers."""
HARMONY_AND_MISTRAL = ("[THINK]", "[/THINK]", "<|start|>", "<|end|>", "<|message|>",
                       "<|channel|>", "<|return|>", "<|constrain|>", "<|call|>")
"""The markers gpt-oss's and Mistral's tokenizers list as special tokens."""
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",  # noqa: RUF001
            "<｜Assistant｜>")  # noqa: RUF001
MARKERS = tuple(dict.fromkeys((*SCRIPTED, "<think>", "</think>", "<|im_start|>", "<|im_end|>",
                               *DEEPSEEK, *HARMONY_AND_MISTRAL)))
"""Each is one token: the scripted template's, the think markers, ChatML's, DeepSeek's,
harmony's and Mistral's, as the families' tokenizers hold them."""
_MARKER = "|".join(re.escape(m) for m in sorted(MARKERS, key=len, reverse=True))
_PIECE = re.compile(f"{_MARKER}|(?:(?!{_MARKER})\\S)+\\s*|\\s+")
_SPLIT = re.compile(f"({_MARKER})")


def tokens(text: str) -> list[str]:
    """The chat route's token count: whitespace-separated runs, each with its trailing space."""
    return re.findall(r"\S+\s*|\s+", text)


def pieces(text: str) -> list[str]:
    """The token route's tokenizer: a marker (:data:`MARKERS`) is one token, any other text
    ``\\S+\\s*`` runs; joining the pieces gives ``text`` back."""
    return _PIECE.findall(text)


class Vocabulary:
    """Token strings and their ids (index in order of first sight), shared by all requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.words: list[str] = []
        self._ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return self.ids(pieces(text))

    def ids(self, strings: list[str]) -> list[int]:
        """Each string as one token (a scripted reply's tokens keep their ids)."""
        with self._lock:
            return [self._ids[p] if p in self._ids else self._add(p) for p in strings]

    def _add(self, piece: str) -> int:
        self._ids[piece] = len(self.words)
        self.words.append(piece)
        return self._ids[piece]

    def decode(self, ids: list[int]) -> str:
        with self._lock:
            return "".join(self.words[i] for i in ids)


VOCABULARY = Vocabulary()
"""One vocabulary for every server in the process, as one model's tokenizer: the library caches
a suffix's ids per server URL, and a later test's server may get a port an earlier one had."""


def render(messages: list[dict[str, Any]], tools: list[Any] | None = None,
           add_generation_prompt: bool = True) -> str:
    """The scripted chat template: ``<|tools|>json<|end|>``, each message as
    ``<|role|>content<|end|>``, then ``<|assistant|>`` opening the reply. No thinking markers:
    detection finds plain reasoning."""
    text = f"<|tools|>{json.dumps(tools)}<|end|>" if tools else ""
    for message in messages:
        text += f"<|{message['role']}|>{message.get('content') or ''}<|end|>"
    return text + ("<|assistant|>" if add_generation_prompt else "")


def parse(text: str) -> tuple[list[dict[str, Any]], bool]:
    """A rendered prompt (:func:`render`, maybe continued) back into chat messages, and
    whether its last message is an open assistant turn (the text generated so far)."""
    messages: list[dict[str, Any]] = []
    role: str | None = None
    for part in _SPLIT.split(text):
        if part in (f"<|{r}|>" for r in ROLES):
            role = part[2:-2]
            messages.append({"role": role, "content": ""})
        elif part == "<|end|>":
            role = None
        elif part == "<|tools|>":
            role = "tools"
        elif part and role not in (None, "tools"):
            messages[-1]["content"] += part
    return messages, role == "assistant"


FAMILY_TOKENS: dict[str, dict[str, str]] = {
    "deepseek_r1_distill": {"bos_token": DEEPSEEK[0], "eos_token": DEEPSEEK[1]},
    "deepseek_v3_1": {"bos_token": DEEPSEEK[0], "eos_token": DEEPSEEK[1]},
    "ministral_3_reasoning": {"bos_token": "<s>", "eos_token": "</s>"},
}
"""``bos_token`` / ``eos_token`` of the families whose templates print them (DeepSeek's as in
litellm's copy of R1-Distill's ``tokenizer_config.json``, Mistral's ``<s>`` / ``</s>``)."""

SPECIAL_FAMILIES = ("gpt_oss", "ministral_3_reasoning")
"""Families whose tokenizers list their markers (:data:`HARMONY_AND_MISTRAL`) as special."""


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template and what its tokenizer adds: the special tokens the
    template may print and the markers listed as special tokens (:data:`HARMONY_AND_MISTRAL`
    for gpt-oss and Mistral). :meth:`named` loads one from ``tests/chat_templates``."""

    source: str
    special_tokens_map: dict[str, str] = field(default_factory=dict)
    special: tuple[str, ...] = ()

    @classmethod
    def named(cls, name: str) -> ChatTemplate:
        source = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        return cls(source, FAMILY_TOKENS.get(name, {}),
                   HARMONY_AND_MISTRAL if name in SPECIAL_FAMILIES else ())

    @cached_property
    def _compiled(self) -> Any:
        # set up as transformers sets up its own (vLLM renders through apply_chat_template),
        # without its {% generation %} tag, which none of these templates uses; strftime_now
        # is a fixed day, so a render is the same every run
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise,
                           strftime_now=lambda fmt: datetime(2026, 1, 1).strftime(fmt))
        return env, env.from_string(self.source)

    @cached_property
    def variables(self) -> frozenset[str]:
        """The names the template reads: the only ``chat_template_kwargs`` vLLM passes on."""
        from jinja2 import meta

        env, _ = self._compiled
        return frozenset(meta.find_undeclared_variables(env.parse(self.source)))

    def render(self, body: dict[str, Any]) -> str:
        """A ``/tokenize`` (or chat) body's chat as vLLM renders it: :func:`conversation`,
        ``tools``, ``add_generation_prompt`` (``continue_final_message`` cuts the render
        after the last message's text, as transformers does), the special tokens, and the
        ``chat_template_kwargs`` the template reads (vLLM drops the others)."""
        _, template = self._compiled
        messages = conversation(body["messages"])
        tag = "CONTINUE_FINAL_MESSAGE_TAG "
        continued = bool(body.get("continue_final_message"))
        if continued:
            messages[-1]["content"] += tag
        kwargs = {k: v for k, v in (body.get("chat_template_kwargs") or {}).items()
                  if k in self.variables and k not in _CONSUMED}
        text = str(template.render(
            messages=messages, tools=body.get("tools"), documents=None,
            add_generation_prompt=bool(body.get("add_generation_prompt", not continued)),
            **{**self.special_tokens_map, **kwargs}))
        return text[:text.rindex(tag)] if continued else text


_CONSUMED = frozenset({"add_generation_prompt", "continue_final_message", "tools", "documents",
                       "chat_template", "tokenize"})
"""Named parameters of ``apply_chat_template``: never template variables from kwargs."""


def conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as vLLM hands them to a template: ``content`` a string (text parts joined
    by newlines, ``""`` for none), tool-call ``arguments`` parsed into objects, an assistant's
    ``reasoning`` (or ``reasoning_content``) under both names, a tool's ``tool_call_id``."""
    result = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(part.get("text", "")) for part in content
                                if isinstance(part, dict) and part.get("type") == "text")
        turn: dict[str, Any] = {"role": message["role"], "content": content or ""}
        if message["role"] == "assistant":
            if message.get("tool_calls"):
                turn["tool_calls"] = [_parsed(call) for call in deepcopy(message["tool_calls"])]
            reasoning = message.get("reasoning", message.get("reasoning_content"))
            if reasoning is not None:
                turn["reasoning"] = turn["reasoning_content"] = reasoning
        elif message["role"] == "tool" and "tool_call_id" in message:
            turn["tool_call_id"] = message["tool_call_id"]
        if isinstance(message.get("name"), str):
            turn["name"] = message["name"]
        result.append(turn)
    return result


def _parsed(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments else {}
        except ValueError:
            arguments = {}
    call["function"]["arguments"] = arguments if isinstance(arguments, dict) else {}
    return call


@dataclass
class Script:
    """What the fake model says: a reasoning stream, probe replies, and injected faults."""

    reasoning: list[str] = field(default_factory=lambda: [f"r{i} " for i in range(100_000)])
    probes: list[str] = field(default_factory=list)
    probe_suffix: str = DEFAULT_PROBE_SUFFIX
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses for the next requests
    refuse_message: str | None = None  # answer every request with a 400 carrying this text
    delay_s: float = 0.0
    drop_next: int = 0  # close the connection unanswered for the next generation requests
    generation_delay_s: float = 0.0  # every generation request (either route) waits this long
    probe_delay_s: float = 0.0  # every probe reply waits this long (a stream runs ahead)
    # A streamed reply (``stream=True`` on /v1/completions) waits this long after each token,
    # and with ``hold_after`` sends that many tokens, then holds the connection open (a model
    # still decoding) until the client disconnects.
    token_delay_s: float = 0.0
    hold_after: int | None = None
    logprob: float = -0.25  # every generated token's logprob on the token route
    # The context window, reported by /tokenize and /v1/models (unless switched off, as a
    # server that does not report it): a token request whose prompt plus max_tokens passes
    # it is refused (400).
    max_model_len: int = 32768
    tokenize_reports_limit: bool = True
    models_report_limit: bool = True
    log: list[dict[str, Any]] = field(default_factory=list)
    # Per-question scripts, keyed by the last user message: many programs can differ. Their
    # requests are logged in both their own script and this one.
    questions: dict[str, Script] = field(default_factory=dict)
    # Per-seed scripts, keyed by the request's ``seed``: each path of a multi-path program
    # (its own seed) follows its own script, whatever order concurrent requests arrive in.
    seeds: dict[int, Script] = field(default_factory=dict)
    _probe_calls: int = 0

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.fail_next:
            status = self.fail_next.pop(0)
            return status, {"object": "error", "message": f"scripted failure {status}",
                            "type": "InternalServerError", "code": status}
        if self.refuse_message is not None:
            return 400, {"object": "error", "message": self.refuse_message,
                         "type": "BadRequestError", "code": 400}
        messages = body["messages"]
        user = [m["content"] for m in messages if m["role"] == "user"]
        own = self.questions.get(user[-1]) if user and self.questions else None
        own = own or self.seeds.get(body.get("seed", -1))
        if own is not None:
            status, payload = own.reply(body)
            self.log.extend(own.log[-1:] if status == 200 else [])
            return status, payload
        prefix = messages[-1]["content"] if body.get("continue_final_message") else ""
        prompt_tokens = sum(len(tokens(m["content"])) + 4 for m in messages)
        max_tokens = int(body.get("max_tokens") or 16)
        if prefix.endswith(self.probe_suffix):
            kind = "probe"
            time.sleep(self.probe_delay_s)
            text = self.probes[min(self._probe_calls, len(self.probes) - 1)] if self.probes else ""
            self._probe_calls += 1
            out = tokens(text)[:max_tokens]
            finish = "length" if len(tokens(text)) > max_tokens else "stop"
        else:
            kind = "reason"
            # the token route says how many ids were generated so far (one per scripted token)
            start = int(body.get("_prefix_ids", len(tokens(prefix))))
            rest = self.reasoning[start:]
            out = rest[:max_tokens]
            finish = "length" if len(rest) > max_tokens else "stop"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(out),
                 "total_tokens": prompt_tokens + len(out)}
        self.log.append({"kind": kind, "body": body, "usage": usage, "text": "".join(out),
                         "tokens": out})
        return 200, {
            "id": f"cmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", SERVED_NAME),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": "".join(out)}}],
            "usage": usage,
        }

    def total(self, kind: str, field_name: str) -> int:
        return sum(e["usage"][field_name] for e in self.log if e["kind"] == kind)

    def usage(self) -> dict[str, int]:
        """The ``Usage`` a run must report for what this server answered (no reward model)."""
        return {
            "reasoning_tokens": self.total("reason", "completion_tokens"),
            "reasoning_prompt_tokens": self.total("reason", "prompt_tokens"),
            "probe_prompt_tokens": self.total("probe", "prompt_tokens"),
            "probe_completion_tokens": self.total("probe", "completion_tokens"),
            "reward_prompt_tokens": 0,
            "reward_completion_tokens": 0,
            "answer_tokens": 0,
            "discarded_tokens": 0,  # no stream: nothing runs past an exit
        }
