"""Probe traces: reason once to the budget, probing after every chunk, and keep everything.

This is the Dynasor authors' "token deprivation" run as a tool: one JSON line per (problem,
sample) with the token count, raw text, parsed answer and confidence of every probe, the final
answer and its grade, and the settings that produced it. Stopping rules are then evaluated
offline by :mod:`dynasor_graph._replay` in seconds. Recording runs the CoT graph itself (its
``reason`` and ``probe`` nodes, retries and the server's ``usage``) with early exit off::

    traces = await record_traces(endpoint, load_dataset("generated:arithmetic?n=20"),
                                 CoTConfig(chunk_size=32, max_tokens=256), Path("traces.jsonl"))

Rerunning with the same ``out`` skips the traces already written (resumable).

A trace ends one of three ways (``stop_reason``): the model finished by itself (``finished``:
its text's final answer, also after it closed its thinking and answered), ``max_tokens`` was
spent (``budget``), or no further chunk fit in the server's context window (``context``, token
mode; traces recorded before it existed say ``budget`` there). The last two end on the last
probe, which answers: replay treats them alike.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._answers import equivalent
from .._endpoint import Endpoint
from .._errors import DataFormatError
from .._thinking import known
from ..cot import CoTConfig, create_cot
from ._datasets import Problem
from ._report import progress_bar, run_workers, running_postfix

# Settings that change what a trace means; api_base and seed may differ between resumed runs.
_COMPARED_SETTINGS = ("model", "chunk_size", "max_tokens", "temperature", "top_p",
                      "probe_suffix", "probe_max_tokens", "probe_temperature", "probe_top_p",
                      "hesitation_words", "system_prompt", "chat_template_kwargs", "thinking")
# What a trace recorded before a setting existed: the setting's default.
_DEFAULTS: dict[str, Any] = {"chat_template_kwargs": {}, "thinking": None}


TraceStop = Literal["finished", "budget", "context"]
"""How a recorded run ended: the model finished by itself, the budget was spent, or the
server's context window was full; in the last two the last probe answers."""


class TraceProbe(BaseModel):
    """One probe of a trace: reasoning tokens so far, the raw reply, its answer and confidence."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(ge=0)
    text: str
    answer: str
    confident: bool
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    confidence: float | None = Field(
        default=None, ge=0, le=1, description="The answer tokens' geometric-mean probability "
        "(None: no log-probabilities, or traces recorded before it)")
    chars: int | None = Field(
        default=None, ge=0, description="Characters of reasoning before the probe: where "
        "transition-placed probing is replayed from (None in traces recorded before it)")


class TraceSettings(BaseModel):
    """The model, server and sampling settings a trace was recorded with."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str
    chunk_size: int = Field(ge=1)
    max_tokens: int = Field(ge=1)
    seed: int | None = None


