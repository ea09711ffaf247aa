"""The ``dynasor-graph`` command line: every subcommand and flag (what ``--help`` shows).

:mod:`dynasor_graph.cli` runs the parsed command; this module only declares it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._algorithms import ALGORITHMS
from .cot import EFFORT_PRESETS
from .eval._bench import DEFAULT_METHODS as BENCH_METHODS
from .eval._calibrate_report import add_parser as add_calibrate_parser
from .local._default import LOCAL_PORT
from .local._server import CLASSIFIER_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynasor-graph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    solve = commands.add_parser(
        "solve", help="answer one question with Dynasor-CoT, SC, MCTS or Rebase")
    solve.add_argument("question")
    solve.add_argument("--algorithm", choices=ALGORITHMS, default="cot",
                       help="cot (default), sc (self-consistency), mcts or rebase")
    solve.add_argument("--model", help="served model name or LiteLLM string ($DYNASOR_MODEL)")
    solve.add_argument("--api-base", help="server URL ending in /v1 ($DYNASOR_API_BASE)")
    solve.add_argument("--api-key", help="API key ($DYNASOR_API_KEY)")
    solve.add_argument("--effort", choices=sorted(EFFORT_PRESETS),
                       help="preset (threshold, chunk size); default mid = (3, 64)")
    solve.add_argument("--threshold", type=int, help="agreeing probes needed to exit")
    solve.add_argument("--chunk-size", type=int, help="tokens reasoned between probes")
    solve.add_argument("--max-tokens", type=int, help="reasoning token budget (default 2048)")
    solve.add_argument("--temperature", type=float, help="reasoning temperature (default 0.6)")
    solve.add_argument("--seed", type=int, help="sampling seed sent to the server")
    solve.add_argument("--calibrated", type=Path, metavar="PATH",
                       help="cot: run the rule `calibrate` certified in PATH (instead of "
                       "--effort, --threshold, --chunk-size, --max-tokens, --temperature)")
    solve.add_argument("--timeout", type=float, help="per-request timeout in seconds")
    _model_arguments(solve)
    solve.add_argument("--width", type=int, help="sc: first paths; mcts: children per "
                       "expansion; rebase: first beam width")
    solve.add_argument("--max-width", type=int, help="most paths / children / beam width")
    solve.add_argument("--token-budget", "--budget", dest="budget", type=int,
                       help="sc, mcts, rebase: total generated tokens, never exceeded")
    solve.add_argument("--reward-api-base", help="mcts, rebase: a vLLM classifier reward "
                       "model at this URL (default: an LLM judge on the same endpoint)")
    solve.add_argument("--reward-model", help="served name of that reward model")
    solve.add_argument("--json", action="store_true", help="print one JSON object")

    serve = commands.add_parser("serve-local", help="run the embedded vLLM (SmolLM2, CPU)")
    serve.add_argument("--port", type=int,
                       help=f"default {LOCAL_PORT}; {LOCAL_PORT + 1} with --classifier")
    serve.add_argument("--classifier", action="store_true",
                       help="serve SmolLM2 as a yes/no classifier on /classify (a reward model "
                       f"for --reward-api-base, served name {CLASSIFIER_MODEL_NAME})")
    serve.add_argument("--replicas", type=int, default=1,
                       help="N > 1: N replicas on free ports behind vllm-router on --port")
    serve.add_argument("--router-policy", default="consistent_hash",
                       choices=["consistent_hash", "round_robin", "cache_aware", "power_of_two",
                                "random"],
                       help="with --replicas: consistent_hash keys on X-Session-ID (the program's)")
    serve.add_argument("--scheduling-policy", choices=["fcfs", "priority"], default="fcfs",
                       help="vLLM's waiting queue: fcfs (default) or priority, which orders it "
                       "by each request's priority (lower first): what SchedulerConfig("
                       "mode='vllm_priority') sends")
    serve.add_argument("--max-num-seqs", type=int,
                       help="requests vLLM runs at once (its default otherwise); the rest wait "
                       "in its queue, where --scheduling-policy orders them")

    record = commands.add_parser(
        "record", help="reason to the budget probing after every chunk; write probe traces")
    _dataset_arguments(record)
    record.add_argument("--chunk-size", type=int, default=32, help="tokens between probes")
    record.add_argument("--max-tokens", type=int, default=1024, help="reasoning token budget")
    record.add_argument("--samples", type=int, default=1, help="traces per problem (k)")
    record.add_argument("--out", type=Path, required=True, help="traces jsonl (resumable)")

    replay = commands.add_parser(
        "replay", help="evaluate stopping rules on recorded traces, offline")
    replay.add_argument("--traces", type=Path, required=True)
    replay.add_argument("--out", type=Path, required=True, help="output directory")
    replay.add_argument("--methods", nargs="+", help="full, oracle, truncate:N, mild..crazy, "
                        "cot:T@C, entropy:X@W, sc, sc:X@D (default: those that fit)")

    add_calibrate_parser(commands)

    bench = commands.add_parser(
        "bench", help="live runs of full reasoning, truncation and Dynasor-CoT presets")
    _dataset_arguments(bench)
    bench.add_argument("--max-tokens", type=int,
                       help="reasoning token budget (default 1024; the calibrated one with "
                       "--calibrated)")
    bench.add_argument("--out", type=Path, required=True, help="output directory")
    bench.add_argument("--calibrated", type=Path, metavar="PATH",
                       help="also run the rule `calibrate` certified in PATH, as `calibrated`")
    bench.add_argument("--methods", nargs="+", default=list(BENCH_METHODS),
                       help="full, truncate:N, mild..crazy, cot:T@C (default: full low mid high)")
    bench.add_argument("--scheduler", choices=["fifo", "certaindex"],
                       help="run every program through one scheduler: request-level fifo or "
                       "Certaindex program priority; --concurrency then caps the requests")
    bench.add_argument("--scheduler-mode", choices=["queue", "vllm_priority", "both"],
                       default="queue",
                       help="queue (default): the in-process admission queue; vllm_priority: "
                       "every request carries the policy's priority to a server started with "
                       "--scheduling-policy priority, no in-process queue; both")
    bench.add_argument("--gang", action="store_true",
                       help="with --scheduler: order by each program's start, not each "
                       "request's send time (programs finish one after another)")
    bench.add_argument("--soft-deadline", action="store_true",
                       help="with --scheduler: --deadline-s is also the scheduler's soft "
                       "deadline (a program past it goes behind every program within it)")
    bench.add_argument("--arrival-rate", type=float,
                       help="programs arriving per second (default: all at once; implies fifo)")
    bench.add_argument("--deadline-s", type=float,
                       help="report the share of programs answered within this many seconds")
    return parser


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="jsonl file, or generated:arithmetic?n=50&seed=0&level=mixed")
    parser.add_argument("--limit", type=int, help="only the first N problems (after --offset)")
    parser.add_argument("--offset", type=int, default=0, help="skip the first N problems")
    parser.add_argument("--model", help="served model name or LiteLLM string ($DYNASOR_MODEL)")
    parser.add_argument("--api-base", help="server URL ending in /v1 ($DYNASOR_API_BASE)")
    parser.add_argument("--api-key", help="API key ($DYNASOR_API_KEY)")
    parser.add_argument("--concurrency", type=int, default=1, help="runs in flight at once")
    parser.add_argument("--seed", type=int, help="sampling seed (sample k uses seed + k)")
    parser.add_argument("--timeout", type=float, default=600, help="per-request timeout (s)")
    _model_arguments(parser)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """How the served model renders and thinks: chat-template kwargs, thinking markers, and
    token-exact or text continuation."""
    parser.add_argument("--chat-template-kwargs", metavar="JSON",
                        help='passed to the chat template, e.g. \'{"enable_thinking": true}\'')
    parser.add_argument("--think-markers", nargs=2, metavar=("OPEN", "CLOSE"),
                        help="how the model opens and closes its thinking "
                        "(default: detected from the server's chat template and tokenizer)")
    parser.add_argument("--thinking", choices=["on", "off"],
                        help="thinking on or off, mapped to the model family's own switch "
                        "(enable_thinking, thinking, reasoning_effort, /think); default: the "
                        "chat template's")
    parser.add_argument("--continuation", choices=["auto", "tokens", "text"],
                        help="tokens: token-exact via /tokenize and /v1/completions; text: chat "
                        "continuation; auto (default): tokens where the server has /tokenize")
