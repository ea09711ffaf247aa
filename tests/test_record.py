"""``record`` against the scripted loopback server: the exact trace, resuming, settings checks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scripted_server import Script, ScriptedServer

from dynasor_graph import CoTConfig, Endpoint
from dynasor_graph.cli import main
from dynasor_graph.eval import Problem, record_traces

QUESTION = "What is 2 + 3?"  # 5 scripted tokens: every prompt starts with 5 + 4 = 9 tokens
SUFFIX_TOKENS = 15  # the probe suffix in scripted tokens


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        ) -> Callable[..., Ran]:
    """``dynasor-graph ARGS`` in this process (a subprocess per call costs seconds of imports);
    ``tests/test_cli.py`` covers the console entry point itself."""
    for name in [n for n in os.environ if n.startswith("DYNASOR_")]:
        monkeypatch.delenv(name)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def dataset(tmp_path: Path, ids: list[str], gold: str = "6") -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": QUESTION, "answer": gold}) + "\n"
                            for i in ids), encoding="utf-8")
    return path


@pytest.fixture
def record(cli: Callable[..., Ran], scripted: ScriptedServer) -> Callable[..., Ran]:
    """``dynasor-graph record`` on the scripted server with chunk 4 and budget 10."""

    def run(data: Path, out: Path, *extra: str) -> Ran:
        return cli("record", "--dataset", str(data), "--model", "scripted", "--api-base",
                   scripted.api_base, "--chunk-size", "4", "--max-tokens", "10", "--out",
                   str(out), *extra)

    return run


def test_record_writes_exactly_the_expected_trace(
    scripted: ScriptedServer, record: Callable[..., Ran], tmp_path: Path
) -> None:
    scripted.script.probes = ["5} \\]", "wait 5}", "6}"]
    out = tmp_path / "traces.jsonl"
    result = record(dataset(tmp_path, ["p1"]), out)
    assert result.returncode == 0, result.stderr
    assert "recorded 1 traces (1 correct)" in result.stdout
    # chunks of 4, 4 and 2 tokens (the budget is 10), a probe after each
    assert [(e["kind"], e["body"]["max_tokens"]) for e in scripted.script.log] == [
        ("reason", 4), ("probe", 20), ("reason", 4), ("probe", 20), ("reason", 2),
        ("probe", 20)]
    # prompts: 9 for the question, + 4 and the prefix's tokens for the assistant turn
    expected = {
        "id": "p1", "sample": 0, "gold": "6", "answer": "6", "correct": True,
        "stop_reason": "budget", "reasoning_tokens": 10,
        "reasoning_prompt_tokens": 9 + (9 + 4 + 4) + (9 + 4 + 8),
        "probes": [
            {"tokens": 4, "text": "5} \\]", "answer": "5", "confident": True,
             "prompt_tokens": 9 + 4 + 4 + SUFFIX_TOKENS, "completion_tokens": 2,
             "confidence": None, "chars": 12},  # "r0 " .. : 3 characters a token
            {"tokens": 8, "text": "wait 5}", "answer": "wait 5", "confident": False,
             "prompt_tokens": 9 + 4 + 8 + SUFFIX_TOKENS, "completion_tokens": 2,
             "confidence": None, "chars": 24},  # "r0 " .. : 3 characters a token
            {"tokens": 10, "text": "6}", "answer": "6", "confident": True,
             "prompt_tokens": 9 + 4 + 10 + SUFFIX_TOKENS, "completion_tokens": 1,
             "confidence": None, "chars": 30},  # "r0 " .. : 3 characters a token
        ],
        "settings": {
            "model": "hosted_vllm/scripted", "api_base": scripted.api_base,
            "chat_template_kwargs": {}, "thinking": None,
            "think_markers": ["<think>", "</think>"], "chunk_size": 4,
            "max_tokens": 10, "seed": None, "temperature": 0.6, "top_p": 0.95,
            "probe_suffix": scripted.script.probe_suffix, "probe_max_tokens": 20,
            "probe_temperature": 0.6, "probe_top_p": 0.95,
            "hesitation_words": ["wait", "hold", "but", "okay", "no", "hmm"],
            "system_prompt": None, "probe_at": "chunks", "min_probe_confidence": None,
            "transition_markers": ["Wait", "Alternatively", "\n\n"],
            "probing": "sequential", "resubmit_every": None,
        },
        "question": QUESTION,
        "reasoning": "".join(f"r{i} " for i in range(10)),
    }
    lines = out.read_text(encoding="utf-8").splitlines()
    traces = [json.loads(line) for line in lines]
    # the text-only scripted server has no /tokenize: the format is assumed, and said so
    note = traces[0]["settings"].pop("thinking_format")
    assert note.startswith("think: '<think>'…'</think>'") and "not detected" in note
    assert traces == [expected]
    # the counts are the server's usage, request by request
    log = scripted.script.log
    assert expected["reasoning_prompt_tokens"] == scripted.script.total("reason", "prompt_tokens")
    assert [p["prompt_tokens"] for p in expected["probes"]] == [  # type: ignore[index]
        e["usage"]["prompt_tokens"] for e in log if e["kind"] == "probe"]


async def test_a_run_that_finishes_by_itself_answers_from_its_text(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, tmp_path: Path
) -> None:
    scripted.script.reasoning = ["Two ", "plus ", "three ", "is ", "\\boxed{5}."]
    scripted.script.probes = ["9}"]
    out = tmp_path / "t.jsonl"
    [trace] = await record_traces(scripted_endpoint, [Problem("q", QUESTION, "5")],
                                  CoTConfig(chunk_size=3, max_tokens=100), out)
    assert (trace.stop_reason, trace.answer, trace.correct) == ("finished", "5", True)
    assert trace.reasoning_tokens == 5
    assert [(p.tokens, p.answer) for p in trace.probes] == [(3, "9")]  # none after the end
    assert [e["kind"] for e in scripted.script.log] == ["reason", "probe", "reason"]
    assert json.loads(out.read_text())["reasoning"] == "Two plus three is \\boxed{5}."


def test_samples_get_their_own_seed(
    scripted: ScriptedServer, record: Callable[..., Ran], tmp_path: Path
) -> None:
    scripted.script.probes = ["6}"]
    out = tmp_path / "t.jsonl"
    result = record(dataset(tmp_path, ["p1"]), out, "--samples", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr
    traces = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(t["id"], t["sample"], t["settings"]["seed"]) for t in traces] == [
        ("p1", 0, 7), ("p1", 1, 8)]
    assert [e["body"]["seed"] for e in scripted.script.log] == [7] * 6 + [8] * 6


def test_a_half_written_line_is_dropped_and_the_rest_is_not_redone(
    scripted: ScriptedServer, record: Callable[..., Ran], tmp_path: Path
) -> None:
    scripted.script.probes = ["6}"]
    data, out = dataset(tmp_path, ["p1", "p2", "p3"]), tmp_path / "t.jsonl"
    assert record(data, out).returncode == 0
    first, second, _ = out.read_text().splitlines(keepends=True)
    out.write_text(first + second[: len(second) // 2])  # killed while writing p2
    scripted.script.log.clear()
    result = record(data, out)
    assert result.returncode == 0, result.stderr
    assert "dropped a half-written last line" in result.stderr
    assert "recorded 2 traces" in result.stdout and "1 were already there" in result.stdout
    lines = out.read_text().splitlines(keepends=True)
    assert lines[0] == first
    assert [json.loads(line)["id"] for line in lines] == ["p1", "p2", "p3"]
    assert len([e for e in scripted.script.log if e["kind"] == "reason"]) == 2 * 3


class RefusingScript(Script):
    """Refuses every request from the ``after``-th on, as a server that went away would."""

    def __init__(self, after: int) -> None:
        super().__init__(probes=["6}"])
        self.after, self.calls = after, 0

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        if self.calls > self.after:
            return 400, {"object": "error", "message": "gone", "type": "BadRequestError",
                         "code": 400}
        return super().reply(body)


def test_an_interrupted_record_resumes_without_duplicates(
    scripted: ScriptedServer, record: Callable[..., Ran], tmp_path: Path
) -> None:
    data, out = dataset(tmp_path, ["p1", "p2", "p3"]), tmp_path / "t.jsonl"
    scripted.script = RefusingScript(after=6 + 3)  # p1 complete, p2 dies mid-way
    result = record(data, out)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("refused the request: gone")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["p1"]
    scripted.script = Script(probes=["6}"])
    result = record(data, out)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        "p1", "p2", "p3"]
    assert len(scripted.script.log) == 2 * 6  # only p2 and p3 were asked for
    result = record(data, out)  # a third run has nothing left to do
    assert "recorded 0 traces" in result.stdout and "3 were already there" in result.stdout
    assert len(out.read_text().splitlines()) == 3


def test_resuming_with_other_settings_is_refused(
    scripted: ScriptedServer, record: Callable[..., Ran], cli: Callable[..., Ran], tmp_path: Path
) -> None:
    scripted.script.probes = ["6}"]
    data, out = dataset(tmp_path, ["p1", "p2"]), tmp_path / "t.jsonl"
    assert record(data, out, "--limit", "1").returncode == 0
    result = cli("record", "--dataset", str(data), "--model", "scripted", "--api-base",
                 scripted.api_base, "--chunk-size", "5", "--max-tokens", "10", "--out", str(out))
    assert result.returncode == 1
    assert "was recorded with chunk_size=4, this run uses 5" in result.stderr
    assert len(out.read_text().splitlines()) == 1


def test_a_malformed_dataset_line_fails_before_any_request(
    scripted: ScriptedServer, record: Callable[..., Ran], tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "q", "answer": "1"}\n{"question": "q"}\n')
    result = record(data, tmp_path / "t.jsonl")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"dynasor-graph: {data}:2: needs an 'answer' "
                                     "(string or number)")
    assert scripted.script.log == []
    assert not (tmp_path / "t.jsonl").exists()


async def test_transient_failures_are_retried_like_the_graph_does(
    scripted: ScriptedServer, scripted_endpoint: Endpoint, tmp_path: Path
) -> None:
    scripted.script.probes = ["6}"]
    scripted.script.fail_next = [503, 500]  # the first chunk fails twice (max_retries=2)
    [trace] = await record_traces(scripted_endpoint, [Problem("q", QUESTION, "6")],
                                  CoTConfig(chunk_size=4, max_tokens=8), tmp_path / "t.jsonl")
    assert scripted.script.fail_next == []
    assert (trace.answer, trace.reasoning_tokens, len(trace.probes)) == ("6", 8, 2)
    assert trace.reasoning_prompt_tokens == scripted.script.total("reason", "prompt_tokens")