class Trace(BaseModel):
    """One recorded reasoning run: probes after every chunk up to its natural end, its budget
    or the server's context window (``stop_reason``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    sample: int = Field(default=0, ge=0)
    gold: str
    answer: str
    correct: bool
    stop_reason: TraceStop
    reasoning_tokens: int = Field(ge=0)
    reasoning_prompt_tokens: int = Field(ge=0)
    probes: list[TraceProbe]
    settings: TraceSettings
    question: str
    reasoning: str = ""

    @property
    def probe_answered(self) -> bool:
        """The run did not finish by itself (``budget`` or ``context``): its last probe gives
        its answer, and is paid for."""
        return self.stop_reason != "finished"

    @model_validator(mode="after")
    def _probes_in_order(self) -> Trace:
        counts = [p.tokens for p in self.probes]
        if any(b <= a for a, b in itertools.pairwise(counts)):
            raise ValueError("probe token counts must increase")
        if counts and counts[-1] > self.reasoning_tokens:
            raise ValueError("a probe counts more tokens than the trace's reasoning_tokens")
        return self


def load_traces(path: Path) -> list[Trace]:
    """Read a traces file; a malformed or duplicate line raises :class:`DataFormatError`."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such traces file")
    traces: list[Trace] = []
    seen: dict[tuple[str, int], int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                trace = Trace.model_validate_json(line)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                detail = f"{where}: {error['msg']}" if where else error["msg"]
                raise DataFormatError(f"{path}:{number}: not a trace: {detail}") from None
            key = (trace.id, trace.sample)
            if key in seen:
                raise DataFormatError(f"{path}:{number}: duplicate trace {trace.id!r} sample "
                                      f"{trace.sample} (first on line {seen[key]})")
            seen[key] = number
            traces.append(trace)
    return traces


async def record_trace(endpoint: Endpoint, problem: Problem, config: CoTConfig,
                       sample: int = 0) -> Trace:
    """Reason about ``problem`` to the budget (or its natural end), probing after every chunk.

    This runs the Dynasor-CoT graph itself with ``early_exit=False``: the same nodes, requests
    and retries, only the Certaindex never ends the run. A run that ends by budget or at the
    server's context window (``context``) answers with its last probe, a finished one
    (``finished`` or ``answered``) with its text's final answer.
    """
    graph = create_cot(endpoint, config, early_exit=False)
    state: dict[str, Any] = {}
    probes: list[TraceProbe] = []
    async for mode, part in graph.astream({"question": problem.question},
                                          stream_mode=["custom", "updates"]):
        chunk = cast(dict[str, Any], part)
        if mode == "custom" and chunk.get("event") == "probe":
            probes.append(TraceProbe(
                tokens=chunk["tokens"], text=chunk["text"], answer=chunk["answer"],
                confident=chunk["confident"], prompt_tokens=chunk["prompt_tokens"],
                completion_tokens=chunk["completion_tokens"], chars=chunk.get("chars"),
                confidence=chunk.get("confidence")))
        elif mode == "updates":
            for update in chunk.values():
                state.update(update or {})
    usage = state["usage"]
    stop = _STOPS.get(str(state.get("stop_reason")), "budget")
    answer = str(state.get("answer", ""))
    return Trace(
        id=problem.id, sample=sample, gold=problem.gold, answer=answer,
        correct=equivalent(answer, problem.gold), stop_reason=stop,
        reasoning_tokens=usage["reasoning_tokens"],
        reasoning_prompt_tokens=usage["reasoning_prompt_tokens"], probes=probes,
        settings=TraceSettings.model_validate(_settings(endpoint, config)),
        question=problem.question, reasoning=str(state.get("reasoning", "")),
    )


_STOPS: dict[str, TraceStop] = {"finished": "finished", "answered": "finished",
                                 "context": "context"}
"""The graph's stop reasons as a trace's: the model's own end is ``finished`` (``answered``
too: it closed its thinking and answered), the window ``context``, the rest ``budget``."""


def _settings(endpoint: Endpoint, config: CoTConfig) -> dict[str, Any]:
    values = config.model_dump(exclude={"certainty_threshold"})
    values["hesitation_words"] = list(config.hesitation_words)
    fmt = known(endpoint)  # detected by the run (dynasor_graph._thinking)
    markers = [fmt.open, fmt.close] if fmt is not None and not fmt.plain else None
    return {"model": endpoint.model, "api_base": endpoint.api_base,
            "chat_template_kwargs": endpoint.chat_template_kwargs,
            "thinking": endpoint.thinking, "think_markers": markers,
            "thinking_format": fmt.describe() if fmt is not None else "", **values}


def sample_config(config: CoTConfig, sample: int) -> CoTConfig:
    """Sample ``k`` of a problem uses seed ``seed + k`` (no seed: the server's randomness)."""
    if config.seed is None:
        return config
    return CoTConfig.model_validate({**config.model_dump(), "seed": config.seed + sample})


def _resume(out: Path, endpoint: Endpoint, config: CoTConfig) -> set[tuple[str, int]]:
    """The (id, sample) pairs ``out`` already holds, after dropping a half-written last line."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):  # a run killed mid-write: drop the partial line
        keep = data.rfind(b"\n") + 1
        with out.open("r+b") as handle:
            handle.truncate(keep)
        print(f"{out}: dropped a half-written last line", file=sys.stderr)
    wanted = _settings(endpoint, config)
    done: set[tuple[str, int]] = set()
    for trace in load_traces(out):
        recorded = trace.settings.model_dump()
        for key in _COMPARED_SETTINGS:
            if recorded.get(key, _DEFAULTS.get(key)) != wanted[key]:
                raise DataFormatError(
                    f"{out}: trace {trace.id!r} was recorded with {key}={recorded.get(key)!r}, "
                    f"this run uses {wanted[key]!r}; write to another --out")
        done.add((trace.id, trace.sample))
    return done


async def record_traces(
    endpoint: Endpoint,
    problems: Sequence[Problem],
    config: CoTConfig,
    out: Path,
    *,
    samples: int = 1,
    concurrency: int = 1,
    progress: bool = False,
) -> list[Trace]:
    """Record ``samples`` traces per problem into ``out`` (jsonl), skipping those already there.

    Each trace is written as one line as soon as it is complete, so an interrupted run loses
    at most the traces in flight. Returns the traces recorded by this call.
    """
    if samples < 1 or concurrency < 1:
        raise ValueError("samples and concurrency must be at least 1")
    if config.probe_at != "chunks":
        raise ValueError("record probes after every chunk (probe_at='chunks'); replay "
                         "evaluates transition placement from those traces")
    done = _resume(out, endpoint, config)
    todo = [(p, k) for p in problems for k in range(samples) if (p.id, k) not in done]
    queue: asyncio.Queue[tuple[Problem, int]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    recorded: list[Trace] = []
    bar = progress_bar(len(todo), "record", progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink:

        async def worker() -> None:
            while not queue.empty():
                problem, sample = queue.get_nowait()
                trace = await record_trace(endpoint, problem, sample_config(config, sample),
                                           sample)
                sink.write(trace.model_dump_json() + "\n")  # one write: whole lines only
                sink.flush()
                recorded.append(trace)
                if bar is not None:
                    bar.update()
                    bar.set_postfix(running_postfix([(t.correct, t.reasoning_tokens)
                                                     for t in recorded]))

        await run_workers(worker, min(concurrency, max(len(todo), 1)), bar)
    return recorded
