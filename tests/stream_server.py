"""A scripted token-API server that streams: vLLM's ``/tokenize`` and ``/v1/completions``
(token-id prompts, ``return_token_ids``), with ``stream=True`` answered as server-sent events.

A token is a ``\\S+\\s*`` run, its id its index in a shared vocabulary. Stateless like vLLM: a
reasoning request's prompt tells the server how far the script has got. A streamed reasoning
request sends one token per event, at most ``send_limit`` tokens of the script in all (then it
holds the connection open, as a slow model would), and records when the client disconnects.
Probes (the prompt ends with the probe suffix) are ordinary JSON answers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dynasor_graph import Endpoint
from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

RENDERED = ["<|user|> ", "@Q ", "<|assistant|> ", "<think>\n"]


def split(text: str) -> list[str]:
    """The scripted tokenizer."""
    return re.findall(r"\S+\s*", text)


@dataclass
class StreamScript:
    """The model's reasoning (tokens), its probe replies, pacing, and a log of requests."""

    stream: list[str] = field(default_factory=lambda: [f"r{i} " for i in range(400)])
    probes: list[str] = field(default_factory=lambda: ["1}"])
    send_limit: int | None = None  # streamed tokens of the script sent in all, then hold
    token_delay_s: float = 0.0
    probe_delay_s: float = 0.0
    fail_streams: list[int] = field(default_factory=list)  # statuses for the next streams
    vocab: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self, tokens: list[str]) -> list[int]:
        with self.lock:
            for token in tokens:
                if token not in self.vocab:
                    self.vocab.append(token)
            return [self.vocab.index(t) for t in tokens]

    def tokenize(self, body: dict[str, Any]) -> list[int]:
        return self.ids(RENDERED if "messages" in body else split(body["prompt"]))

    def is_probe(self, prompt: list[int]) -> bool:
        suffix = self.ids(split(DEFAULT_PROBE_SUFFIX))
        return prompt[-len(suffix):] == suffix

    def entry(self, kind: str, body: dict[str, Any], headers: Any) -> dict[str, Any]:
        entry = {"kind": kind, "prompt": len(body["prompt"][0]), "max_tokens": body["max_tokens"],
                 "sent": 0, "disconnected": False, "priority": body.get("priority"),
                 "session": headers.get("X-Session-ID")}
        with self.lock:
            self.log.append(entry)
        return entry

    def probe_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        count = sum(1 for e in self.log if e["kind"] == "probe") - 1
        out = split(self.probes[min(count, len(self.probes) - 1)])[: body["max_tokens"]]
        return self.payload(body, out, "stop")

    def reasoning(self, body: dict[str, Any]) -> tuple[list[str], str]:
        done = len(body["prompt"][0]) - len(RENDERED)
        out = self.stream[done: done + body["max_tokens"]]
        return out, "length" if done + len(out) < len(self.stream) else "stop"

    def payload(self, body: dict[str, Any], out: list[str], finish: str | None,
                start: int = 0) -> dict[str, Any]:
        offsets, position = [], start
        for token in out:
            offsets.append(position)
            position += len(token)
        prompt = len(body["prompt"][0])
        return {"choices": [{"index": 0, "text": "".join(out), "finish_reason": finish,
                             "token_ids": self.ids(out), "logprobs": {
                                 "text_offset": offsets, "tokens": out,
                                 "token_logprobs": [-0.5] * len(out)}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(out),
                          "total_tokens": prompt + len(out)},
                "object": "text_completion", "model": body["model"], "id": "x", "created": 0}


class _Handler(BaseHTTPRequestHandler):
    script: StreamScript
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        script = self.script
        if self.path == "/tokenize":
            return self._json({"tokens": script.tokenize(body)})
        if script.is_probe(body["prompt"][0]):
            script.entry("probe", body, self.headers)
            time.sleep(script.probe_delay_s)
            return self._json(script.probe_reply(body))
        entry = script.entry("stream" if body.get("stream") else "reason", body, self.headers)
        if body.get("stream") and script.fail_streams:
            status = script.fail_streams.pop(0)
            return self._json({"object": "error", "message": f"scripted failure {status}",
                               "code": status}, status)
        out, finish = script.reasoning(body)
        if not body.get("stream"):
            entry["sent"] = len(out)
            return self._json(script.payload(body, out, finish))
        self._stream(body, entry, out, finish)

    def _stream(self, body: dict[str, Any], entry: dict[str, Any], out: list[str],
                finish: str) -> None:
        script = self.script
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        done = len(body["prompt"][0]) - len(RENDERED)
        limit = len(out) if script.send_limit is None else max(0, script.send_limit - done)
        position = 0
        try:
            for index, token in enumerate(out[:limit]):
                last = index == len(out) - 1
                event = script.payload(body, [token], finish if last else None, position)
                event.pop("usage")
                self._event(event)
                position += len(token)
                entry["sent"] += 1
                time.sleep(script.token_delay_s)
            if limit >= len(out):
                prompt = len(body["prompt"][0])
                self._event({"choices": [], "usage": {"prompt_tokens": prompt,
                             "completion_tokens": len(out), "total_tokens": prompt + len(out)}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                return
            for _ in range(1000):  # hold (a model still decoding) until the client leaves
                self.wfile.write(b": waiting\n\n")
                self.wfile.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            entry["disconnected"] = True
        self.close_connection = True

    def _event(self, event: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.flush()

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def stream_server(script: StreamScript | None = None) -> Iterator[tuple[Endpoint, StreamScript]]:
    """Serve ``script`` on a free loopback port; yields the endpoint (token mode) and script."""
    script = script or StreamScript()
    handler = type("Handler", (_Handler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(model="m", api_base=f"http://127.0.0.1:{server.server_address[1]}/v1",
                       timeout_s=10, continuation="tokens", max_retries=0), script
    finally:
        server.shutdown()
        server.server_close()
