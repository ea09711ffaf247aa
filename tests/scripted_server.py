"""A deterministic OpenAI-compatible server on loopback that scripts a model's replies.

Reasoning requests continue a scripted token stream from where the assistant prefix ends, so
the server is stateless about reasoning; probe requests (the prefix ends with the probe suffix)
return the next scripted probe reply. Tokens are ``\\S+\\s*`` runs; ``usage`` counts them.

It speaks both routes of the library:

- chat completions (``/v1/chat/completions``, the text route), answered by ``Script.reply``;
  with the token API on, a chat whose rendered prompt plus ``max_tokens`` passes
  ``max_model_len`` is refused (400) as vLLM refuses it;
- vLLM's token API (the token route, ``token_api=True``): ``/tokenize`` renders chat messages
  through the chat template or tokenizes a plain prompt, answering the ids and
  ``max_model_len`` (also listed by ``/v1/models``); ``/detokenize``; ``/tokenizer_info`` (the
  special tokens); ``/v1/completions`` refuses, as vLLM does (400), a request whose prompt
  plus ``max_tokens`` passes ``max_model_len``, else takes a token-id prompt, finds the chat it
  continues and the text
  generated so far, asks the same ``Script.reply`` for the text, and answers it as vLLM does:
  ``token_ids`` (``return_token_ids``), ``logprobs`` with ``text_offset`` and
  ``token_logprobs``, usage counted in ids, and with ``stream=True`` as server-sent events
  (:meth:`ScriptedServer.stream`). A token's id is its index in the process's vocabulary
  (:class:`~scripted_model.Vocabulary`); markers are one id each, and so is each token of
  a scripted reply (``Script.reasoning``'s entries), so the reasoning stream continues from the
  number of ids generated so far, as a real model's would.

The chat template is the scripted one (:func:`~scripted_model.render`, no thinking
markers), whose prompts decode back into their chat (:func:`~scripted_model.parse`), or a
model's real one (``chat_template="qwen3"``, a file of ``tests/chat_templates``, rendered as
vLLM renders it: :class:`~scripted_model.ChatTemplate`); a real template's prompt cannot be
parsed back, so the server finds the longest chat it rendered that the prompt starts with.

``/metrics`` serves vLLM's ``vllm:prompt_tokens`` and ``vllm:generation_tokens`` counters,
counted from the usage of every generation the server answered.

Faults are scripted per generation request on both routes (``fail_next``: 429/5xx,
``refuse_message``: 400, ``drop_next``: the connection closes unanswered,
``generation_delay_s``: a slow reply) and on every POST (``delay_s``); a refused connection
is a port nobody listens on (``closed_port()``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate
from typing import Any

from scripted_model import (
    SERVED_NAME,
    VOCABULARY,
    ChatTemplate,
    Script,
    conversation,
    parse,
    render,
    tokens,
)

__all__ = ["SERVED_NAME", "ChatTemplate", "Script", "ScriptedServer", "Stream", "Worker",
           "closed_port", "tokens"]


def closed_port() -> int:
    """A free loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stream:
    """One streamed ``/v1/completions`` reply: its request body, its prompt and the tokens
    the script answered (in ids), how many were sent, and whether the client disconnected
    before the end."""

    body: dict[str, Any]
    prompt: int
    tokens: int
    sent: int = 0
    disconnected: bool = False


