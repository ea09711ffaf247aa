"""The streamed token route: one ``/v1/completions`` generation read as it decodes.

Overlapped probing (``CoTConfig(probing="overlapped")``) reasons in ONE streamed request per
program and forks its probes from the tokens received so far, while the stream keeps decoding.
A :class:`LiveStream` is that request: opened with the program's prompt ids plus everything it
generated (token-exact, like :func:`~._token_route.extend`), read in the background into a
buffer, consumed ``n`` tokens at a time by :meth:`LiveStream.take`, and closed by
:meth:`LiveStream.close` — closing the connection is a client disconnect, which makes vLLM
abort the request. Tokens received but never taken are what the caller counts as discarded.

Its body is the token route's (:func:`~._token_route.completion_body`) with ``stream`` and
``stream_options`` added, and it goes through the endpoint's hooks like every other: the
admission hook admits it (for its whole life: a scheduler counts a stream as one request in
flight until it ends, and the tokens it received), the request-tagging hook tags it (vLLM's
``priority``, fixed at submission), and it carries the program's session header. It is read
with httpx over the loop's pooled client rather than the OpenAI SDK: one JSON decode per
server-sent event, no SDK object per token, and closing the response closes the connection at
once.

Streams live outside graph state, in a per-process registry (:func:`live_stream`) keyed by the
program's stream key; a stream of another event loop, or one whose position no longer matches
the state (a resume, a retry, time travel), is closed and reopened from the state's ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.config import get_stream_writer

from ._endpoint import Completion, Endpoint, admitted
from ._errors import EndpointError, EndpointUnreachable, ServerBusy, ServerRefused, body_message
from ._http import encode_json, json_headers, shared_client
from ._state import Usage
from ._token_route import completion_body
from ._transcript import generated_count

OnTokens = Callable[[str, int], None]
"""Called with each piece of text as it is taken, and its number of tokens."""


@dataclass(frozen=True)
class StreamUsage:
    """What the admission hook reads when a stream ends: the tokens the client received."""

    completion_tokens: int


@dataclass(frozen=True)
class _Received:
    usage: StreamUsage


class LiveStream:
    """One streamed generation continuing ``prompt``; ``base`` tokens of the program precede
    it (the generated ids already in its prompt), so :attr:`position` is the program's."""

    def __init__(self, endpoint: Endpoint, prompt: Sequence[int], base: int, *,
                 max_tokens: int, temperature: float, top_p: float, seed: int | None,
                 carry: LiveStream | None = None) -> None:
        self.endpoint = endpoint
        self.base = base
        self.loop = asyncio.get_running_loop()
        self.ids: list[int] = []
        self.text = ""
        self.offsets: list[int] = []  # where each received token starts in ``text``
        self.logprobs: list[float] = []
        if carry is not None:  # a re-submission keeps what the old stream ran ahead
            taken: int = carry.taken
            start = carry._text_at(taken)
            self.ids = carry.ids[taken:]
            self.text = carry.text[start:]
            self.offsets = [o - start for o in carry.offsets[taken:]]
            self.logprobs = carry.logprobs[taken:]
            prompt = [*prompt, *self.ids]
        self.carried = len(self.ids)  # received by the stream it replaced, counted there
        self.max_tokens = max_tokens - self.carried
        self.prompt_tokens = len(prompt)
        self.taken: int = 0
        self.takes = 0
        self.finish_reason: str | None = None
        self.error: Exception | None = None
        """Why the stream ended early: an endpoint error, or what the admission hook raised
        (a scheduler stopping the program); the next :meth:`take` raises it."""
        self._closing = False
        self._arrived = asyncio.Event()
        # the token route's body, streamed: the two cannot drift apart
        self._body = {**completion_body(endpoint, prompt, max_tokens=self.max_tokens,
                                        temperature=temperature, top_p=top_p, seed=seed),
                      "stream": True, "stream_options": {"include_usage": True}}
        self._headers = json_headers(endpoint)
        self.server_usage: dict[str, Any] | None = None
        self._task = asyncio.create_task(self._admitted())

    @property
    def position(self) -> int:
        """The program's generated-token count the next :meth:`take` starts at."""
        return self.base + self.taken

    @property
    def ended(self) -> bool:
        """True once the server finished (or failed, or the stream was closed)."""
        return self._task.done()

    @property
    def pending(self) -> int:
        """Tokens received and not taken: discarded if the stream is closed now."""
        return len(self.ids) - self.taken

    async def take(self, n: int, on_tokens: OnTokens | None = None) -> Completion:
        """The next ``n`` tokens (fewer if the generation ends first), as a
        :class:`Completion` whose ``prompt_tokens`` is the stream's prompt on its first take
        and 0 after (the prompt is processed once). ``finish_reason`` is ``length`` while
        the stream may go on, the server's once its last token is taken."""
        start, start_text = self.taken, self._text_at(self.taken)
        emitted = start
        while True:
            available = min(len(self.ids), start + n)
            if on_tokens is not None and available > emitted:
                on_tokens(self.text[self._text_at(emitted):self._text_at(available)],
                          available - emitted)
                emitted = available
            if available == start + n or self.ended:
                break
            self._arrived.clear()
            try:
                await self._arrived.wait()
            except asyncio.CancelledError:  # the run is abandoned (a timeout, a cancel):
                self.abort()  # stop the generation; a resume re-opens from the state
                raise
        if self.error is not None and available < start + n:
            raise self.error
        self.taken = available
        self.takes += 1
        end_text = self._text_at(available)
        finished = self.ended and self.taken == len(self.ids) and self.finish_reason
        return Completion(
            text=self.text[start_text:end_text],
            finish_reason=str(finished) if finished else "length",
            prompt_tokens=self.prompt_tokens if self.takes == 1 else 0,
            completion_tokens=available - start,
            token_ids=tuple(self.ids[start:available]),
            token_offsets=tuple(o - start_text for o in self.offsets[start:available]),
            token_logprobs=tuple(self.logprobs[start:available]),
        )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`abort` was called: it delivers nothing more."""
        return self._closing

    def abort(self) -> None:
        """Close the connection without waiting (from code that cannot await)."""
        if not self._task.done():
            self._closing = True
            self._task.cancel()

    async def close(self) -> int:
        """Close the connection (vLLM aborts the request) and return the tokens received and
        never taken: what the program generated past the point it stopped at."""
        if not self._task.done():
            self._closing = True
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.pending

    def _text_at(self, index: int) -> int:
        if index < len(self.offsets):
            return self.offsets[index]
        return len(self.text)

    async def _admitted(self) -> _Received:
        try:
            return await admitted(self.max_tokens, self._read())
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self._arrived.set()

    async def _read(self) -> _Received:
        import httpx

        api_base = self.endpoint.api_base
        client = shared_client()
        request = client.build_request(
            "POST", f"{api_base}/completions", content=encode_json(self._body),
            headers=self._headers,
            timeout=httpx.Timeout(self.endpoint.timeout_s))
        try:
            response = await client.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise _status_error(response.status_code, response.text, api_base)
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        self._receive(json.loads(line[6:]))
                if self.finish_reason is None:
                    raise EndpointUnreachable(f"{api_base} ended the stream before its end",
                                              api_base=api_base)
            finally:
                await response.aclose()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._closing or task is None:
                raise
            task.uncancel()  # closed on purpose: end normally with what was received
        except httpx.TransportError as exc:
            raise EndpointUnreachable(f"cannot reach {api_base} (stream): "
                                      f"{exc or type(exc).__name__}", api_base=api_base) from exc
        except ValueError as exc:
            raise ServerRefused(f"{api_base} streamed a malformed event: {exc}",
                                api_base=api_base) from exc
        return _Received(StreamUsage(len(self.ids) - self.carried))

    def _receive(self, event: dict[str, Any]) -> None:
        if "error" in event:
            raise ServerBusy(f"{self.endpoint.api_base} failed mid-stream: "
                             f"{body_message(event)}", api_base=self.endpoint.api_base)
        if event.get("usage"):
            self.server_usage = event["usage"]
        for choice in event.get("choices") or []:
            ids = [int(i) for i in choice.get("token_ids") or ()]
            text = str(choice.get("text") or "")
            logprobs = choice.get("logprobs") or {}
            offsets = logprobs.get("text_offset") or []
            first = len(self.text) - (int(offsets[0]) if offsets else 0)
            if len(offsets) == len(ids):  # the server's own offsets, from this stream's start
                self.offsets.extend(first + int(o) for o in offsets)
            else:  # no per-token offsets: the piece's tokens all start where it starts
                self.offsets.extend(len(self.text) for _ in ids)
            self.logprobs.extend(float(p) for p in logprobs.get("token_logprobs") or ()
                                 if p is not None)
            self.ids.extend(ids)
            self.text += text
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        self._arrived.set()


def _status_error(status: int, text: str, api_base: str) -> EndpointError:
    try:
        message = body_message(json.loads(text)) or text[:300]
    except ValueError:
        message = text[:300]
    if status == 429 or status >= 500:
        return ServerBusy(f"{api_base} failed ({status}): {message}", api_base=api_base,
                          status_code=status)
    return ServerRefused(f"{api_base} refused the request: {message}", api_base=api_base,
                         status_code=status)


_LIVE: dict[str, LiveStream] = {}


async def live_stream(key: str, endpoint: Endpoint, prompt_ids: Sequence[int],
                      generated: Sequence[int], *, max_tokens: int, temperature: float,
                      top_p: float, seed: int | None) -> tuple[LiveStream, int]:
    """The program's live stream positioned at ``len(generated)``, opened (continuing
    ``prompt_ids + generated``) if there is none, and the tokens of a replaced stream the
    state does not hold (received past the state's position): discarded, to be counted."""
    stream = _LIVE.get(key)
    dropped = 0
    if stream is not None and (stream.position != len(generated) or stream.error is not None
                               or stream.closed or stream.loop is not asyncio.get_running_loop()):
        dropped = await close_stream(key, position=len(generated))
        stream = None
    if stream is None:
        stream = _LIVE[key] = LiveStream(
            endpoint, [*prompt_ids, *generated], len(generated), max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, seed=seed)
    return stream, dropped


async def resubmit(key: str, endpoint: Endpoint, prompt_ids: Sequence[int],
                   generated: Sequence[int], *, max_tokens: int, temperature: float,
                   top_p: float, seed: int | None) -> LiveStream:
    """Close the program's live stream (positioned at ``len(generated)``) and submit it
    again, so the request-tagging hook tags it anew (vLLM's priority is read at submission):
    the new request continues ``prompt_ids + generated +`` the tokens the old one had run
    ahead, which it keeps, so nothing is discarded and nothing decoded twice."""
    old = _LIVE.pop(key)
    await old.close()
    stream = _LIVE[key] = LiveStream(
        endpoint, [*prompt_ids, *generated], len(generated), max_tokens=max_tokens,
        temperature=temperature, top_p=top_p, seed=seed, carry=old)
    return stream


async def close_stream(key: str, *, position: int | None = None) -> int:
    """Close the program's live stream, if any, and return its tokens the program will not
    use: those received past ``position`` (default: past what it took)."""
    stream = _LIVE.pop(key, None)
    if stream is None:
        return 0
    if stream.loop is not asyncio.get_running_loop():  # its loop is gone or elsewhere
        if not stream.loop.is_closed():
            stream.loop.call_soon_threadsafe(stream._task.cancel)
        return stream.pending if position is None else _past(stream, position)
    await stream.close()
    return stream.pending if position is None else _past(stream, position)


def _past(stream: LiveStream, position: int) -> int:
    """The stream's received tokens past the program's ``position``."""
    return len(stream.ids) - max(0, min(len(stream.ids), position - stream.base))


def forget(key: str) -> None:
    """Drop a finished stream from the registry (nothing left to read or discard)."""
    stream = _LIVE.get(key)
    if stream is not None and stream.ended and stream.pending == 0:
        del _LIVE[key]


def stream_key(state: Mapping[str, Any]) -> str:
    """The key of a chain's live stream: the program's ``session_id``, plus the path's id
    in a multi-path program (each path streams on its own)."""
    key = str(state.get("session_id") or "")
    path = state.get("id")
    return key if path is None else f"{key}/{path}"


async def discard_stream(state: Mapping[str, Any], usage: Usage) -> Usage:
    """Close the chain's live stream (it stopped) and count what it received past the
    state's tokens as ``discarded_tokens``; ``usage`` itself if it had none."""
    dropped = await close_stream(stream_key(state), position=generated_count(state))
    if not dropped:
        return usage
    return Usage(**{**usage, "discarded_tokens": usage.get("discarded_tokens", 0) + dropped})


async def take_chunk(key: str, endpoint: Endpoint, prompt_ids: Sequence[int],
                     generated: Sequence[int], *, n: int, max_tokens: int, temperature: float,
                     top_p: float, seed: int | None,
                     resubmit_every: int | None) -> tuple[Completion, int]:
    """A chain's next ``n`` tokens from its live stream, opened (or re-opened token-exactly
    from ``generated``: after a resume, a retry, or every ``resubmit_every`` takes) as one
    request of ``max_tokens``; and the tokens a replaced stream had received past
    ``generated`` (discarded, for the caller's usage). Each piece is also written to
    LangGraph's custom stream as a ``{"event": "token"}``."""
    stream, dropped = await live_stream(key, endpoint, prompt_ids, generated,
                                        max_tokens=max_tokens, temperature=temperature,
                                        top_p=top_p, seed=seed)
    if (resubmit_every is not None and stream.takes >= resubmit_every and not stream.ended
            and len(stream.ids) < stream.carried + stream.max_tokens):
        # re-submitted while it still has tokens to make: tagged anew by the policy's hook
        stream = await resubmit(key, endpoint, prompt_ids, generated, max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, seed=seed)
    writer = get_stream_writer()
    chunk = await stream.take(n, lambda text, tokens: writer(
        {"event": "token", "text": text, "tokens": tokens}))
    forget(key)  # a stream that ended and was read to its end leaves the registry
    return chunk, dropped
