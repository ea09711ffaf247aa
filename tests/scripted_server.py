"""A deterministic OpenAI-compatible server on loopback that scripts a model's replies.

Reasoning requests continue a scripted token stream from where the assistant prefix ends, so
the server is stateless about reasoning; probe requests (the prefix ends with the probe suffix)
return the next scripted probe reply. Tokens are ``\\S+\\s*`` runs; ``usage`` counts them.

It speaks both routes of the library:

- chat completions (``/v1/chat/completions``, the text route), answered by ``Script.reply``;
- vLLM's token API (the token route): ``/tokenize`` renders chat messages through a scripted
  chat template (:func:`render`) or tokenizes a plain prompt, answering the ids and
  ``max_model_len``; ``/v1/completions`` takes a token-id prompt, decodes it back into the chat
  and its open assistant turn (:func:`parse`), asks the same ``Script.reply`` for the text, and
  answers it as vLLM does: ``token_ids`` (``return_token_ids``), ``logprobs`` with
  ``text_offset`` and ``token_logprobs``, and usage counted in ids. A token's id is its index in
  the server's vocabulary (:class:`Vocabulary`); role markers and think markers are one id each,
  and so is each token of a scripted reply (``Script.reasoning``'s entries), so the reasoning
  stream continues from the number of ids generated so far, as a real model's would.

Faults are scripted per generation request on both routes (``fail_next``: 429/5xx,
``refuse_message``: 400, ``drop_next``: the connection closes unanswered,
``generation_delay_s``: a slow reply) and on every POST (``delay_s``); a refused connection
is a port nobody listens on (``closed_port()``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

SERVED_NAME = "scripted"


ROLES = ("system", "user", "assistant", "tool")
SPECIAL = (*(f"<|{role}|>" for role in ROLES), "<|tools|>", "<|end|>", "<think>", "</think>")
_SPECIAL = re.compile("(" + "|".join(re.escape(marker) for marker in SPECIAL) + ")")


def tokens(text: str) -> list[str]:
    """The scripted tokenizer: whitespace-separated runs, each with its trailing space."""
    return re.findall(r"\S+\s*|\s+", text)


def pieces(text: str) -> list[str]:
    """The token route's tokenizer: a special marker (:data:`SPECIAL`) is one token, the rest
    is split by :func:`tokens`; joining the pieces gives ``text`` back."""
    return [piece for part in _SPECIAL.split(text) if part
            for piece in ([part] if part in SPECIAL else tokens(part))]


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


def closed_port() -> int:
    """A free loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render(messages: list[dict[str, Any]], tools: list[Any] | None = None,
           add_generation_prompt: bool = True) -> str:
    """The scripted chat template: ``<|tools|>json<|end|>``, each message as
    ``<|role|>content<|end|>``, then ``<|assistant|>`` opening the reply."""
    text = f"<|tools|>{json.dumps(tools)}<|end|>" if tools else ""
    for message in messages:
        text += f"<|{message['role']}|>{message.get('content') or ''}<|end|>"
    return text + ("<|assistant|>" if add_generation_prompt else "")


def parse(text: str) -> tuple[list[dict[str, Any]], bool]:
    """A rendered prompt (:func:`render`, maybe continued) back into chat messages, and
    whether its last message is an open assistant turn (the text generated so far)."""
    messages: list[dict[str, Any]] = []
    role: str | None = None
    for part in _SPECIAL.split(text):
        if part in (f"<|{r}|>" for r in ROLES):
            role = part[2:-2]
            messages.append({"role": role, "content": ""})
        elif part == "<|end|>":
            role = None
        elif part == "<|tools|>":
            role = "tools"
        elif role not in (None, "tools"):
            messages[-1]["content"] += part
    return messages, role == "assistant"


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
    logprob: float = -0.25  # every generated token's logprob on the token route
    max_model_len: int = 32768  # a longer token prompt is refused (400), as vLLM does
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
            "discarded_tokens": 0,  # a non-streaming server: nothing runs past an exit
        }


