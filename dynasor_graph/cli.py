"""The ``dynasor-graph`` command: ``solve`` a question, or ``serve-local`` the embedded vLLM;
evaluate with ``record`` (probe traces), ``replay`` (stopping rules on traces) and ``bench``;
``calibrate`` certifies a stopping rule on traces, which ``solve`` and ``bench`` then run.

Without an endpoint (no ``--api-base`` and no ``DYNASOR_API_BASE``) ``solve``, ``record`` and
``bench`` use the embedded default: SmolLM2-135M-Instruct on a local CPU vLLM, reused if one
already answers on the default port, else started for the run and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from ._algorithms import create_graph
from ._cli_parser import build_parser
from ._endpoint import Endpoint
from ._errors import DynasorError
from .cot import CoTConfig
from .eval._datasets import Problem
from .eval._report import ResultRow
from .local._default import LOCAL_PORT, default_endpoint
from .mcts import MCTSConfig
from .rebase import RebaseConfig
from .rewards import ClassifierReward, JudgeReward, RewardModel
from .sc import SCConfig


def _endpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`Endpoint` fields the model flags set (validated by ``Endpoint``)."""
    kwargs = None
    if args.chat_template_kwargs is not None:
        try:
            kwargs = json.loads(args.chat_template_kwargs)
        except ValueError as exc:
            raise ValueError(f"--chat-template-kwargs is not JSON: {exc}") from None
        if not isinstance(kwargs, dict):
            raise ValueError("--chat-template-kwargs must be a JSON object")
    return {"chat_template_kwargs": kwargs, "continuation": args.continuation,
            "think_markers": tuple(args.think_markers) if args.think_markers else None,
            "thinking": None if args.thinking is None else args.thinking == "on"}


