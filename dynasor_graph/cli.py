"""The ``dynasor-graph`` command: ``solve`` a question, or ``serve-local`` the embedded vLLM.

Without an endpoint (no ``--api-base`` and no ``DYNASOR_API_BASE``) ``solve`` uses the embedded
default: SmolLM2-135M-Instruct on a local CPU vLLM, reused if one already answers on the
default port, else started for the run and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, cast

from pydantic import ValidationError

from ._config import EFFORT_PRESETS, CoTConfig, Endpoint
from ._default import LOCAL_PORT, default_endpoint
from ._errors import DynasorError
from ._state import CoTOutput
from .cot import create_dynasor_cot


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynasor-graph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    solve = commands.add_parser("solve", help="answer one question with Dynasor-CoT")
    solve.add_argument("question")
    solve.add_argument("--model", help="served model name or LiteLLM string ($DYNASOR_MODEL)")
    solve.add_argument("--api-base", help="server URL ending in /v1 ($DYNASOR_API_BASE)")
    solve.add_argument("--api-key", help="API key ($DYNASOR_API_KEY)")
    solve.add_argument("--effort", choices=sorted(EFFORT_PRESETS), default="mid",
                       help="preset (threshold, chunk size); default mid = (3, 64)")
    solve.add_argument("--threshold", type=int, help="agreeing probes needed to exit")
    solve.add_argument("--chunk-size", type=int, help="tokens reasoned between probes")
    solve.add_argument("--max-tokens", type=int, help="reasoning token budget (default 2048)")
    solve.add_argument("--temperature", type=float, help="reasoning temperature (default 0.6)")
    solve.add_argument("--seed", type=int, help="sampling seed sent to the server")
    solve.add_argument("--timeout", type=float, help="per-request timeout in seconds")
    solve.add_argument("--json", action="store_true", help="print one JSON object")

    serve = commands.add_parser("serve-local", help="run the embedded vLLM (SmolLM2, CPU)")
    serve.add_argument("--port", type=int, default=LOCAL_PORT)
    return parser


def _config(args: argparse.Namespace) -> CoTConfig:
    return CoTConfig.from_effort(
        args.effort,
        certainty_threshold=args.threshold,
        chunk_size=args.chunk_size,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )


def _as_json(result: CoTOutput) -> dict[str, Any]:
    return {
        "answer": result.get("answer", ""),
        "certaindex": result.get("certaindex", 0.0),
        "decision": result.get("decision"),
        "stop_reason": result.get("stop_reason"),
        "probes": [{"tokens": p["tokens"], "answer": p["answer"], "confident": p["confident"]}
                   for p in result.get("probes", [])],
        "usage": result.get("usage"),
        "response": result.get("response", ""),
    }


async def _solve(args: argparse.Namespace, endpoint: Endpoint, config: CoTConfig) -> CoTOutput:
    graph = create_dynasor_cot(endpoint, config)
    result: dict[str, Any] = {}
    async for mode, chunk in graph.astream({"question": args.question},
                                           stream_mode=["custom", "values"]):
        chunk = cast(dict[str, Any], chunk)
        if mode == "values":
            result = chunk
        elif not args.json and chunk.get("event") == "probe":
            mark = "confident" if chunk["confident"] else "hesitant "
            print(f"probe @ {chunk['tokens']:>5} tokens  {mark}  answer={chunk['answer']!r:<16}"
                  f" certaindex={chunk['certaindex']:.2f} → {chunk['decision']}", flush=True)
    return cast(CoTOutput, result)


def _print_result(result: CoTOutput) -> None:
    usage = result["usage"]
    print(f"\nanswer: {result['answer']!r}   stop: {result['stop_reason']}   "
          f"certaindex: {result['certaindex']:.2f}")
    print(f"tokens: reasoning {usage['reasoning_tokens']} "
          f"(prompt {usage['reasoning_prompt_tokens']}), "
          f"probes {usage['probe_completion_tokens']} (prompt {usage['probe_prompt_tokens']})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynasor-graph`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve-local":
            from ._local import serve_forever

            serve_forever(args.port)
            return 0
        config = _config(args)
        if not args.question.strip():
            raise ValueError("question must not be empty")
        with default_endpoint(args.model, args.api_base, args.api_key,
                              timeout_s=args.timeout) as endpoint:
            result = asyncio.run(_solve(args, endpoint, config))
        if args.json:
            print(json.dumps(_as_json(result), ensure_ascii=False))
        else:
            _print_result(result)
        return 0
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or exc.title
        print(f"dynasor-graph: invalid {field}: {error['msg']}", file=sys.stderr)
    except (DynasorError, ValueError) as exc:
        print(f"dynasor-graph: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("dynasor-graph: interrupted", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