class ScriptedServer:
    """Serves a script on 127.0.0.1 at a free port, on both routes; a context manager.

    The script is a :class:`Script`, or any object whose ``reply(body)`` returns the HTTP
    status and JSON payload for one chat-completions request (the agent tests script tool calls).
    ``token_api=True`` (or setting ``token_api`` before the requests) also serves vLLM's token
    API; without it ``/tokenize`` answers 404, as a server without it does, so an endpoint's
    ``continuation="auto"`` takes the text route, which the tests written for it expect.
    """

    def __init__(self, script: Any = None, port: int = 0, *, token_api: bool = False,
                 serialize: bool = False, opens_thinking: bool = False,
                 thinking_switch: bool = False) -> None:
        self.script = script or Script()
        self.vocab = VOCABULARY
        self.token_api = token_api
        # the generation prompt opens the thinking (``<think>\n``), as R1-Distill's template
        # does; else the model writes it, as Qwen3's does
        self.opens_thinking = opens_thinking
        # thinking_switch: the template has Qwen3's ``enable_thinking`` (off renders an empty
        # think block), so thinking-format detection can find the markers
        self.thinking_switch = thinking_switch
        # serialize: one script reply at a time (a script that is not thread-safe under load);
        # off by default, so a script can observe how many requests are in flight
        self._reply_lock: threading.Lock | None = threading.Lock() if serialize else None
        # Every POST as it arrived, whatever the script answered: ``path``, ``headers`` (keys
        # lower-cased) and the JSON ``body``. Security tests read it: a key must arrive here.
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": SERVED_NAME,
                                                                 "object": "model"}]})
                elif self.path.rstrip("/") == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"message": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append({"path": self.path, "body": body, "headers": {
                    key.lower(): value for key, value in self.headers.items()}})
                if getattr(outer.script, "delay_s", 0):
                    time.sleep(outer.script.delay_s)
                path = self.path.rstrip("/")
                if path.endswith("/classify") and hasattr(outer.script, "classify"):
                    self._send(*outer.script.classify(body))
                    return
                generation = path.endswith("/completions")
                if generation and getattr(outer.script, "drop_next", 0):
                    outer.script.drop_next -= 1
                    self.close_connection = True  # no status line: the client sees a drop
                    return
                if generation and getattr(outer.script, "generation_delay_s", 0):
                    time.sleep(outer.script.generation_delay_s)  # a slow reply
                if path.endswith("/chat/completions"):
                    self._send(*outer.reply(body))
                elif outer.token_api and path == "/tokenize":
                    self._send(200, outer.tokenize(body))
                elif outer.token_api and path == "/detokenize":
                    self._send(200, {"prompt": outer.vocab.decode(body["tokens"])})
                elif outer.token_api and path.endswith("/v1/completions"):
                    self._send(*outer.complete(body))
                else:
                    self._send(404, {"object": "error", "message": f"no route {self.path}",
                                     "type": "NotFoundError", "code": 404})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # 0: a free port
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The script's answer to one chat request (one at a time if ``serialize``)."""
        if self._reply_lock is None:
            return self.script.reply(body)  # type: ignore[no-any-return]
        with self._reply_lock:
            return self.script.reply(body)  # type: ignore[no-any-return]

    def rendered(self, body: dict[str, Any]) -> str:
        """A chat request's ``messages`` and ``tools`` through this server's chat template."""
        opening = body.get("add_generation_prompt", True)
        text = render(body["messages"], body.get("tools"), opening)
        switch = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
        if opening and self.thinking_switch and switch is False:
            return text + "<think>\n\n</think>\n\n"  # as Qwen3's template switches it off
        return text + ("<think>\n" if opening and self.opens_thinking else "")

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``/tokenize``: chat ``messages`` (and ``tools``) through :func:`render`, or
        a plain ``prompt``; the ids, their count and the model's context length."""
        text = self.rendered(body) if "messages" in body else str(body.get("prompt", ""))
        ids = self.vocab.encode(text)
        return {"count": len(ids), "tokens": ids, "token_strs": None,
                "max_model_len": getattr(self.script, "max_model_len", 32768)}

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """vLLM's ``/v1/completions`` for a token-id (or text) prompt: the prompt decoded
        into the chat it renders, answered by the script's ``reply`` as a continued assistant
        turn, then returned with ids, offsets, logprobs and usage counted in ids."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        ids = list(prompt) if isinstance(prompt, list) else self.vocab.encode(str(prompt))
        limit = getattr(self.script, "max_model_len", 32768)
        if len(ids) > limit:
            return 400, {"object": "error", "type": "BadRequestError", "code": 400,
                         "message": f"This model's maximum context length is {limit} tokens. "
                         f"However, your request has {len(ids)} input tokens."}
        if not all(isinstance(i, int) and 0 <= i < len(self.vocab.words) for i in ids):
            return 400, {"object": "error", "type": "BadRequestError", "code": 400,
                         "message": "prompt holds token ids outside the vocabulary"}
        messages, open_turn = parse(self.vocab.decode(ids))
        chat = {key: value for key, value in body.items()
                if key not in ("prompt", "logprobs", "return_token_ids", "echo")}
        chat.update(messages=messages, continue_final_message=open_turn,
                    add_generation_prompt=not open_turn)
        if open_turn:  # ids after the last <|assistant|>: how far the reply has got, in tokens
            opener = self.vocab.encode("<|assistant|>")[0]
            chat["_prefix_ids"] = len(ids) - 1 - max(i for i, t in enumerate(ids) if t == opener)
            turn = messages[-1]
            if self.opens_thinking and turn["content"].startswith("<think>\n"):
                # the generation prompt's own opener is not the model's text
                turn["content"] = turn["content"][len("<think>\n"):]
                chat["_prefix_ids"] -= len(self.vocab.encode("<think>\n"))
        status, payload = self.reply(chat)
        if status != 200:
            return status, payload
        choice = payload["choices"][0]
        text = choice["message"].get("content") or ""
        logged = next((e for e in reversed(getattr(self.script, "log", []))
                       if e.get("body") is chat and "tokens" in e), None)
        out = self.vocab.ids(logged["tokens"]) if logged else self.vocab.encode(text)
        offsets, position = [], 0
        for token in out:
            offsets.append(position)
            position += len(self.vocab.words[token])
        usage = payload["usage"]  # the very dict the script logged: its counts become ids
        usage.update(prompt_tokens=len(ids), completion_tokens=len(out),
                     total_tokens=len(ids) + len(out))
        answer: dict[str, Any] = {"index": 0, "text": text,
                                  "finish_reason": choice["finish_reason"], "logprobs": None}
        if body.get("return_token_ids"):
            answer["token_ids"] = out
        if body.get("logprobs") is not None:
            answer["logprobs"] = {
                "text_offset": offsets, "tokens": [self.vocab.words[t] for t in out],
                "token_logprobs": [getattr(self.script, "logprob", -0.25)] * len(out),
                "top_logprobs": None}
        return 200, {"id": payload.get("id", "cmpl"), "object": "text_completion",
                     "created": payload.get("created", 0), "model": body.get("model"),
                     "choices": [answer], "usage": usage}

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests_to(self, suffix: str) -> list[dict[str, Any]]:
        """The logged POSTs whose path ends with ``suffix`` (e.g. ``/classify``)."""
        return [r for r in self.requests if r["path"].rstrip("/").endswith(suffix)]

    def generations(self) -> list[dict[str, Any]]:
        """The logged generation requests, on either route (``/chat/completions`` or
        ``/v1/completions``): what a retry repeats."""
        return self.requests_to("/completions")

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class Worker(ScriptedServer):
    """A vLLM replica stand-in behind the router: chat completions only (``/tokenize`` is
    404, so ``continuation="auto"`` takes the text route), ``/health``, every probe answering
    ``5}``, replies one at a time; ``sessions`` lists each chat request's ``X-Session-ID``."""

    def __init__(self, name: str) -> None:
        super().__init__(Script(probes=["5}"] * 1000), serialize=True)
        self.name = name

    @property
    def url(self) -> str:
        """The replica's root URL (no ``/v1``), as the router is given it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def sessions(self) -> list[str | None]:
        return [r["headers"].get("x-session-id") for r in self.requests_to("/chat/completions")]

    def __enter__(self) -> Worker:
        super().__enter__()
        return self