def _config(args: argparse.Namespace) -> BaseModel:
    """The algorithm's config from the flags; flags it does not use are an error."""
    if args.calibrated is not None:
        given = [flag for flag, value in (("--effort", args.effort), ("--threshold",
                 args.threshold), ("--chunk-size", args.chunk_size), ("--max-tokens",
                 args.max_tokens), ("--temperature", args.temperature)) if value is not None]
        if args.algorithm != "cot" or given:
            raise ValueError("--calibrated runs the certified CoT rule as recorded: not with "
                             + (", ".join(given) if given else f"--algorithm {args.algorithm}"))
        return CoTConfig.from_calibration(args.calibrated, seed=args.seed)
    cot = CoTConfig.from_effort(
        args.effort or "mid",
        certainty_threshold=args.threshold,
        chunk_size=args.chunk_size,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    shape = {"width": args.width, "max_width": args.max_width, "token_budget": args.budget}
    shape = {k: v for k, v in shape.items() if v is not None}
    if args.algorithm in ("cot", "sc") and (args.reward_api_base or args.reward_model):
        raise ValueError("--reward-api-base and --reward-model apply to mcts and rebase")
    if bool(args.reward_api_base) != bool(args.reward_model):
        raise ValueError("--reward-api-base and --reward-model go together")
    if args.algorithm == "cot":
        if shape:
            raise ValueError("--width, --max-width and --token-budget apply to sc, mcts and rebase")
        return cot
    if args.algorithm not in ("cot", "sc") and (args.threshold or args.max_tokens):
        raise ValueError("--threshold and --max-tokens apply to cot and sc paths; "
                         "trees take --token-budget")
    if args.algorithm == "sc":
        return SCConfig.model_validate({"path": cot, **shape})
    tree = {"chunk_size": args.chunk_size, "temperature": args.temperature, "seed": args.seed}
    tree.update(shape)
    config_class = MCTSConfig if args.algorithm == "mcts" else RebaseConfig
    return config_class.model_validate({k: v for k, v in tree.items() if v is not None})


def _reward(args: argparse.Namespace, endpoint: Endpoint) -> RewardModel | None:
    """The tree searches' reward model (flags checked by :func:`_config`)."""
    if args.algorithm in ("cot", "sc"):
        return None
    if not args.reward_api_base:
        return JudgeReward(endpoint)
    # The reward server is reached with the same key as the model server (--api-key).
    return ClassifierReward(Endpoint(model=args.reward_model, api_base=args.reward_api_base,
                                     api_key=endpoint.api_key, timeout_s=endpoint.timeout_s,
                                     max_retries=endpoint.max_retries))


def _as_json(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "answer": result.get("answer", ""),
        "certaindex": result.get("certaindex", 0.0),
        "decision": result.get("decision"),
        "stop_reason": result.get("stop_reason"),
        "usage": result.get("usage"),
        "thinking_format": result.get("thinking_format", ""),
    }
    usage = result.get("usage")
    if usage:  # what the model spent thinking and, after it closed its thinking, answering
        out["thinking_tokens"] = usage["reasoning_tokens"] - usage.get("answer_tokens", 0)
        out["answer_tokens"] = usage.get("answer_tokens", 0)
    if "probes" in result:
        out["probes"] = [{"tokens": p["tokens"], "answer": p["answer"],
                          "confident": p["confident"], "confidence": p.get("confidence")}
                         for p in result["probes"]]
        out["response"] = result.get("response", "")
    if "paths" in result:
        out["paths"] = [{"answer": p.get("answer", ""), "stop_reason": p.get("stop_reason"),
                         "reasoning_tokens": p["usage"]["reasoning_tokens"]}
                        for p in result["paths"]]
    if "nodes" in result:
        out["nodes"] = len(result["nodes"]) - 1
        out["finished_paths"] = sum(1 for n in result["nodes"] if n["terminal"])
    if "budget_left" in result:
        out["budget_left"] = result["budget_left"]
    return out


async def _solve(args: argparse.Namespace, endpoint: Endpoint, config: BaseModel
                 ) -> dict[str, Any]:
    graph = create_graph(args.algorithm, endpoint, config, reward=_reward(args, endpoint))
    result: dict[str, Any] = {}
    async for mode, chunk in graph.astream({"question": args.question}, subgraphs=False,
                                           stream_mode=["custom", "updates", "values"]):
        chunk = cast(dict[str, Any], chunk)
        if mode == "values":
            result = chunk
        elif args.json:
            continue
        elif mode == "custom" and chunk.get("event") == "probe" and args.algorithm == "cot":
            mark = "confident" if chunk["confident"] else "hesitant "
            print(f"probe @ {chunk['tokens']:>5} tokens  {mark}  answer={chunk['answer']!r:<16}"
                  f" certaindex={chunk['certaindex']:.2f} → {chunk['decision']}", flush=True)
        elif mode == "updates":
            for node, update in chunk.items():
                if node in ("score", "backpropagate", "rescore") and update:
                    print(f"{node}: certaindex={update['certaindex']:.2f} "
                          f"→ {update['decision']}{_progress(update)}", flush=True)
    return result


def _progress(update: dict[str, Any]) -> str:
    """How far a multi-path program is: finished paths (SC) or finished tree paths."""
    if "paths" in update:
        done = sum(1 for p in update["paths"] if p.get("decision") == "exit")
        return f"   ({done}/{len(update['paths'])} paths finished)"
    if "nodes" in update:
        done = sum(1 for n in update["nodes"] if n["terminal"])
        return f"   ({len(update['nodes']) - 1} steps, {done} finished paths)"
    return ""


def _print_result(result: dict[str, Any]) -> None:
    usage = result["usage"]
    print(f"\nanswer: {result['answer']!r}   stop: {result['stop_reason']}   "
          f"certaindex: {result['certaindex']:.2f}")
    if "paths" in result:
        print(f"paths: {len(result['paths'])}  answers: "
              f"{[p.get('answer', '') for p in result['paths']]}")
    if "nodes" in result:
        print(f"tree: {len(result['nodes']) - 1} steps, "
              f"{sum(1 for n in result['nodes'] if n['terminal'])} finished paths")
    print(f"tokens: reasoning {usage['reasoning_tokens']} "
          f"(prompt {usage['reasoning_prompt_tokens']}), "
          f"probes {usage['probe_completion_tokens']} (prompt {usage['probe_prompt_tokens']})"
          + (f", of the reasoning: thinking "
             f"{usage['reasoning_tokens'] - usage['answer_tokens']}, answer "
             f"{usage['answer_tokens']}" if usage.get("answer_tokens") else "")
          + (f", reward model prompt {usage['reward_prompt_tokens']}"
             if usage["reward_prompt_tokens"] else ""))


EVAL_MODULES = ("tqdm", "matplotlib", "scipy", "mapie")
"""What ``record``, ``replay`` and ``bench`` need beyond the core: the ``eval`` extra."""


def _require_eval(command: str) -> None:
    missing = [m for m in EVAL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{command} needs the eval extra ({', '.join(missing)} not installed): "
                         "pip install 'dynasor-graph[eval]'")


def _evaluate(args: argparse.Namespace) -> None:
    """Run ``record``, ``replay`` or ``bench``; print the summary and where the files went."""
    _require_eval(args.command)
    from .eval._datasets import load_dataset
    from .eval._methods import parse_methods
    from .eval._report import table, write_report

    if args.command == "replay":
        from .eval._replay import replay_traces
        from .eval._traces import load_traces

        traces = load_traces(args.traces)
        rows, summary = replay_traces(traces, args.methods)
        title = f"replay of {len(traces)} traces ({traces[0].settings.model})"
    else:
        # Everything that can be wrong with the arguments fails before a server is started.
        if (args.limit is not None and args.limit < 1) or args.offset < 0:
            raise ValueError("--limit must be at least 1 and --offset at least 0")
        end = None if args.limit is None else args.offset + args.limit
        problems = load_dataset(args.dataset, end)[args.offset:]
        if not problems:
            raise ValueError(f"{args.dataset}: no problems after --offset {args.offset}")
        if args.command == "record":
            config = CoTConfig(chunk_size=args.chunk_size, max_tokens=args.max_tokens,
                               seed=args.seed)
            _record(args, problems, config)
            return
        calibrated = args.calibrated_config = (
            CoTConfig.from_calibration(args.calibrated) if args.calibrated else None)
        if args.max_tokens is None:
            args.max_tokens = calibrated.max_tokens if calibrated else 1024
        for method in parse_methods(args.methods):
            method.config(args.max_tokens, args.seed)
        if any(v is not None and v <= 0 for v in (args.arrival_rate, args.deadline_s)):
            raise ValueError("--arrival-rate and --deadline-s must be positive")
        rows, summary, served = _bench(args, problems)
        title = f"bench: {len(problems)} problems of {args.dataset} ({served})"
    paths = write_report(args.out, rows, summary, title)
    print(table(summary))
    print("wrote " + ", ".join(str(p) for p in paths))


def _calibrate(args: argparse.Namespace) -> None:
    _require_eval("calibrate")
    from .eval._calibrate_report import run

    run(args)


def _record(args: argparse.Namespace, problems: list[Problem], config: CoTConfig) -> None:
    from .eval._traces import record_traces

    with default_endpoint(args.model, args.api_base, args.api_key, timeout_s=args.timeout,
                          **_endpoint_options(args)) as endpoint:
        new = asyncio.run(record_traces(endpoint, problems, config, args.out,
                                        samples=args.samples, concurrency=args.concurrency,
                                        progress=True))
    correct = sum(t.correct for t in new)
    print(f"recorded {len(new)} traces ({correct} correct) into {args.out}; "
          f"{len(problems) * args.samples - len(new)} were already there")


def _bench(args: argparse.Namespace, problems: list[Problem],
           ) -> tuple[list[ResultRow], dict[str, dict[str, Any]], str]:
    from .eval._bench import run_bench
    from .scheduler import SchedulerConfig

    scheduler = None
    if args.soft_deadline and args.deadline_s is None:
        raise ValueError("--soft-deadline needs --deadline-s")
    if args.scheduler or args.arrival_rate:
        scheduler = SchedulerConfig(policy=args.scheduler or "fifo", mode=args.scheduler_mode,
                                    max_in_flight=args.concurrency, gang=args.gang,
                                    deadline_s=args.deadline_s if args.soft_deadline else None)
    elif args.scheduler_mode != "queue" or args.gang or args.soft_deadline:
        raise ValueError("--scheduler-mode, --gang and --soft-deadline need --scheduler")
    with default_endpoint(args.model, args.api_base, args.api_key, timeout_s=args.timeout,
                          **_endpoint_options(args)) as endpoint:
        rows, summary = asyncio.run(run_bench(
            endpoint, problems, args.methods, max_tokens=args.max_tokens, seed=args.seed,
            concurrency=args.concurrency, progress=True, scheduler=scheduler,
            arrival_rate=args.arrival_rate, deadline_s=args.deadline_s,
            calibrated=args.calibrated_config))
    return rows, summary, endpoint.model.split("/", 1)[-1]


def _vllm_args(args: argparse.Namespace) -> list[str]:
    """The vLLM flags ``serve-local`` passes on (none by default)."""
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        raise ValueError("--max-num-seqs must be at least 1")
    flags = ["--scheduling-policy", "priority"] if args.scheduling_policy == "priority" else []
    if args.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynasor-graph`` console script."""
    args = build_parser().parse_args(argv)
    # Equivalence disables math-verify's SIGALRM timeouts on purpose (see _answers); its
    # one-time warning about that would only clutter the output and the progress bars.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        if args.command == "serve-local":
            from .local._server import serve_forever

            default_port = LOCAL_PORT + 1 if args.classifier else LOCAL_PORT
            vllm_args = _vllm_args(args)
            if args.replicas > 1:
                from .local._fleet import serve_fleet_forever

                serve_fleet_forever(args.replicas, args.port or default_port,
                                    policy=args.router_policy, classifier=args.classifier,
                                    extra_args=vllm_args)
                return 0
            serve_forever(args.port or default_port, classifier=args.classifier,
                          extra_args=vllm_args)
            return 0
        if args.command in ("record", "replay", "bench"):
            _evaluate(args)
            return 0
        if args.command == "calibrate":
            _calibrate(args)
            return 0
        config = _config(args)
        if not args.question.strip():
            raise ValueError("question must not be empty")
        with default_endpoint(args.model, args.api_base, args.api_key, timeout_s=args.timeout,
                              **_endpoint_options(args)) as endpoint:
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
