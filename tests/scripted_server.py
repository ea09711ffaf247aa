"""A deterministic OpenAI-compatible server on loopback that scripts a model's replies.

Reasoning requests continue a scripted token stream from where the assistant prefix ends, so
the server is stateless about reasoning; probe requests (the prefix ends with the probe suffix)
return the next scripted probe reply. Tokens are ``\\S+\\s*`` runs; ``usage`` counts them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dynasor_graph._probe import DEFAULT_PROBE_SUFFIX

SERVED_NAME = "scripted"


def tokens(text: str) -> list[str]:
    """The scripted tokenizer: whitespace-separated runs, each with its trailing space."""
    return re.findall(r"\S+\s*|\s+", text)


@dataclass
class Script:
    """What the fake model says: a reasoning stream, probe replies, and injected faults."""

    reasoning: list[str] = field(default_factory=lambda: [f"r{i} " for i in range(100_000)])
    probes: list[str] = field(default_factory=list)
    probe_suffix: str = DEFAULT_PROBE_SUFFIX
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses for the next requests
    refuse_message: str | None = None  # answer every request with a 400 carrying this text
    delay_s: float = 0.0
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
            start = len(tokens(prefix))
            rest = self.reasoning[start:]
            out = rest[:max_tokens]
            finish = "length" if len(rest) > max_tokens else "stop"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(out),
                 "total_tokens": prompt_tokens + len(out)}
        self.log.append({"kind": kind, "body": body, "usage": usage, "text": "".join(out)})
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
    """Serves a script on 127.0.0.1 at a free port; a context manager.

    The script is a :class:`Script`, or any object whose ``reply(body)`` returns the HTTP
    status and JSON payload for one chat-completions request (the agent tests script tool calls).
    """

    def __init__(self, script: Any = None, port: int = 0) -> None:
        self.script = script or Script()
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
                else:
                    self._send(404, {"message": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append({"path": self.path, "body": body, "headers": {
                    key.lower(): value for key, value in self.headers.items()}})
                if getattr(outer.script, "delay_s", 0):
                    time.sleep(outer.script.delay_s)
                if self.path.rstrip("/").endswith("/classify") and hasattr(outer.script,
                                                                           "classify"):
                    self._send(*outer.script.classify(body))
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"message": f"no route {self.path}"})
                    return
                status, payload = outer.script.reply(body)
                self._send(status, payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # 0: a free port
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests_to(self, suffix: str) -> list[dict[str, Any]]:
        """The logged POSTs whose path ends with ``suffix`` (e.g. ``/classify``)."""
        return [r for r in self.requests if r["path"].rstrip("/").endswith(suffix)]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