class ScriptedServer:
    """Serves a script on 127.0.0.1 at a free port, on both routes; a context manager.

    The script is a :class:`Script`, or any object whose ``reply(body)`` returns the HTTP
    status and JSON payload for one chat-completions request (the agent tests script tool calls).
    ``token_api=True`` (or setting ``token_api`` before the requests) also serves vLLM's token
    API; without it ``/tokenize`` answers 404, as a server without it does, so an endpoint's
    ``continuation="auto"`` takes the text route, which the tests written for it expect.
    ``chat_template`` (a name in ``tests/chat_templates`` or a :class:`ChatTemplate`) renders
    chats through a model's real template instead of the scripted one, and turns the token API
    on.
    """

    def __init__(self, script: Any = None, port: int = 0, *, token_api: bool = False,
                 serialize: bool = False, chat_template: str | ChatTemplate | None = None,
                 keep_alive: bool = False) -> None:
        self.script: Any = script or Script()
        self.vocab = VOCABULARY
        self.template = (ChatTemplate.named(chat_template) if isinstance(chat_template, str)
                         else chat_template)
        self.token_api = token_api or self.template is not None
        # the tokenizer's special tokens: dropped from returned text unless the request says
        # skip_special_tokens=false, as vLLM does
        self.special = frozenset(self.template.special if self.template else ())
        # serialize: one script reply at a time (a script that is not thread-safe under load);
        # off by default, so a script can observe how many requests are in flight
        self._reply_lock: threading.Lock | None = threading.Lock() if serialize else None
        # Every POST (and GET /v1/models) as it arrived, whatever the script answered:
        # ``path``, ``headers`` (keys lower-cased) and the JSON ``body``. Security tests read
        # it: a key must arrive here.
        self.requests: list[dict[str, Any]] = []
        self.streams: list[Stream] = []  # every streamed reply, in order of arrival
        self._rendered: dict[tuple[int, ...], dict[str, Any]] = {}  # a real template's renders
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # keep_alive: HTTP/1.1 connections the client reuses, as vLLM's (a benchmark of
            # the client's CPU); off, each reply closes its connection (HTTP/1.0)
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                _send(self, status, payload)

            def do_GET(self) -> None:
                path = self.path.rstrip("/")
                if path.endswith("/models"):
                    outer.requests.append({"path": self.path, "body": None, "headers": {
                        key.lower(): value for key, value in self.headers.items()}})
                    card: dict[str, Any] = {"id": SERVED_NAME, "object": "model"}
                    if getattr(outer.script, "models_report_limit", True):
                        card["max_model_len"] = getattr(outer.script, "max_model_len", 32768)
                    self._send(200, {"object": "list", "data": [card]})
                elif path == "/health":
                    self._send(200, {})
                elif outer.token_api and path == "/tokenizer_info":
                    self._send(200, {"tokenizer_class": "ScriptedTokenizer",
                                     "extra_special_tokens": sorted(outer.special)})
                elif path == "/metrics":
                    data = outer.metrics().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
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
                    self._send(*(outer.overflow(body) or outer.reply(body)))
                elif outer.token_api and path == "/tokenize":
                    self._send(200, outer.tokenize(body))
                elif outer.token_api and path == "/detokenize":
                    self._send(200, {"prompt": outer.vocab.decode(body["tokens"])})
                elif outer.token_api and path.endswith("/v1/completions") and body.get("stream"):
                    outer.stream(body, self)
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

    def overflow(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """vLLM's 400 for a chat request whose rendered prompt plus ``max_tokens`` passes
        ``max_model_len``, on a server with the token API (which counts in ids); ``None`` for
        one that fits (or a chat-only server, which counts no ids)."""
        if not self.token_api:
            return None
        prompt = len(self.vocab.encode(self.rendered(body)))
        limit = getattr(self.script, "max_model_len", 32768)
        wanted = int(body.get("max_tokens") or 1)
        if prompt + wanted <= limit:
            return None
        return _error(f"This model's maximum context length is {limit} tokens. However, you "
                      f"requested {prompt + wanted} tokens ({prompt} in the messages, {wanted} "
                      "in the completion). Please reduce the length of the messages or "
                      "completion.")

    def metrics(self) -> str:
        """vLLM's token counters in Prometheus text, counted from what the server answered:
        every logged generation's usage, a stream counting only the tokens it sent (as vLLM
        counts what it decoded before a client left)."""
        log = list(getattr(self.script, "log", []))
        with self._lock:
            unsent = sum(s.tokens - s.sent for s in self.streams)
        counts = {"prompt": sum(e["usage"]["prompt_tokens"] for e in log),
                  "generation": sum(e["usage"]["completion_tokens"] for e in log) - unsent}
        label = f'{{model_name="{SERVED_NAME}"}}'
        return "".join(f"# TYPE vllm:{name}_tokens counter\n"
                       f"vllm:{name}_tokens_total{label} {float(count)}\n"
                       for name, count in counts.items())

    def rendered(self, body: dict[str, Any]) -> str:
        """A chat request's ``messages`` and ``tools`` through this server's chat template."""
        if self.template is not None:
            return self.template.render(body)
        return render(body["messages"], body.get("tools"), body.get("add_generation_prompt", True))

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``/tokenize``: chat ``messages`` (and ``tools``) through the chat template,
        or a plain ``prompt``; the ids, their count and the model's context length."""
        text = self.rendered(body) if "messages" in body else str(body.get("prompt", ""))
        ids = self.vocab.encode(text)
        if self.template is not None and "messages" in body:
            with self._lock:
                self._rendered[tuple(ids)] = body
        answer: dict[str, Any] = {"count": len(ids), "tokens": ids, "token_strs": None}
        if getattr(self.script, "tokenize_reports_limit", True):
            answer["max_model_len"] = getattr(self.script, "max_model_len", 32768)
        return answer

    def chat(self, ids: list[int]) -> tuple[list[dict[str, Any]], int | None] | None:
        """The chat a token prompt continues and the ids generated so far in its open
        assistant turn (its last message; ``None`` if no turn is open); ``None`` for a
        prompt that continues no chat this server rendered (a real template's)."""
        if self.template is None:
            messages, open_turn = parse(self.vocab.decode(ids))
            if not open_turn:
                return messages, None
            opener = self.vocab.encode("<|assistant|>")[0]
            return messages, len(ids) - 1 - max(i for i, t in enumerate(ids) if t == opener)
        with self._lock:
            starts = [r for r in self._rendered if list(r) == ids[:len(r)]]
            if not starts:
                return None
            prompt = max(starts, key=len)
            chat = conversation(self._rendered[prompt]["messages"])
        turn = {"role": "assistant", "content": self.vocab.decode(ids[len(prompt):])}
        return [*chat, turn], len(ids) - len(prompt)

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """vLLM's ``/v1/completions`` for a token-id (or text) prompt: the prompt's chat
        (:meth:`chat`) answered by the script's ``reply`` as a continued assistant turn, then
        returned with ids, offsets, logprobs and usage counted in ids."""
        ids = self.prompt_ids(body)
        limit = getattr(self.script, "max_model_len", 32768)
        wanted = int(body.get("max_tokens") or 16)  # vLLM's default
        if len(ids) + wanted > limit:  # vLLM's refusals (the prompt alone; with max_tokens)
            return _error(f"This model's maximum context length is {limit} tokens. However, "
                          + (f"your prompt contains {len(ids)} input tokens, which exceeds "
                             "this limit even without any output tokens." if len(ids) > limit
                             else f"you requested {len(ids) + wanted} tokens ({len(ids)} in "
                             f"the messages, {wanted} in the completion). Please reduce the "
                             "length of the messages or completion."))
        if not all(isinstance(i, int) and 0 <= i < len(self.vocab.words) for i in ids):
            return _error("prompt holds token ids outside the vocabulary")
        found = self.chat(ids)
        if found is None:
            return _error("the prompt continues no chat this server rendered")
        messages, generated = found
        chat = {key: value for key, value in body.items()
                if key not in ("prompt", "logprobs", "return_token_ids", "echo")}
        chat.update(messages=messages, continue_final_message=generated is not None,
                    add_generation_prompt=generated is None)
        if generated is not None:  # how far the reply has got, in ids
            chat["_prefix_ids"] = generated
        status, payload = self.reply(chat)
        if status != 200:
            return status, payload
        choice = payload["choices"][0]
        logged = next((e for e in reversed(getattr(self.script, "log", []))
                       if e.get("body") is chat and "tokens" in e), None)
        out = (self.vocab.ids(logged["tokens"]) if logged
               else self.vocab.encode(choice["message"].get("content") or ""))
        skip = body.get("skip_special_tokens", True)
        words = ["" if skip and self.vocab.words[t] in self.special else self.vocab.words[t]
                 for t in out]
        offsets = [0, *accumulate(len(w) for w in words)][:len(words)]
        usage = payload["usage"]  # the very dict the script logged: its counts become ids
        usage.update(prompt_tokens=len(ids), completion_tokens=len(out),
                     total_tokens=len(ids) + len(out))
        answer: dict[str, Any] = {"index": 0, "text": "".join(words),
                                  "finish_reason": choice["finish_reason"], "logprobs": None}
        if body.get("return_token_ids"):
            answer["token_ids"] = out
        if body.get("logprobs") is not None:
            chosen = [getattr(self.script, "logprob", -0.25)] * len(out)
            answer["logprobs"] = {"text_offset": offsets, "token_logprobs": chosen,
                                  "tokens": words, "top_logprobs": [
                                      {word: p} for word, p in zip(words, chosen, strict=True)]}
        return 200, {"id": payload.get("id", "cmpl"), "object": "text_completion",
                     "created": payload.get("created", 0), "model": body.get("model"),
                     "choices": [answer], "usage": usage}

    def prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """A ``/v1/completions`` prompt as ids: the first of a list of token-id prompts, a
        token-id list, or text through the tokenizer."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        return list(prompt) if isinstance(prompt, list) else self.vocab.encode(str(prompt))

    def stream(self, body: dict[str, Any], handler: BaseHTTPRequestHandler) -> None:
        """A ``stream=True`` ``/v1/completions`` as vLLM streams it: the :meth:`complete`
        answer as one event a token (``text``; ``token_ids``, and ``prompt_token_ids`` on the
        first, with ``return_token_ids``; ``logprobs`` offset from the stream's start), the
        finish reason on the last, a usage event with ``stream_options.include_usage``, then
        ``data: [DONE]``. The script paces it (``token_delay_s`` after each token;
        ``hold_after``: that many tokens, then the connection held open until the client
        leaves, for at most 10 s); :attr:`streams` records what was sent and the disconnect."""
        status, payload = self.complete({**body, "return_token_ids": True, "logprobs": 0})
        if status != 200:
            _send(handler, status, payload)
            return
        choice, head = payload["choices"][0], {k: v for k, v in payload.items()
                                               if k not in ("choices", "usage")}
        ids, logprobs = choice["token_ids"], choice["logprobs"]
        record = Stream(body, len(self.prompt_ids(body)), len(ids))
        with self._lock:
            self.streams.append(record)
        hold = getattr(self.script, "hold_after", None)
        count = len(ids) if hold is None else min(hold, len(ids))
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")  # the stream ends with its connection
        handler.close_connection = True
        handler.end_headers()
        try:
            # one event a token; an empty reply is one closing event
            parts = [slice(i, i + 1) for i in range(count)] if ids else [slice(0, 0)]
            for part in parts:
                piece: dict[str, Any] = {
                    "index": 0, "text": "".join(logprobs["tokens"][part]), "logprobs": None,
                    "finish_reason": choice["finish_reason"] if part.stop == len(ids) else None,
                    "stop_reason": None, "prompt_token_ids": None, "token_ids": None}
                if body.get("logprobs") is not None:
                    piece["logprobs"] = {key: value[part] for key, value in logprobs.items()}
                if body.get("return_token_ids"):
                    piece["token_ids"] = ids[part]
                    if part.start == 0:
                        piece["prompt_token_ids"] = self.prompt_ids(body)
                _event(handler, {**head, "choices": [piece]})
                record.sent += part.stop - part.start
                time.sleep(getattr(self.script, "token_delay_s", 0.0))
            if count == len(ids):
                if (body.get("stream_options") or {}).get("include_usage"):
                    _event(handler, {**head, "choices": [], "usage": payload["usage"]})
                handler.wfile.write(b"data: [DONE]\n\n")
                return
            for _ in range(1000):  # hold (a model still decoding) until the client leaves
                handler.wfile.write(b": decoding\n\n")
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            record.disconnected = True
        handler.close_connection = True

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


def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _event(handler: BaseHTTPRequestHandler, event: dict[str, Any]) -> None:
    handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())


def _error(message: str) -> tuple[int, dict[str, Any]]:
    """vLLM's 400 for a request it refuses."""
    return 400, {"object": "error", "type": "BadRequestError", "code": 400, "message": message}


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
